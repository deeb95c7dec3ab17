"""Stability of the final evaluation, before and after #16: mean, std, worst draw, collapsed draws.

Runs the README's flow per task — ``tunedml search`` over ``cce.yaml`` and over ``dml.yaml``, then
``tunedml retrain`` (best DML configuration against the best CCE one on the same fresh draws), then
``tunedml report`` — once per recipe, each recipe in its own folder and MLflow store:

- **before**: what the issue measured: each trial scored on one draw (``--repeats 1``);
- **after**: each trial scored on the mean of three draws (``--repeats 3``, the study's default)
  and ties ranked by lower spread, plus any ``--after-set`` training keys.

Both recipes search with the same budgets and TPE seed and retrain on the same draws (seed
offsets 1000, 1001, ...), so the final draws are identical and only the recipe differs. The table
(markdown on stdout, CSV in ``--out``) has, per task, recipe and side, the test accuracy's mean,
sample std, worst draw and collapsed draws (every test prediction one class), and the wall time.

    python benchmarks/bench_stability.py [--datasets sst2,cr,mpqa] [--k 16] [--draws 5]
        [--cce-trials 20] [--dml-trials 40] [--concurrency 2] [--recipes before,after] [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SPACES = REPO / "search_spaces"
RECIPES = {"before": {"repeats": 1}, "after": {"repeats": 3}}


def tunedml(args: list[str], cwd: Path, log) -> None:
    """One tunedml command in ``cwd``; its output goes to the log, a failure stops the benchmark."""
    cmd = [sys.executable, "-m", "tunedml.cli", *args]
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    done = subprocess.run(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"exit {done.returncode}: {' '.join(args)} (see {log.name})")


def run_recipe(recipe: str, dataset: str, args: argparse.Namespace, out: Path) -> tuple[dict, float]:
    """Both searches, the retrain and the report of one recipe on one task; its CSV row and seconds."""
    where = out / recipe / dataset
    where.mkdir(parents=True, exist_ok=True)
    report = where / "report"
    if (report / "results.csv").is_file():  # done in an earlier, interrupted run of this benchmark
        return accuracy_row(report), float((where / "seconds").read_text())
    sets = ["--set", f"data.k={args.k}", *(x for s in (args.set or []) for x in ("--set", s))]
    if recipe == "after":
        sets += [x for s in (args.after_set or []) for x in ("--set", s)]
    common = ["--dataset", dataset, *sets, "--tracking-uri", f"sqlite:///{where / 'mlflow.db'}"]
    repeats = str(RECIPES[recipe]["repeats"])
    start = time.perf_counter()
    with open(where / "log.txt", "a") as log:
        for space, trials in (("cce", args.cce_trials), ("dml", args.dml_trials)):
            tunedml(["search", *common, "--space", str(SPACES / f"{space}.yaml"), "--trials", str(trials),
                     "--repeats", repeats, "--concurrency", str(args.concurrency), "--seed", str(args.seed),
                     "--storage", str(where / "searches"), "--name", f"{dataset}-{space}"], where, log)
        tunedml(["retrain", *common, "--seeds", str(args.draws)], where, log)
        tunedml(["report", "--tracking-uri", f"sqlite:///{where / 'mlflow.db'}", "--out", str(report)], where, log)
    seconds = time.perf_counter() - start
    (where / "seconds").write_text(f"{seconds:.1f}")
    return accuracy_row(report), seconds


def accuracy_row(report: Path) -> dict:
    with open(report / "results.csv") as f:
        return next(r for r in csv.DictReader(f) if r["metric"] == "accuracy")


DRAW_LINE = re.compile(r"^draw\s+\d+/\d+\s+(baseline|best)\s.*?draw (\d+) \(.*test acc ([0-9.]+)")


def draws(dataset: str, recipe: str, out: Path) -> dict[str, list[float]]:
    """Each side's test accuracy per draw, in draw order, from retrain's progress lines."""
    found: dict[str, dict[int, float]] = {"baseline": {}, "best": {}}
    for line in (out / recipe / dataset / "log.txt").read_text().splitlines():
        if m := DRAW_LINE.match(line):
            found[m[1]][int(m[2])] = 100 * float(m[3])
    return {side: [v for _, v in sorted(d.items())] for side, d in found.items()}


def selection_dev(dataset: str, recipe: str, out: Path) -> dict[str, float]:
    """Each side's dev score at selection: what its search saw of the configuration it chose."""
    db = f"sqlite:///{out / recipe / dataset / 'mlflow.db'}"
    found = {}
    for side, space in (("baseline", "cce"), ("best", "dml")):
        done = subprocess.run([sys.executable, "-m", "tunedml.cli", "best", "--dataset", dataset, "--space", space,
                               "--tracking-uri", db, "--json"], capture_output=True, text=True, check=True)
        found[side] = 100 * float(json.loads(done.stdout)["score"])
    return found


