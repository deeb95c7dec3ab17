"""What the speed options cost and save: AdamW's path, frozen word embeddings, torch.compile.

Each variant trains the embedded MiniLM with the core ``Trainer`` (no Ray, no MLflow) for a whole
run of ``--steps`` optimizer steps on the same ``--draws`` few-shot draws (seed offsets 4000+, used
by nothing else) and is tested; the variants of one draw run back to back, so machine load hits
them alike. Per variant: seconds per run (model construction, compilation and evaluation included),
its ratio to the baseline's, test accuracy mean, and the paired difference to the baseline with its
95% Student t interval over the draws (a speed option must not cost accuracy).

Variants: ``baseline`` (the defaults: AdamW's fused kernel, on the CPU since torch 2.4), ``foreach``
(AdamW's multi-tensor path, the default before), ``single_tensor`` (AdamW updating one tensor at a
time, PyTorch's CPU default), ``freeze_embeddings`` (``model.freeze_embeddings``), ``compile``
(``train.compile``).

    python benchmarks/bench_speed.py --dataset mpqa --steps 100 --draws 5
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

OFFSET = 4000
VARIANTS = {
    "baseline": [],
    "foreach": [],  # ADAMW_IMPL swapped below
    "single_tensor": [],  # ADAMW_IMPL swapped below
    "freeze_embeddings": ["model.freeze_embeddings=true"],
    "compile": ["train.compile=true"],
}


def run(variant: str, draw: int, args: argparse.Namespace, tokens):
    import tunedml.train as train
    from tunedml.config import build_config
    from tunedml.retrain.draws import fresh_config

    cfg = build_config(
        None,
        [
            f"data.dataset={args.dataset}",
            f"data.k={args.k}",
            f"train.batch_size={args.batch_size}",
            f"train.steps={args.steps}",
            f"train.eval_every={args.steps}",
            f"train.lr={args.lr}",
            f"train.threads={args.threads}",
            "train.device=cpu",
            *VARIANTS[variant],
        ],
    )
    cfg = fresh_config(cfg, OFFSET + draw)
    impl = train.ADAMW_IMPL
    train.ADAMW_IMPL = {"single_tensor": {"foreach": False}, "foreach": {"foreach": True}}.get(variant, impl)
    try:
        start = time.perf_counter()
        result = train.Trainer(cfg, tokens, train.draw_for(cfg, tokens)).fit()
        return time.perf_counter() - start, result.test["accuracy"]
    finally:
        train.ADAMW_IMPL = impl


def main() -> None:
    import torch
    from scipy import stats

    from tunedml.config import build_config
    from tunedml.train import prepare_tokens

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mpqa")
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    variants = args.variants.split(",")
    tokens = prepare_tokens(build_config(None, [f"data.dataset={args.dataset}"]))
    seconds = {v: [] for v in variants}
    accuracy = {v: [] for v in variants}
    for d in range(args.draws):
        for v in variants:
            s, acc = run(v, d, args, tokens)
            seconds[v].append(s)
            accuracy[v].append(100 * acc)
            print(f"draw {d} {v}: {s:.1f}s  test {100 * acc:.1f}", flush=True)
    print(
        f"\n{args.dataset}, k={args.k}, batch {args.batch_size}, {args.steps} steps, lr {args.lr:g}, "
        f"{args.draws} draws, {args.threads} threads; torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs\n"
    )
    print("| variant | s / run | × baseline | test mean | Δ test vs baseline (pp) [95% t] |")
    print("|---|---:|---:|---:|---|")
    base_s = statistics.mean(seconds["baseline"]) if "baseline" in seconds else None
    for v in variants:
        mean_s = statistics.mean(seconds[v])
        ratio = f"{mean_s / base_s:.2f}" if base_s else "-"
        diff = "-"
        if "baseline" in accuracy and v != "baseline" and len(accuracy[v]) > 1:
            d = [a - b for a, b in zip(accuracy[v], accuracy["baseline"])]
            m = statistics.mean(d)
            sd = statistics.stdev(d)
            half = stats.t.ppf(0.975, len(d) - 1) * sd / len(d) ** 0.5
            diff = f"{m:+.1f} [{m - half:+.1f}, {m + half:+.1f}]"
        print(f"| {v} | {mean_s:.1f} | {ratio} | {statistics.mean(accuracy[v]):.1f} | {diff} |")


if __name__ == "__main__":
    main()
