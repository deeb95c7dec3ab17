"""Stability of the final evaluation, before and after #16: mean, std, worst draw, collapsed draws.

Runs the flow of docs/evaluation.md per task — ``tunedml search`` over ``cce.yaml`` and over ``dml.yaml``, then
``tunedml retrain`` (best DML configuration against the best CCE one on the same fresh draws), then
``tunedml report`` — once per recipe, each recipe in its own folder and MLflow store:

- **before**: what the issue measured: each trial scored on one draw (``--repeats 1``);
- **after**: each trial scored on the mean of three draws (``--repeats 3``, the study's default)
  and ties ranked by lower spread, plus any ``--after-set`` training keys.

Both recipes search with the same budgets and TPE seed and retrain on the same draws (seed
offsets 1000, 1001, ...), so the final draws are identical and only the recipe differs. The table
(markdown on stdout, CSV in ``--out``), read back from each recipe's MLflow store, has per task,
recipe and side the dev score at selection, the test accuracy per draw, its mean, sample std,
worst draw and collapsed draws (every test prediction one class), Δ, and the wall time. Its latest
output is in docs/results.md (*Stability*).

    python benchmarks/bench_stability.py [--datasets sst2,cr,mpqa] [--k 16] [--draws 5]
        [--cce-trials 20] [--dml-trials 40] [--concurrency 2] [--recipes before,after] [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from tunedml.results import Comparison

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SPACES = REPO / "search_spaces"
REPEATS = {"before": 1, "after": 3}  # draws per trial


def tunedml(args: list[str], cwd: Path, log: TextIO) -> None:
    """One tunedml command in ``cwd``; its output goes to the log, a failure stops the benchmark
    with the command's own last line (its one-line error)."""
    cmd = [sys.executable, "-m", "tunedml.cli", *args]
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    done = subprocess.run(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode:
        last = Path(log.name).read_text().rstrip().splitlines()[-1]
        print(f"bench_stability: {last} (log: {log.name})", file=sys.stderr)
        sys.exit(done.returncode)  # 2 for bad input, as the command said


def run_recipe(recipe: str, dataset: str, args: argparse.Namespace, out: Path) -> float:
    """Both searches, the retrain and the report of one recipe on one task; its wall seconds."""
    where = out / recipe / dataset
    where.mkdir(parents=True, exist_ok=True)
    if (where / "seconds").is_file():  # done in an earlier, interrupted run of this benchmark
        return float((where / "seconds").read_text())
    sets = [f"data.k={args.k}", *(args.set or []), *((args.after_set or []) if recipe == "after" else [])]
    common = [*(x for s in sets for x in ("--set", s)), "--tracking-uri", store(out, recipe, dataset)]
    start = time.perf_counter()
    with open(where / "log.txt", "a") as log:
        for space, trials in (("cce", args.cce_trials), ("dml", args.dml_trials)):
            tunedml(
                [
                    "search",
                    "--datasets",
                    dataset,
                    *common,
                    "--space",
                    str(SPACES / f"{space}.yaml"),
                    "--trials",
                    str(trials),
                    "--repeats",
                    str(REPEATS[recipe]),
                    "--concurrency",
                    str(args.concurrency),
                    "--sampler-seed",
                    str(args.sampler_seed),
                    "--storage",
                    str(where / "searches"),
                    "--name",
                    f"{dataset}-{space}",
                ],
                where,
                log,
            )
        tunedml(["retrain", "--dataset", dataset, *common, "--seeds", str(args.draws)], where, log)
        tunedml(["report", "--tracking-uri", store(out, recipe, dataset), "--out", str(where / "report")], where, log)
    seconds = time.perf_counter() - start
    (where / "seconds").write_text(f"{seconds:.1f}")
    return seconds


def store(out: Path, recipe: str, dataset: str) -> str:
    return f"sqlite:///{out / recipe / dataset / 'mlflow.db'}"


def sides(uri: str, dataset: str) -> tuple[Comparison, dict[str, float]]:
    """The recorded final evaluation, and each side's dev score at selection (what its search saw
    of the configuration it chose), from the recipe's MLflow store."""
    from tunedml.cli import quiet_libraries
    from tunedml.tracking import final_comparisons, find_best

    quiet_libraries(verbose=False)  # no MLflow download bars between the table's lines
    comparison = final_comparisons(uri, [dataset])[0]
    dev = {
        role: 100 * find_best(uri, dataset, space=space).score for role, space in (("baseline", "cce"), ("best", "dml"))
    }
    return comparison, dev


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="sst2,cr,mpqa")
    parser.add_argument("--k", type=int, default=16, help="examples per class (train and dev)")
    parser.add_argument("--draws", type=int, default=5, help="fresh draws of the final evaluation")
    parser.add_argument("--cce-trials", type=int, default=20)
    parser.add_argument("--dml-trials", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--sampler-seed", type=int, default=0, help="TPE sampler seed, the same for both recipes")
    parser.add_argument("--recipes", default="before,after")
    parser.add_argument("--set", action="append", help="KEY=VALUE for both recipes (e.g. train.epochs=10)")
    parser.add_argument("--after-set", action="append", help="KEY=VALUE for the after recipe only")
    parser.add_argument(
        "--out", default="bench_stability", help="folder for the runs (reused: finished recipes are kept)"
    )
    args = parser.parse_args()

    out = Path(args.out).resolve()
    runs = []
    for dataset in args.datasets.split(","):
        for recipe in args.recipes.split(","):
            seconds = run_recipe(recipe, dataset, args, out)
            runs.append((dataset, recipe, seconds))
            print(f"{dataset} {recipe}: done in {seconds / 60:.1f} min", file=sys.stderr, flush=True)

    after = ", ".join(args.after_set or []) or "no training keys changed"
    print(
        f"Stability at k={args.k}: {args.cce_trials} CCE + {args.dml_trials} DML trials (TPE seed {args.sampler_seed}), "
        f"then both best configurations retrained on the same {args.draws} fresh draws. before = one draw per "
        f"trial (--repeats 1); after = mean of 3 draws per trial (--repeats 3, ties by lower spread; {after}).\n"
    )
    print(
        "| task | recipe | side | loss | dev at selection | test accuracy per draw | mean | std | worst | "
        "collapsed | Δ (pp) [95% t] | wall time |"
    )
    print("|---|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|")
    with open(out / "stability.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "dataset",
                "recipe",
                "side",
                "loss",
                "dev_at_selection",
                "draws",
                "mean",
                "std",
                "worst",
                "collapsed",
                "diff_pp",
                "diff_low",
                "diff_high",
                "seconds",
            ]
        )
        for dataset, recipe, seconds in runs:
            comparison, dev = sides(store(out, recipe, dataset), dataset)
            d = comparison.differences["accuracy"]
            diff = f"{d.mean:+.1f}" + (f" [{d.low:+.1f}, {d.high:+.1f}]" if d.low is not None else "")
            for role, side in (("baseline", "CCE"), ("best", "DML")):
                result = comparison.result(role)
                per_draw = 100 * result.scores("accuracy")
                s = {k: 100 * v for k, v in result.summary()["accuracy"].items()}
                print(
                    f"| {dataset} | {recipe} | {side} | {result.candidate.loss} | {dev[role]:.1f} | "
                    f"{' '.join(f'{v:.1f}' for v in per_draw)} | {s['mean']:.1f} | {s['std']:.1f} | "
                    f"{s['worst']:.1f} | {result.collapsed} / {len(result.draws)} | "
                    f"{diff if role == 'best' else ''} | {seconds / 60:.0f} min |"
                )
                w.writerow(
                    [
                        dataset,
                        recipe,
                        role,
                        result.candidate.loss,
                        f"{dev[role]:.2f}",
                        " ".join(f"{v:.2f}" for v in per_draw),
                        f"{s['mean']:.3f}",
                        f"{s['std']:.3f}",
                        f"{s['worst']:.3f}",
                        result.collapsed,
                        f"{d.mean:.3f}",
                        "" if d.low is None else f"{d.low:.3f}",
                        "" if d.high is None else f"{d.high:.3f}",
                        f"{seconds:.0f}",
                    ]
                )


if __name__ == "__main__":
    main()