def pct(value: str) -> str:
    return f"{float(value):.1f}"  # the report's CSV has scores in percent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="sst2,cr,mpqa")
    parser.add_argument("--k", type=int, default=16, help="examples per class (train and dev)")
    parser.add_argument("--draws", type=int, default=5, help="fresh draws of the final evaluation")
    parser.add_argument("--cce-trials", type=int, default=20)
    parser.add_argument("--dml-trials", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="TPE seed, the same for both recipes")
    parser.add_argument("--recipes", default="before,after")
    parser.add_argument("--set", action="append", help="KEY=VALUE for both recipes (e.g. train.epochs=10)")
    parser.add_argument("--after-set", action="append", help="KEY=VALUE for the after recipe only")
    parser.add_argument("--out", default="bench_stability", help="folder for the runs (reused: finished parts are kept)")
    args = parser.parse_args()

    out = Path(args.out).resolve()
    recipes = args.recipes.split(",")
    rows = []
    for dataset in args.datasets.split(","):
        for recipe in recipes:
            row, seconds = run_recipe(recipe, dataset, args, out)
            rows.append((dataset, recipe, row, seconds))
            print(f"{dataset} {recipe}: done in {seconds / 60:.1f} min", file=sys.stderr, flush=True)

    after = ", ".join(args.after_set or []) or "no training keys changed"
    print(f"Stability at k={args.k}: {args.cce_trials} CCE + {args.dml_trials} DML trials (TPE seed {args.seed}), "
          f"then both best configurations retrained on the same {args.draws} fresh draws. before = one draw per "
          f"trial (--repeats 1); after = mean of 3 draws per trial (--repeats 3, ties by lower spread; {after}).\n")
    print("| task | recipe | side | loss | dev at selection | test accuracy per draw | mean | std | worst | collapsed | Δ (pp) [95% t] | wall time |")
    print("|---|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|")
    with open(out / "stability.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["dataset", "recipe", "side", "loss", "dev_at_selection", "draws", "mean", "std", "worst", "collapsed", "diff_pp",
                    "diff_low", "diff_high", "seconds"])
        for dataset, recipe, row, seconds in rows:
            diff = f"{float(row['diff_pp']):+.1f} [{float(row['diff_low']):+.1f}, {float(row['diff_high']):+.1f}]" \
                if row.get("diff_low") not in (None, "") else f"{float(row['diff_pp']):+.1f}"
            per_draw, dev = draws(dataset, recipe, out), selection_dev(dataset, recipe, out)
            for side, loss in (("baseline", "none"), ("best", row["best_loss"])):
                print(f"| {dataset} | {recipe} | {'CCE' if side == 'baseline' else 'DML'} | {loss} | "
                      f"{dev[side]:.1f} | {' '.join(f'{v:.1f}' for v in per_draw[side])} | {pct(row[side + '_mean'])} | {pct(row[side + '_std'])} | {pct(row[side + '_worst'])} | "
                      f"{row[side + '_collapsed']} / {args.draws} | {diff if side == 'best' else ''} | "
                      f"{seconds / 60:.0f} min |")
                w.writerow([dataset, recipe, side, loss, f"{dev[side]:.2f}", " ".join(f"{v:.2f}" for v in per_draw[side]),
                            row[side + "_mean"], row[side + "_std"], row[side + "_worst"],
                            row[side + "_collapsed"], row["diff_pp"], row.get("diff_low", ""),
                            row.get("diff_high", ""), f"{seconds:.0f}"])


if __name__ == "__main__":
    main()
