"""Trials at a time × threads per trial: which layout gets a batch of runs done sooner on this machine.

The same ``--runs`` runs (the embedded MiniLM, the core ``Trainer``, fresh draws at seed offsets
4000+, tested at the end) go through each layout ``C×T``: ``C`` worker processes at a time, each
with ``T`` torch threads, a run per worker until all are done. Per layout and run length: wall time
for all runs, runs per minute, the ratio of its wall time to the first layout's, and the mean test
accuracy (the same draws, so it should agree up to thread-count rounding). ``--concurrency auto``
(search, study, retrain) follows what this measures; see docs/speed.md.

    python benchmarks/bench_concurrency.py --dataset mpqa --steps 25,100 --runs 4   # 1x2 against 2x1
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import statistics
import time
from concurrent.futures import ProcessPoolExecutor

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

OFFSET = 4000  # the draws bench_speed and bench_recipes use: no search, re-scoring or retrain uses them
_tokens: dict[str, object] = {}


def one_run(dataset: str, steps: int, threads: int, draw: int) -> float:
    """Train and test one draw in this worker; its test accuracy."""
    from tunedml.config import build_config
    from tunedml.retrain.draws import fresh_config
    from tunedml.train import Trainer, draw_for, prepare_tokens

    cfg = build_config(
        None,
        [
            f"data.dataset={dataset}",
            "data.k=16",
            "train.batch_size=16",
            f"train.steps={steps}",
            f"train.eval_every={steps}",
            "train.lr=1e-4",
            "train.warmup_ratio=0.1",
            f"train.threads={threads}",
            "train.device=cpu",
        ],
    )
    cfg = fresh_config(cfg, OFFSET + draw)
    if dataset not in _tokens:  # once per worker, as a Ray worker gets the search's tokens once
        _tokens[dataset] = prepare_tokens(cfg)
    tokens = _tokens[dataset]
    return Trainer(cfg, tokens, draw_for(cfg, tokens)).fit().test["accuracy"]


def layout(dataset: str, steps: int, at_once: int, threads: int, runs: int) -> tuple[float, list[float]]:
    """Wall time of ``runs`` runs on ``at_once`` workers of ``threads`` threads (worker start-up included)."""
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=at_once, mp_context=multiprocessing.get_context("spawn")) as pool:
        accuracies = list(pool.map(one_run, [dataset] * runs, [steps] * runs, [threads] * runs, range(runs)))
    return time.perf_counter() - start, accuracies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mpqa")
    parser.add_argument("--steps", default="25,100", help="run lengths in optimizer steps (comma list)")
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--layouts", default=None, help="CxT comma list; default 1xN and Nx1 for N CPUs")
    args = parser.parse_args()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    layouts = args.layouts or f"1x{cpus},{cpus}x1"
    shapes = [tuple(int(x) for x in shape.split("x")) for shape in layouts.split(",")]
    import torch

    print(
        f"{args.dataset}, k=16, batch 16, {args.runs} runs per cell; torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}, {cpus} CPUs, {time.strftime('%Y-%m-%d')}\n"
    )
    print("| steps | layout (trials × threads) | wall s | runs / min | × first layout | test mean |")
    print("|---:|---|---:|---:|---:|---:|")
    for steps in (int(s) for s in args.steps.split(",")):
        first = None
        for at_once, threads in shapes:
            wall, acc = layout(args.dataset, steps, at_once, threads, args.runs)
            first = first or wall
            print(
                f"| {steps} | {at_once}×{threads} | {wall:.0f} | {60 * args.runs / wall:.1f} | {wall / first:.2f} | "
                f"{100 * statistics.mean(acc):.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
