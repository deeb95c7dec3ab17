"""What adversarial views cost: one training epoch with `fgm` and with `pgd` against none.

Three trainers fine-tune the same freshly loaded model (the embedded ``minilm`` by default) with
CCE + SupCon on the same SST-2 k-shot draw, the same seed and so the same batches; they differ only
in ``adversarial.mode``. Epochs of the three alternate, in a rotating order, so that machine load
hits them alike; the table gives the median epoch time and its ratio to no adversarial views.
Expected ratios: fgm about 2 (an extra backward to the embeddings and an extra forward and
backward), pgd with S steps about S + 1.

    python benchmarks/bench_adversarial.py [--data-dir DIR] [--k 16] [--repeats 3] [--pgd-steps 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from tunedml.config import build_config  # noqa: E402
from tunedml.train import Trainer, draw_for, prepare_tokens  # noqa: E402


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process)."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(trainers: dict[str, Trainer], repeats: int) -> dict[str, list[tuple[float, float]]]:
    """(wall, CPU) seconds of ``repeats`` epochs per trainer, after one warm-up epoch each."""
    names = list(trainers)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for repeat in range(repeats + 1):
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:  # rotate who goes first
            seconds = timed(trainers[name].train_epoch)
            if repeat:
                times[name].append(seconds)
    return times


def print_table(times: dict[str, list[tuple[float, float]]], labels: dict[str, str], steps: int) -> None:
    wall = {name: statistics.median(w for w, _ in v) for name, v in times.items()}
    cpu = {name: statistics.median(c for _, c in v) for name, v in times.items()}
    print("| adversarial views | epoch wall (s) | per step (ms) | epoch CPU (s) | ratio to none (wall) | ratio (CPU) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in times:
        print(
            f"| {labels[name]} | {wall[name]:.2f} | {1000 * wall[name] / steps:.0f} | {cpu[name]:.2f} | "
            f"{wall[name] / wall['none']:.2f} | {cpu[name] / cpu['none']:.2f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir",
        default=None,
        help="SentEval folder (default: $TUNEDML_DATA_DIR, else the copy inside the package)",
    )
    parser.add_argument("--dataset", default="sst2")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--k", type=int, default=16, help="examples per class in the training draw")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per mode, after one warm-up epoch")
    parser.add_argument("--pgd-steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: the CPUs granted)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda (bf16 autocast there) or auto")
    args = parser.parse_args()

    data_dir = [f"data.data_dir={os.path.abspath(args.data_dir)}"] if args.data_dir else []
    common = [
        *data_dir,
        f"data.dataset={args.dataset}",
        f"data.k={args.k}",
        f"model.name={args.model}",
        f"train.batch_size={args.batch_size}",
        f"train.epochs={args.repeats + 1}",
        f"train.threads={args.threads}",
        f"train.device={args.device}",
        "loss.name=supcon",
    ]
    modes = {
        "none": [],
        "fgm": ["adversarial.mode=fgm"],
        "pgd": ["adversarial.mode=pgd", f"adversarial.steps={args.pgd_steps}"],
    }
    labels = {"none": "none", "fgm": "fgm", "pgd": f"pgd, {args.pgd_steps} steps"}
    configs = {name: build_config(sets=common + extra) for name, extra in modes.items()}
    tokens = prepare_tokens(configs["none"])
    trainers = {name: Trainer(cfg, tokens, draw_for(cfg, tokens)) for name, cfg in configs.items()}
    times = measure(trainers, args.repeats)

    trainer = trainers["none"]
    examples = len(trainer.draw.train)
    steps = -(-examples // args.batch_size)
    machine = platform.processor() or platform.machine()
    where = (
        f"{trainer.device}" if trainer.device.type != "cpu" else f"CPU ({machine}), {torch.get_num_threads()} threads"
    )
    print(
        f"One training epoch, CCE + SupCon: {args.dataset} k={args.k} ({examples} examples, {steps} steps of "
        f"{args.batch_size}), {args.model}, torch {torch.__version__} on {where}; median of {args.repeats} "
        f"epochs after a warm-up.\n"
    )
    print_table(times, labels, steps)


if __name__ == "__main__":
    main()
