"""Time one tunedml training epoch against a bare PyTorch loop doing the same work.

Both loops fine-tune a freshly loaded all-MiniLM-L6-v2 (the embedded ``minilm``) on the same SST-2
k-shot draw, with the same batch order and the same dynamically padded token batches, AdamW (the
same kernel: fused where the device has one) and cross-entropy on a linear head over mean-pooled
token vectors. tunedml adds what a real run needs (dropout on the pooled vector, a warm-up
schedule, gradient clipping, loss bookkeeping); the ratio shows what that costs. Epochs of the two
loops alternate so that machine load hits both alike; still, on a machine shared with other jobs,
epochs can vary threefold: time it on an idle one.

    python benchmarks/bench_train.py [--data-dir DIR] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from tunedml.config import build_config  # noqa: E402
from tunedml.model import resolve_model  # noqa: E402
from tunedml.train import Trainer, draw_for, prepare_tokens  # noqa: E402


class BareLoop:
    """The same forward and backward passes in plain PyTorch and transformers."""

    def __init__(self, model_name: str, num_classes: int, lr: float, weight_decay: float, seed: int):
        from transformers import AutoModel

        torch.manual_seed(seed)
        self.encoder = AutoModel.from_pretrained(resolve_model(model_name))
        self.head = nn.Linear(self.encoder.config.hidden_size, num_classes)
        params = list(self.encoder.parameters()) + list(self.head.parameters())
        from tunedml.train import adamw_impl

        # the same AdamW kernel as the Trainer (fused where the device has it): the loop is compared, not the kernel
        self.optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **adamw_impl(params))
        self.rng = np.random.default_rng(seed)

    def batches(
        self, input_ids: list[np.ndarray], labels: np.ndarray, indices: np.ndarray, batch_size: int, pad_id: int
    ):
        order = self.rng.permutation(indices)  # the same permutations as the Trainer's seeded generator
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            seqs = [torch.from_numpy(input_ids[i]) for i in chunk]
            ids = nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=pad_id)
            mask = nn.utils.rnn.pad_sequence([torch.ones_like(s) for s in seqs], batch_first=True)
            yield ids, mask, torch.from_numpy(labels[chunk])

    def epoch(self, batches) -> None:
        self.encoder.train()
        for ids, mask, labels in batches:
            hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
            m = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1)
            loss = F.cross_entropy(self.head(pooled), labels)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process): CPU time is the steadier one on a busy machine."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(trainer: Trainer, bare: BareLoop, repeats: int) -> dict[str, list[tuple[float, float]]]:
    """(wall, CPU) seconds of ``repeats`` epochs per loop, after one warm-up epoch each."""
    tokens, draw, batch_size = trainer.tokens, trainer.draw, trainer.cfg.train.batch_size

    def bare_epoch() -> None:
        bare.epoch(bare.batches(tokens.input_ids, tokens.corpus.labels, draw.train, batch_size, tokens.pad_token_id))

    loops = {"tunedml": trainer.train_epoch, "bare": bare_epoch}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in loops}
    for repeat in range(repeats + 1):
        for name in sorted(loops, reverse=repeat % 2 == 1):  # alternate which loop goes first
            seconds = timed(loops[name])
            if repeat:
                times[name].append(seconds)
    return times


def print_table(times: dict[str, list[tuple[float, float]]], steps: int) -> None:
    wall = {name: statistics.median(w for w, _ in v) for name, v in times.items()}
    cpu = {name: statistics.median(c for _, c in v) for name, v in times.items()}
    print("| loop | epoch wall (s) | per step (ms) | epoch CPU (s) |")
    print("|---|---:|---:|---:|")
    for name, label in (("tunedml", "tunedml `Trainer.train_epoch`"), ("bare", "bare PyTorch loop")):
        print(f"| {label} | {wall[name]:.2f} | {1000 * wall[name] / steps:.0f} | {cpu[name]:.2f} |")
    print(f"| ratio tunedml / bare | {wall['tunedml'] / wall['bare']:.2f} | | {cpu['tunedml'] / cpu['bare']:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir",
        default=None,
        help="SentEval folder (default: $TUNEDML_DATA_DIR, else the copy inside the package)",
    )
    parser.add_argument("--dataset", default="sst2")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--k", type=int, default=64, help="examples per class in the training draw")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs per loop, after one warm-up epoch")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: the CPUs granted)")
    args = parser.parse_args()

    data_dir = [f"data.data_dir={args.data_dir}"] if args.data_dir else []
    cfg = build_config(
        sets=[
            *data_dir,
            f"data.dataset={args.dataset}",
            f"data.k={args.k}",
            f"model.name={args.model}",
            f"train.batch_size={args.batch_size}",
            f"train.epochs={args.repeats + 1}",
            f"train.threads={args.threads}",
            "train.device=cpu",
        ]
    )
    tokens = prepare_tokens(cfg)
    trainer = Trainer(cfg, tokens, draw_for(cfg, tokens))  # sets torch's thread count for both loops
    bare = BareLoop(cfg.model.name, tokens.corpus.num_classes, cfg.train.lr, cfg.train.weight_decay, cfg.train.seed)
    times = measure(trainer, bare, args.repeats)

    examples = len(trainer.draw.train)
    steps = -(-examples // args.batch_size)
    machine = platform.processor() or platform.machine()
    print(
        f"One training epoch: {args.dataset} k={args.k} ({examples} examples, {steps} step{'s' * (steps != 1)} "
        f"of {args.batch_size}), {args.model}, torch {torch.__version__} on CPU ({machine}), "
        f"{torch.get_num_threads()} threads; median of {args.repeats} epochs after a warm-up.\n"
    )
    print_table(times, steps)


if __name__ == "__main__":
    main()
