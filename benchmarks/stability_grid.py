"""Which training settings fail at few-shot sizes: a small grid trained on draws nobody else uses.

Each ``--point`` (comma-separated KEY=VALUE overrides on top of ``--set``) is trained on ``--draws``
few-shot draws at seed offsets 2000, 2001, ... (a search uses offsets 0, 1, ..., ``retrain`` 1000,
1001, ..., so nothing here overlaps them) with the core ``Trainer``, no Ray, one thread. Per point:
optimizer steps, the final model's dev accuracy (mean, worst; the last epoch's, or the best
epoch's with ``train.restore_best``), test accuracy (mean, worst) and the runs whose test
predictions fell to one class. Choose on the dev columns; the test columns say how
far dev can be trusted at this size.

    python benchmarks/stability_grid.py --dataset mpqa --set data.k=16 --set train.epochs=15 \\
        --point train.lr=1e-5,train.batch_size=32 --point train.lr=1e-4,train.batch_size=32
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

OFFSET = 2000  # draws of this grid: past the search's repeats (0, 1, ...) and retrain's (1000, ...)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mpqa")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE for every point (e.g. data.k=16)")
    parser.add_argument("--point", action="append", required=True, help="KEY=VALUE[,KEY=VALUE...] of one point")
    parser.add_argument("--draws", type=int, default=5)
    args = parser.parse_args()

    from tunedml.config import build_config, parse_set_args
    from tunedml.retrain.draws import fresh_config
    from tunedml.train import draw_for, prepare_tokens, run_training

    base = build_config(None, [f"data.dataset={args.dataset}", "train.threads=1", *args.set])
    points = {p: base.with_overrides(parse_set_args(p.split(","))) for p in args.point}  # every point checked first
    tokens = prepare_tokens(base)
    print(
        f"{args.dataset}, {' '.join(args.set) or 'defaults'}; {args.draws} draws (seed offsets {OFFSET}+), "
        "accuracy in %.\n"
    )
    print("| point | steps | dev mean ± std | dev worst | test mean ± std | test worst | collapsed |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for point, cfg0 in points.items():
        dev, test, collapsed = [], [], 0
        for i in range(args.draws):
            fit = run_training(fresh_config(cfg0, OFFSET + i), tokens)
            dev.append(100 * fit.dev["accuracy"])
            test.append(100 * fit.test["accuracy"])
            collapsed += int(fit.test["collapsed"])
            print(f"  {point} draw {i}: dev {dev[-1]:.1f} test {test[-1]:.1f}", file=sys.stderr, flush=True)
        steps = cfg0.train.total_steps(len(draw_for(cfg0, tokens).train))
        print(
            f"| {point} | {steps} | {mean_std(dev)} | {min(dev):.1f} | {mean_std(test)} | "
            f"{min(test):.1f} | {collapsed} / {args.draws} |",
            flush=True,
        )


def mean_std(values: list[float]) -> str:
    """Mean ± sample standard deviation over the draws."""
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.1f}"


if __name__ == "__main__":
    from tunedml.errors import TunedMLError

    try:
        main()
    except TunedMLError as e:  # a bad --set or --point: one line and exit code 2, as the CLI does
        print(f"stability_grid: error: {e}", file=sys.stderr)
        sys.exit(2)
