"""How long a few-shot run must be: test accuracy against run length in optimizer steps.

For each task, loss configuration, learning rate and run length (``--lengths``, in optimizer steps),
the core ``Trainer`` (no Ray, no MLflow) fine-tunes the embedded MiniLM on ``--draws`` few-shot
draws that no search, re-scoring or retrain uses (seed offsets 3000, 3001, ...) and scores the final
model on the test split. Every run has its own linear schedule over its own length (warmup 10%),
so a length is a run of that length, not a checkpoint of a longer one. Per cell: dev accuracy
mean (what a default is chosen on), test accuracy mean, sample std and worst draw (%), the share of
runs scoring below the test split's majority-class rate, and seconds per run. Results go to a
JSON-lines file as they come (``--results``), so an interrupted run continues where it stopped;
the table (Markdown, stdout) and the curves (PNG) are made from that file.

Runs are ordered by length, shortest first: a run cut short still has every configuration at the
lengths it reached. ``--workers 2`` trains two runs at a time with one thread each (on 2 cores, 10%
more runs per hour than one run with two threads; seconds per run are then per one-thread run).

    python benchmarks/bench_budget.py                      # sst2, trec, mpqa; k=16; 5 draws
    python benchmarks/bench_budget.py --table-only         # the table and plot from --results
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

OFFSET = 3000  # past the search's repeats (0, ...), re-scoring (500, ...), retrain (1000, ...) and stability_grid (2000, ...)
LOSSES = {  # one sensible configuration each: the registry's defaults, CCE and DML weighted alike
    "cce": [],
    "supcon": ["loss.name=supcon"],
    "proxy_anchor": ["loss.name=proxy_anchor"],
}
COMMON = ["data.k=16", "train.batch_size=16", "train.warmup_ratio=0.1", "train.weight_decay=0.01"]

_tokens: dict[str, object] = {}


def run_one(job: dict, threads: int) -> dict:
    """Train and test one (task, loss, lr, length, draw); runs in a worker process."""
    from tunedml.config import build_config
    from tunedml.retrain.draws import fresh_config
    from tunedml.train import Trainer, draw_for, prepare_tokens

    cfg = build_config(
        None,
        [
            f"data.dataset={job['task']}",
            *COMMON,
            *LOSSES[job["loss"]],
            f"train.lr={job['lr']}",
            f"train.steps={job['steps']}",
            f"train.eval_every={job['steps']}",
            f"train.threads={threads}",
            "train.device=cpu",
            *job.get("sets", ()),  # what another benchmark varies (bench_init: head.init)
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
        "threads": threads,
    }


def describe(r: dict) -> str:
    return f"{r['task']} {r['loss']} lr {r['lr']:g} {r['steps']} steps draw {r['draw']}"


def run_jobs(name: str, todo: list[dict], done: int, workers: int, results: Path, describe, work=run_one) -> None:
    """Train ``todo`` with ``work(job, threads)`` (:func:`run_one`, or another benchmark's; a
    module-level function, as it runs in a worker process), ``workers`` at a time (one thread each,
    or every thread for one worker), appending each row to ``results`` as it comes, with a progress
    line and ETA."""
    threads = 1 if workers > 1 else (os.cpu_count() or 1)
    print(f"{name}: {len(todo)} runs to go ({done} recorded in {results})", file=sys.stderr, flush=True)
    results.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool, results.open("a") as out:
        futures = [pool.submit(work, j, threads) for j in todo]
        for i, f in enumerate(as_completed(futures), 1):
            r = f.result()
            out.write(json.dumps(r) + "\n")
            out.flush()
            left = (time.perf_counter() - start) / i * (len(todo) - i)
            print(
                f"run {i}/{len(todo)}  {describe(r)}: test {100 * r['test']:.1f}  {r['seconds']:.0f}s  "
                f"ETA {left / 60:.0f} min",
                file=sys.stderr,
                flush=True,
            )


def jobs(args: argparse.Namespace) -> list[dict]:
    return [
        {"task": t, "loss": loss, "lr": lr, "steps": n, "draw": d}
        for n in args.lengths
        for t in args.tasks
        for loss in args.losses
        for lr in args.lrs
        for d in range(args.draws)
    ]


def key(job: dict) -> tuple:
    return job["task"], job["loss"], float(job["lr"]), int(job["steps"]), int(job["draw"])


def read(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def table(rows: list[dict], args: argparse.Namespace) -> str:
    cells: dict[tuple, list[dict]] = {}
    for r in rows:
        cells.setdefault((r["task"], r["loss"], float(r["lr"]), int(r["steps"])), []).append(r)
    out = [
        "| task | loss | lr | steps | draws | dev mean | test mean | std | worst | below majority | s / run |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for task in args.tasks:
        for loss in args.losses:
            for lr in args.lrs:
                for n in args.lengths:
                    rs = cells.get((task, loss, float(lr), n))
                    if not rs:
                        continue
                    acc = [100 * r["test"] for r in rs]
                    below = sum(r["test"] < r["majority"] for r in rs)
                    std = statistics.stdev(acc) if len(acc) > 1 else 0.0
                    dev = statistics.mean(100 * r["dev"] for r in rs)
                    out.append(
                        f"| {task} | {loss} | {lr:g} | {n} | {len(rs)} | {dev:.1f} | {statistics.mean(acc):.1f} | "
                        f"{std:.1f} | {min(acc):.1f} | {below} | {statistics.mean(r['seconds'] for r in rs):.0f} |"
                    )
    majority = {r["task"]: 100 * r["majority"] for r in rows}
    out.append("")
    out.append(
        "Majority-class rate of each test split (%): "
        + ", ".join(f"{t} {majority[t]:.1f}" for t in args.tasks if t in majority)
    )
    return "\n".join(out)


def plot(rows: list[dict], args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.tasks), figsize=(5 * len(args.tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], args.tasks):
        for loss in args.losses:
            for lr in args.lrs:
                points = []
                for n in args.lengths:
                    acc = [
                        100 * r["test"]
                        for r in rows
                        if (r["task"], r["loss"], float(r["lr"]), int(r["steps"])) == (task, loss, float(lr), n)
                    ]
                    if acc:
                        points.append((n, statistics.mean(acc), min(acc)))
                if points:
                    (line,) = ax.plot(
                        [p[0] for p in points], [p[1] for p in points], marker="o", label=f"{loss} lr {lr:g}"
                    )
                    ax.plot([p[0] for p in points], [p[2] for p in points], ls=":", color=line.get_color(), alpha=0.6)
        majority = [100 * r["majority"] for r in rows if r["task"] == task]
        if majority:
            ax.axhline(majority[0], color="grey", lw=0.8, ls="--", label="majority class")
        ax.set_xscale("log", base=2)
        ax.set_xticks(args.lengths, [str(n) for n in args.lengths])
        ax.set_title(f"{task}, k=16")
        ax.set_xlabel("run length (optimizer steps)")
        ax.set_ylabel("test accuracy (%): mean (solid), worst draw (dotted)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="sst2,trec,mpqa")
    parser.add_argument("--losses", default=",".join(LOSSES))
    parser.add_argument("--lrs", default="2e-5,1e-4")
    parser.add_argument("--lengths", default="25,50,100,200,400")
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument(
        "--workers", type=int, default=2, help="runs at a time, one thread each (1: one run, all threads)"
    )
    parser.add_argument("--results", default="docs/budget.jsonl")
    parser.add_argument("--plot", default="docs/budget.png")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    try:
        args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
        args.losses = [x.strip() for x in args.losses.split(",") if x.strip()]
        args.lrs = [float(x) for x in args.lrs.split(",")]
        args.lengths = sorted(int(x) for x in args.lengths.split(","))
    except ValueError as e:
        print(f"bench_budget: error: {e}", file=sys.stderr)
        return 2
    from tunedml.data import TASKS

    bad = [t for t in args.tasks if t not in TASKS] + [x for x in args.losses if x not in LOSSES]
    if bad or args.draws < 1 or args.workers < 1 or min(args.lengths) < 1:
        print(
            f"bench_budget: error: unknown task or loss {', '.join(bad) or '-'} (valid: {', '.join(TASKS)}; "
            f"{', '.join(LOSSES)}), or --draws/--workers/--lengths below 1",
            file=sys.stderr,
        )
        return 2
    results = Path(args.results)
    done = {key(r) for r in read(results)}
    todo = [j for j in jobs(args) if key(j) not in done]
    if not args.table_only and todo:
        run_jobs("bench_budget", todo, len(done), args.workers, results, describe)
    rows = [r for r in read(results) if key(r) in {key(j) for j in jobs(args)}]
    print(table(rows, args))
    plot(rows, args, Path(args.plot))
    return 0


if __name__ == "__main__":
    sys.exit(main())
