"""Where a joint run's head should start: a random head against a probed one (LP-FT).

``head.init=random`` starts fine-tuning from PyTorch's initialisation of the linear head;
``head.init=probe`` (LP-FT, Kumar et al. 2022) first fits a logistic regression on the pre-trained
encoder's embeddings of the training draw and starts from it. For each task, loss and learning rate,
both fine-tune the embedded MiniLM for 100 optimizer steps (the shipped spaces' length) on the same
``--draws`` few-shot draws, which no search, re-scoring or retrain uses (bench_budget's, seed
offsets 3000+), with bench_budget's configuration otherwise (k=16, batch 16, warmup 10%, weight decay
0.01, mean pooling), and score the final model on the test split. Per cell: test accuracy mean, std
and worst draw (%), the runs below the test split's majority-class rate, and the paired difference
probe - random with its 95% t interval over the draws (Student's t at n - 1 degrees of freedom:
the draws are few, so the interval is wide). Rows go to ``--results`` as they come; an interrupted
run continues where it stopped.

    python benchmarks/bench_init.py                    # sst2, trec, mpqa; CCE; lr 2e-5 and 1e-4; 5 draws
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from bench_budget import LOSSES, read, run_jobs  # beside this file: the same draws, configuration and runs

STEPS = 100


@dataclass(frozen=True)
class Setting:
    """One key compared at two values on the same draws (bench_pooling reuses this file for its own)."""

    name: str  # the benchmark, in its messages
    key: str  # the config key set per run
    field: str  # its value's name in each row of the results file
    values: tuple[str, str]  # (baseline, other): the table's difference is other - baseline
    results: str
    tasks: str = "sst2,trec,mpqa"
    lrs: str = "2e-5,1e-4"


INIT = Setting("bench_init", "head.init", "init", ("random", "probe"), "docs/init.jsonl")


def jobs(args: argparse.Namespace, s: Setting) -> list[dict]:
    return [
        {"task": t, "loss": loss, "lr": lr, "steps": STEPS, "draw": d, s.field: v, "sets": [f"{s.key}={v}"]}
        for t in args.tasks
        for loss in args.losses
        for lr in args.lrs
        for d in range(args.draws)
        for v in s.values
    ]


def key(job: dict, s: Setting) -> tuple:
    return job["task"], job["loss"], float(job["lr"]), job[s.field], int(job["draw"])


def table(rows: list[dict], args: argparse.Namespace, s: Setting) -> str:
    from tunedml.retrain.stats import t_interval

    base, other = s.values
    by = {key(r, s): r for r in rows}
    out = [
        f"| task | loss | lr | {s.key} | draws | test mean | std | worst | below majority | s / run "
        f"| {other} − {base} (pp) [95% t] |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for task in args.tasks:
        for loss in args.losses:
            for lr in args.lrs:
                paired: dict[str, list[dict]] = {v: [] for v in s.values}
                for d in range(args.draws):
                    pair = [by.get((task, loss, float(lr), v, d)) for v in s.values]
                    if all(pair):
                        for v, r in zip(s.values, pair):
                            paired[v].append(r)
                if not paired[base]:
                    continue
                for v in s.values:
                    rs = paired[v]
                    acc = [100 * r["test"] for r in rs]
                    std = statistics.stdev(acc) if len(acc) > 1 else 0.0
                    below = sum(r["test"] < r["majority"] for r in rs)
                    diff = ""
                    if v == other and len(rs) > 1:
                        d = t_interval([100 * (p["test"] - q["test"]) for p, q in zip(paired[other], paired[base])])
                        diff = f"{d.mean:+.1f} [{d.low:+.1f}, {d.high:+.1f}]"
                    out.append(
                        f"| {task} | {loss} | {lr:g} | {v} | {len(rs)} | {statistics.mean(acc):.1f} | {std:.1f} "
                        f"| {min(acc):.1f} | {below} | {statistics.mean(r['seconds'] for r in rs):.0f} | {diff} |"
                    )
    majority = {r["task"]: 100 * r["majority"] for r in rows}
    out.append("")
    out.append(
        "Majority-class rate of each test split (%): "
        + ", ".join(f"{t} {majority[t]:.1f}" for t in args.tasks if t in majority)
    )
    return "\n".join(out)


def main(s: Setting = INIT, doc: str | None = None) -> int:
    parser = argparse.ArgumentParser(description=(doc or __doc__).splitlines()[0])
    parser.add_argument("--tasks", default=s.tasks)
    parser.add_argument("--losses", default="cce")
    parser.add_argument("--lrs", default=s.lrs)
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2, help="runs at a time, one thread each")
    parser.add_argument("--results", default=s.results)
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    try:
        args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
        args.losses = [x.strip() for x in args.losses.split(",") if x.strip()]
        args.lrs = [float(x) for x in args.lrs.split(",")]
    except ValueError as e:
        print(f"{s.name}: error: {e}", file=sys.stderr)
        return 2
    from tunedml.data import TASKS

    bad = [t for t in args.tasks if t not in TASKS] + [x for x in args.losses if x not in LOSSES]
    if bad or args.draws < 2 or args.workers < 1:
        print(
            f"{s.name}: error: unknown task or loss {', '.join(bad) or '-'} (valid: {', '.join(TASKS)}; "
            f"{', '.join(LOSSES)}), or --draws below 2 or --workers below 1",
            file=sys.stderr,
        )
        return 2
    results = Path(args.results)
    done = {key(r, s) for r in read(results)}
    todo = [j for j in jobs(args, s) if key(j, s) not in done]
    if not args.table_only and todo:

        def describe(r: dict) -> str:
            return f"{r['task']} {r['loss']} lr {r['lr']:g} {s.key}={r[s.field]} draw {r['draw']}"

        run_jobs(s.name, todo, len(done), args.workers, results, describe)
    wanted = {key(j, s) for j in jobs(args, s)}
    print(table([r for r in read(results) if key(r, s) in wanted], args, s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
