"""Where a study's wall time goes: the README's `tunedml study`, broken down by phase.

Runs the README's quickstart study (by default on its task, sst2: 6 + 6 trials, re-scoring the 3
best of each on 3 draws, 5 final draws per side, k=16) as a user runs it, in a subprocess, with
``$TUNEDML_TIMING`` set (:mod:`tunedml.timing`): every process that trains, the driver and each Ray
worker, records the seconds it spends tokenizing, building models, assembling batches, in forward
and backward passes, in the optimizer step, evaluating dev and testing. The benchmark sums them and
sets them against the study's *slot time*: its wall time times the trials it runs at a time (each
trial, re-scoring run and final draw holds one slot). What no phase claims is the rest: Ray and
MLflow, process start-up, the report, and slots with nothing to do (the last trials of a search,
a stage waiting for its slowest draw).

The headline is *wall time / time in forward and backward passes per slot*: 1.0 would be a study
that does nothing but compute gradients.

    python benchmarks/bench_study.py                      # the README's study, on sst2
    python benchmarks/bench_study.py --dataset mpqa       # the same budget on a cheaper task
    python benchmarks/bench_study.py --table-only         # the table again from --work
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
ROWS = (
    ("forward_backward", "forward and backward passes"),
    ("optimizer", "optimizer step (clipping, AdamW, schedule)"),
    ("batches", "batches (tokens to tensors)"),
    ("evaluation", "dev evaluation"),
    ("test", "test evaluation (final draws)"),
    ("setup", "model set-up (weights read, optimizer built)"),
    ("tokenize", "tokenization"),
)


def run_study(args: argparse.Namespace, work: Path) -> dict:
    """The study, once (its summary is kept in ``work``; a second call reads it back)."""
    summary = work / "summary.json"
    if summary.exists():
        return json.loads(summary.read_text())
    timing = work / "timing.jsonl"
    timing.unlink(missing_ok=True)
    argv = [
        "study",
        "--datasets",
        args.dataset,
        "--trials",
        str(args.trials),
        "--seeds",
        str(args.seeds),
        "--repeats",
        str(args.repeats),
        "--concurrency",
        str(args.concurrency),
        "--set",
        f"data.k={args.k}",
        *sum((["--set", s] for s in args.set), []),
        "--tracking-uri",
        f"sqlite:///{work / 'mlflow.db'}",
        "--storage",
        str(work / "results"),
        "--out",
        str(work / "report"),
    ]
    env = {**os.environ, "TUNEDML_TIMING": str(timing)}
    start = time.perf_counter()
    with (work / "log.txt").open("w") as log:
        log.write(f"$ tunedml {' '.join(argv)}\n")
        log.flush()
        done = subprocess.run([sys.executable, "-m", "tunedml.cli", *argv], stdout=log, stderr=log, env=env, cwd=work)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"bench_study: the study exited {done.returncode}; see {work / 'log.txt'}")
    from tunedml.timing import read

    pids = {json.loads(line)["pid"] for line in timing.read_text().splitlines()}
    where = {"--tracking-uri", "--storage", "--out"}  # this benchmark's folders, not the study's settings
    shown = [a for i, a in enumerate(argv) if a not in where and (i == 0 or argv[i - 1] not in where)]
    result = {
        "command": "tunedml " + " ".join(shown),
        "wall_s": wall,
        "slots": slots(args.concurrency),
        "processes": len(pids),
        "seconds": read(str(timing)),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.processor() or 'cpu'}",
        "date": time.strftime("%Y-%m-%d"),
    }
    summary.write_text(json.dumps(result, indent=1))
    return result


def slots(concurrency: str) -> int:
    """Trials at a time, as the study chose them (``auto``: by the rule it uses)."""
    if concurrency != "auto":
        return int(concurrency)
    from tunedml.checks import auto_concurrency, local_node

    return auto_concurrency([local_node()], None, "auto", 10**6, "trial")[0]


def table(result: dict) -> str:
    slot_s = result["wall_s"] * result["slots"]
    seconds = result["seconds"]
    lines = [
        f"`{result['command']}`: {result['wall_s'] / 60:.1f} min wall time, {result['slots']} slot(s), "
        f"{result['processes']} processes that trained; {result['machine']}, {result['date']}.",
        "",
        "| part | seconds (all processes) | share of slot time |",
        "|---|---:|---:|",
    ]
    for key, name in ROWS:
        lines.append(f"| {name} | {seconds.get(key, 0.0):.0f} | {100 * seconds.get(key, 0.0) / slot_s:.1f}% |")
    rest = slot_s - sum(seconds.get(key, 0.0) for key, _ in ROWS)
    lines.append(
        f"| the rest: Ray, MLflow, process start-up, the report, idle slots | {rest:.0f} | {100 * rest / slot_s:.1f}% |"
    )
    lines.append(f"| **slot time** (wall × slots) | {slot_s:.0f} | 100% |")
    fb = seconds.get("forward_backward", 0.0) / result["slots"]
    lines += ["", f"**wall time / forward and backward time per slot: {result['wall_s'] / fb:.2f}**" if fb else ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="sst2")
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--concurrency", default="auto", help="trials at a time: auto (the README's study) or N")
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE for both searches and the retrain")
    parser.add_argument("--work", default="bench-study", help="folder for the study's store, results and timing")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    work = Path(args.work).resolve()
    if args.table_only and not (work / "summary.json").exists():
        print(f"bench_study: error: no {work / 'summary.json'}; run without --table-only first", file=sys.stderr)
        return 2
    work.mkdir(parents=True, exist_ok=True)
    print(table(run_study(args, work)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
