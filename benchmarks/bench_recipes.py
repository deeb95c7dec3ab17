"""The few-shot recipes of the metric-learning literature against plain CCE, on the same draws.

For each task, the core ``Trainer`` (no Ray, no MLflow) fine-tunes the embedded MiniLM on
``--draws`` few-shot draws that no search, re-scoring, retrain, stability grid or budget benchmark
uses (seed offsets 4000, 4001, ...) with every recipe at the same run length (``--steps``, in
optimizer steps) and scores the final model on the test split:

- ``cce``: plain CCE, the baseline;
- ``<loss> <schedule> <sampler>`` for SupCon and the contrastive loss (``--losses``): ``joint``
  (CCE + DML on every step, weights 1 and 1) or ``two_stage`` (stage 1 the encoder on the DML loss
  alone for half the steps, stage 2 the linear head with CCE on the frozen encoder; ``--heads
  linear,logistic`` adds the logistic-regression head fitted after a stage 1 as long as the run),
  each on ``random`` batches or ``m_per_class`` batches (the batch split evenly over as many
  classes as divide it: 8 + 8 on a binary task, 4 classes of 4 on TREC).

Every other key is at its default (batch 16, lr ``--lr``, warmup 10%). Per recipe: test accuracy
mean, sample std and worst draw (%), the mean paired difference to CCE on the same draws (pp), the
batches without a positive pair per run (none once a batch is larger than the task's classes), the
share of examples alone of their class in their batch (anchors without a positive) and seconds per
run. Results go to a JSON-lines file as they come (``--results``), so an interrupted run continues
where it stopped; the table (Markdown, stdout) is made from that file. Runs go draw by draw, so a run cut short has every recipe on the
draws it reached.

    python benchmarks/bench_recipes.py                          # sst2, trec, mpqa; k=16; 5 draws; 100 steps
    python benchmarks/bench_recipes.py --tasks mpqa --draws 1 --steps 4 --results /tmp/r.jsonl   # a smoke run
    python benchmarks/bench_recipes.py --table-only             # the table from --results
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from functools import partial
from pathlib import Path

from bench_budget import read, run_jobs  # beside this file: the results file and one pool loop with progress and ETA

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

OFFSET = 4000  # past the search's repeats (0, ...), re-scoring (500, ...), retrain (1000, ...), stability_grid (2000, ...), bench_budget (3000, ...)
COMMON = ["data.k=16", "train.batch_size=16", "train.warmup_ratio=0.1", "train.weight_decay=0.01"]
BASELINE = "cce"
SCHEDULES = {"joint": ["train.schedule=joint"], "two_stage": ["train.schedule=two_stage"]}
HEADS = {"linear": ["head.fit=linear"], "logistic": ["head.fit=logistic"]}
SAMPLERS = ("random", "m_per_class")
LOSSES = ("supcon", "contrastive")

_tokens: dict[str, object] = {}


def recipes(losses: list[str], heads: list[str]) -> dict[str, list[str]]:
    """Recipe name -> its --set keys: CCE, then each loss under each schedule (and head) and sampler."""
    out = {BASELINE: []}
    for loss in losses:
        schedules = [("joint", SCHEDULES["joint"])] + [
            ("two_stage" if head == "linear" else f"two_stage+{head}", SCHEDULES["two_stage"] + HEADS[head])
            for head in heads
        ]
        for schedule, keys in schedules:
            for sampler in SAMPLERS:
                out[f"{loss} {schedule} {sampler}"] = [f"loss.name={loss}", *keys, f"data.sampler={sampler}"]
    return out


def run_recipe(sets: dict[str, list[str]], job: dict, threads: int) -> dict:
    """:func:`run_one` with the job's recipe's settings (bench_budget's run_jobs calls it with a job)."""
    return run_one(job, sets[job["recipe"]], threads)


def run_one(job: dict, sets: list[str], threads: int) -> dict:
    """Train and test one (task, recipe, draw); runs in a worker process."""
    from tunedml.config import build_config
    from tunedml.retrain.draws import fresh_config
    from tunedml.train import Trainer, draw_for, prepare_tokens

    cfg = build_config(
        None,
        [
            f"data.dataset={job['task']}",
            *COMMON,
            *sets,
            f"train.lr={job['lr']}",
            f"train.steps={job['steps']}",
            f"train.eval_every={job['steps']}",
            f"train.threads={threads}",
            "train.device=cpu",
        ],
    )
    if job["task"] not in _tokens:
        _tokens[job["task"]] = prepare_tokens(cfg)
    tokens = _tokens[job["task"]]
    cfg = fresh_config(cfg, OFFSET + job["draw"])
    start = time.perf_counter()
    trainer = Trainer(cfg, tokens, draw_for(cfg, tokens))
    fit = trainer.fit()
    labels = tokens.corpus.labels[trainer.draw.test]
    majority = float(max((labels == c).mean() for c in range(tokens.corpus.num_classes)))
    return {
        **job,
        "test": fit.test["accuracy"],
        "test_f1": fit.test["macro_f1"],
        "dev": fit.dev["accuracy"],
        "collapsed": fit.test["collapsed"],
        "majority": majority,
        "seconds": time.perf_counter() - start,
        "without_positives": sum(e.batches_without_positives for e in fit.history),
        "alone": sum(e.examples_without_positive for e in fit.history) / (trainer.total_steps * cfg.train.batch_size),
        "threads": threads,
    }


def jobs(args: argparse.Namespace) -> list[dict]:
    return [
        {"task": t, "recipe": r, "lr": args.lr, "steps": args.steps, "draw": d}
        for d in range(args.draws)
        for t in args.tasks
        for r in args.recipes
    ]


def key(job: dict) -> tuple:
    return job["task"], job["recipe"], float(job["lr"]), int(job["steps"]), int(job["draw"])


def table(rows: list[dict], args: argparse.Namespace) -> str:
    cells: dict[tuple, dict[int, dict]] = {}
    for r in rows:
        cells.setdefault((r["task"], r["recipe"]), {})[int(r["draw"])] = r
    out = [
        f"{args.steps} steps, lr {args.lr:g}, k=16, batch 16; test accuracy (%) over the draws; Δ: mean paired "
        "difference to CCE on the same draws (pp)",
        "",
        "| task | recipe | draws | test mean | std | worst | Δ vs CCE | batches w/o positives | examples w/o (%) | s / run |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for task in args.tasks:
        base = cells.get((task, BASELINE), {})
        for recipe in args.recipes:
            runs = cells.get((task, recipe))
            if not runs:
                continue
            acc = [100 * r["test"] for r in runs.values()]
            std = statistics.stdev(acc) if len(acc) > 1 else 0.0
            paired = [100 * (r["test"] - base[d]["test"]) for d, r in runs.items() if d in base]
            delta = "" if recipe == BASELINE or not paired else f"{statistics.mean(paired):+.1f}"
            without = statistics.mean(r["without_positives"] for r in runs.values())
            alone = 100 * statistics.mean(r["alone"] for r in runs.values())
            out.append(
                f"| {task} | {recipe} | {len(acc)} | {statistics.mean(acc):.1f} | {std:.1f} | {min(acc):.1f} | "
                f"{delta} | {without:.1f} | {alone:.1f} | {statistics.mean(r['seconds'] for r in runs.values()):.0f} |"
            )
    majority = {r["task"]: 100 * r["majority"] for r in rows}
    out.append("")
    out.append(
        "Majority-class rate of each test split (%): "
        + ", ".join(f"{t} {majority[t]:.1f}" for t in args.tasks if t in majority)
    )
    return "\n".join(out)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="sst2,trec,mpqa")
    parser.add_argument("--losses", default=",".join(LOSSES), help="DML losses to run each recipe with")
    parser.add_argument("--heads", default="linear", help="two-stage heads: linear, logistic or both (comma list)")
    parser.add_argument(
        "--steps", type=int, default=100, help="run length in optimizer steps (the default of train.steps)"
    )
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument(
        "--workers", type=int, default=2, help="runs at a time, one thread each (1: one run, all threads)"
    )
    parser.add_argument("--results", default="docs/recipes.jsonl")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args(argv)
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    args.losses = [x.strip() for x in args.losses.split(",") if x.strip()]
    args.heads = [x.strip() for x in args.heads.split(",") if x.strip()]
    return args


def check(args: argparse.Namespace) -> str | None:
    """What is wrong with the arguments, in one line; None if nothing."""
    from tunedml.data import TASKS
    from tunedml.losses import LOSSES as REGISTERED

    bad = (
        [t for t in args.tasks if t not in TASKS]
        + [x for x in args.losses if x not in REGISTERED]
        + [h for h in args.heads if h not in HEADS]
    )
    if bad:
        return (
            f"unknown task, loss or head {', '.join(bad)} (valid: {', '.join(TASKS)}; {', '.join(REGISTERED)}; "
            f"{', '.join(HEADS)})"
        )
    if args.draws < 1 or args.workers < 1 or args.steps < 2:
        return "--draws and --workers must be 1 or more, --steps 2 or more (a step for each stage)"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    problem = check(args)
    if problem:
        print(f"bench_recipes: error: {problem}", file=sys.stderr)
        return 2
    sets = recipes(args.losses, args.heads)
    args.recipes = list(sets)
    results = Path(args.results)
    done = {key(r) for r in read(results)}
    todo = [j for j in jobs(args) if key(j) not in done]
    if not args.table_only and todo:
        run_jobs(
            "bench_recipes",
            todo,
            len(done),
            args.workers,
            results,
            lambda r: f"{r['task']} {r['recipe']} draw {r['draw']}",
            work=partial(run_recipe, sets),
        )
    wanted = {key(j) for j in jobs(args)}
    print(table([r for r in read(results) if key(r) in wanted], args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
