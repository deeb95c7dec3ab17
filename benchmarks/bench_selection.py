"""Does re-scoring the leaders give a choice that holds on test? The flow with and without it.

Per task, the flow of docs/evaluation.md: a search over ``cce.yaml`` and one over ``dml.yaml`` with the same
budget, each re-scoring its ``--rescore`` leading trials on ``--rescore-draws`` fresh draws. Every
search thus yields two choices per side from the very same trials: the trial with the best search
score (the choice *without* re-scoring) and the best re-scored mean (the choice *with* it). Both
pairs are retrained on the same ``--seeds`` final draws (`tunedml retrain`, seed offsets 1000+) and
compared: the test mean of each side's choice, its optimism (dev at selection − test), the verdict
DML − CCE with its 95% paired t interval, and what re-scoring cost in wall time.

Everything goes through the `tunedml` command line (as a user runs it) into one MLflow store and
one results folder under ``--work``; each step's JSON is kept there, so a run that stopped continues
where it stopped. The Markdown table goes to stdout.

    python benchmarks/bench_selection.py                     # sst2, cr, mpqa; k=16; 20 + 20 trials
    python benchmarks/bench_selection.py --table-only        # the table from --work
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
SIDES = ("cce", "dml")


def tunedml(args: list[str], log: Path) -> dict:
    """One `tunedml ... --json` command; its JSON result (stderr, the progress lines, goes to ``log``)."""
    with log.open("a") as err:
        err.write(f"$ tunedml {' '.join(args)}\n")
        err.flush()
        done = subprocess.run(
            [sys.executable, "-m", "tunedml.cli", *args, "--json"],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            cwd=REPO,
        )
    if done.returncode != 0:
        raise SystemExit(f"bench_selection: `tunedml {' '.join(args)}` exited {done.returncode}; see {log}")
    return json.loads(done.stdout)


def step(work: Path, name: str, args: list[str]) -> dict:
    """A step's JSON, kept in ``work``: run once, read back after."""
    file = work / f"{name}.json"
    if not file.exists():
        start = time.perf_counter()
        result = tunedml(args, work / "log.txt")
        result["wall_s"] = time.perf_counter() - start
        file.write_text(json.dumps(result, indent=1))
    return json.loads(file.read_text())


def trial_run_id(uri: str, search_run: str, trial: str) -> str:
    """The MLflow run of one trial of a recorded search."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    parent = client.get_run(search_run)
    runs = client.search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{search_run}' and tags.`ray.trial_id` = '{trial}'"
    )
    return runs[0].info.run_id


def run_task(task: str, args: argparse.Namespace, work: Path) -> dict:
    uri = f"sqlite:///{work / 'mlflow.db'}"
    common = ["--tracking-uri", uri, "--set", f"data.k={args.k}", *sum((["--set", s] for s in args.set), [])]
    searches = {}
    for side in SIDES:
        searches[side] = step(
            work,
            f"{task}-{side}-search",
            [
                "search",
                "--datasets",
                task,
                "--space",
                str(REPO / "search_spaces" / f"{side}.yaml"),
                "--trials",
                str(args.trials),
                "--rescore",
                str(args.rescore),
                "--rescore-draws",
                str(args.rescore_draws),
                "--concurrency",
                str(args.concurrency),
                "--storage",
                str(work / "results"),
                "--name",
                f"{task}-{side}",
                *common,
            ],
        )
    # without re-scoring: the trial with the best search score; with it: the search's choice
    plain = {side: trial_run_id(uri, s["mlflow"]["run_id"], s["search_best_trial"]) for side, s in searches.items()}
    chosen = {side: s["mlflow"]["run_id"] for side, s in searches.items()}
    retrain = ["--seeds", str(args.seeds), "--concurrency", str(args.concurrency), *common]
    finals = {
        "without": step(
            work,
            f"{task}-retrain-without",
            ["retrain", "--dataset", task, "--run-id", plain["dml"], "--baseline", plain["cce"], *retrain],
        ),
        "with": step(
            work,
            f"{task}-retrain-with",
            ["retrain", "--dataset", task, "--run-id", chosen["dml"], "--baseline", chosen["cce"], *retrain],
        ),
    }
    return {"searches": searches, "finals": finals}


def rows(task: str, outcome: dict) -> list[str]:
    out = []
    for recipe, final in outcome["finals"].items():
        diff = final["differences_pp"]["accuracy"]
        verdict = f"{diff['mean']:+.1f}" + (
            f" [{diff['low']:+.1f}, {diff['high']:+.1f}]" if diff["low"] is not None else ""
        )
        for role, side in (("baseline", "cce"), ("best", "dml")):
            r = final[role]
            s = r["summary"]["accuracy"]
            search = outcome["searches"][side]
            selection = r.get("selection_score")
            rescored = r.get("rescored")
            extra = search.get("rescore_seconds") if recipe == "with" else None
            out.append(
                " | ".join(
                    [
                        f"| {task}",
                        recipe,
                        side.upper(),
                        r["loss"],
                        "–" if selection is None else f"{100 * selection:.1f}",
                        "–" if not rescored else f"{100 * rescored[0]:.1f} ± {100 * rescored[1]:.1f}",
                        f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f}",
                        f"{100 * s['worst']:.1f}",
                        "–" if selection is None else f"{100 * (selection - s['mean']):+.1f}",
                        verdict if role == "best" else "",
                        f"{search['wall_s'] / 60:.0f} min" + (f" (+{extra / 60:.1f} re-scoring)" if extra else ""),
                    ]
                )
                + " |"
            )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="sst2,cr,mpqa")
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--trials", type=int, default=20, help="trials of each search, CCE and DML alike")
    parser.add_argument("--rescore", type=int, default=3)
    parser.add_argument("--rescore-draws", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=5, help="final draws of each retrain")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE for every search and retrain")
    parser.add_argument("--work", default="bench-selection", help="folder for the MLflow store, results and steps")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    from tunedml.data import TASKS

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    bad = [t for t in tasks if t not in TASKS]
    if bad or min(args.trials, args.rescore, args.rescore_draws, args.seeds, args.concurrency, args.k) < 1:
        print(
            f"bench_selection: error: unknown task {', '.join(bad) or '-'} (valid: {', '.join(TASKS)}), "
            "or a count below 1",
            file=sys.stderr,
        )
        return 2
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    lines = [
        "| task | recipe | side | loss | dev at selection | re-scored dev | test | worst | optimism (pp) | "
        "Δ DML − CCE [95% t] | search wall time |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for task in tasks:
        if args.table_only and not (work / f"{task}-retrain-with.json").exists():
            continue
        lines += rows(task, run_task(task, args, work))
        print(f"bench_selection: {task} done", file=sys.stderr, flush=True)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
