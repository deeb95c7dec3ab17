"""Search overhead: a tunedml search against the same trials trained one after another without Ray.

Four fixed configurations from ``search_spaces/dml.yaml`` (plain CCE, Proxy Anchor, SoftTriple,
SupCon; every searched key given, so nothing is sampled) run as a search of four trials, one at a
time with all CPUs and no scheduler (they are enqueued as Optuna points). The same configurations
are trained in this process through the core's ``Trainer`` loop ("bare"), with the same data
already tokenized and the same thread count; both sides load the model once per trial. Each round
trains the bare trials and then runs the search; the best (least disturbed) time of each over the
rounds is compared, as other load on the machine only ever adds time. The ratio (search wall time
/ sum of the bare times) is what Ray Tune, Optuna, the trial process and the object store add;
Ray's start, paid once per driver, is shown apart.

    python benchmarks/bench_search.py [--data-dir DIR] [--k 8] [--epochs 3] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SPACE = REPO / "search_spaces" / "dml.yaml"
COMMON = {
    "loss.ce_weight": 1.0,
    "loss.dml_weight": 0.1,
    "train.lr": 5e-5,
    "train.proxy_lr": 1e-2,
}
CONFIGS = [
    {**COMMON, "loss.name": "none", "inference.mode": "head"},
    {**COMMON, "loss.name": "proxy_anchor", "loss.margin": 0.1, "loss.alpha": 32.0, "inference.mode": "mixed"},
    {
        **COMMON,
        "loss.name": "soft_triple",
        "loss.centers_per_class": 3,
        "loss.la": 20.0,
        "loss.gamma": 0.1,
        "inference.mode": "proxy",
    },
    {**COMMON, "loss.name": "supcon", "loss.temperature": 0.1, "inference.mode": "head"},
]


class Clock:
    """A Tune callback noting when each trial starts and ends, to place the time outside the trials."""

    def __init__(self) -> None:
        from ray import tune

        class _Callback(tune.Callback):
            def on_trial_start(cb, iteration, trials, trial, **info):
                self.events.append(("start", time.perf_counter()))

            def on_trial_complete(cb, iteration, trials, trial, **info):
                self.events.append(("end", time.perf_counter()))

        self.callback = _Callback()
        self.events: list[tuple[str, float]] = []

    def split(self, start: float, stop: float) -> tuple[float, float, float]:
        """(to the first trial's start, between trials, after the last trial's end)."""
        starts = [t for kind, t in self.events if kind == "start"]
        ends = [t for kind, t in self.events if kind == "end"]
        between = sum(s - e for s, e in zip(starts[1:], ends[:-1]))
        return starts[0] - start, between, stop - ends[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir",
        default=None,
        help="SentEval folder (default: $TUNEDML_DATA_DIR, else the copy inside the package)",
    )
    parser.add_argument("--dataset", default="sst2")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--k", type=int, default=8, help="examples per class (train and dev)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--rounds", type=int, default=2, help="bare trials then a search, this many times; best of each"
    )
    args = parser.parse_args()

    import ray
    import torch
    from ray.tune import ExperimentAnalysis

    from tunedml.config import from_flat
    from tunedml.search import SearchOptions, init_ray, run_search
    from tunedml.space import load_space
    from tunedml.train import Trainer, draw_for, prepare_tokens

    base = {"data.dataset": args.dataset, "data.k": args.k, "model.name": args.model, "train.epochs": args.epochs}
    if args.data_dir:
        base["data.data_dir"] = os.path.abspath(args.data_dir)
    space = load_space(SPACE, base)
    space.check_against(base)
    tokens = prepare_tokens(from_flat({**base, **space.root.fixed}))
    cpus = len(os.sched_getaffinity(0))

    def bare_seconds(config: dict) -> float:
        cfg = from_flat({**base, "train.threads": cpus, **config}, source="bench")
        start = time.perf_counter()
        trainer = Trainer(cfg, tokens, draw_for(cfg, tokens))
        for _ in trainer.epochs():
            pass
        return time.perf_counter() - start

    start = time.perf_counter()
    init_ray(None, verbose=False)
    ray_start = time.perf_counter() - start
    if int(ray.cluster_resources()["CPU"]) != cpus:
        raise SystemExit(f"Ray sees {ray.cluster_resources()['CPU']} CPUs, this process {cpus}")

    bare: list[list[float]] = []  # [round][config]
    searches: list[tuple[float, list[float], list[int], tuple]] = []  # (wall, trainable s, threads, split)
    with tempfile.TemporaryDirectory() as storage:
        for r in range(args.rounds):
            bare.append([bare_seconds(c) for c in CONFIGS])
            options = SearchOptions(
                trials=len(CONFIGS), scheduler="none", storage=storage, name=f"bench{r}", points=CONFIGS
            )
            clock = Clock()
            start = time.perf_counter()
            result = run_search(tokens, base, space, options, callbacks=[clock.callback])
            stop = time.perf_counter()
            wall = stop - start
            if [t.config["loss.name"] for t in result.trials] != [c["loss.name"] for c in CONFIGS] or result.failures:
                raise SystemExit(f"the search did not run the four points: {result.to_dict()}")
            saved = {t.trial_id: t.last_result for t in ExperimentAnalysis(result.path).trials}
            last = [saved[t.trial_id] for t in result.trials]
            searches.append(
                (wall, [x["time_total_s"] for x in last], [x["threads"] for x in last], clock.split(start, stop))
            )
    ray.shutdown()

    best_bare = [min(b[i] for b in bare) for i in range(len(CONFIGS))]
    wall, inside, threads, (first, between, after) = min(searches)
    bare_total = sum(best_bare)
    cpu = platform.processor() or platform.machine()
    print(
        f"Search overhead: {args.dataset} k={args.k}, {args.model}, {args.epochs} epochs per trial, "
        f"{len(CONFIGS)} trials one at a time on {cpus} CPUs ({cpu}, torch {torch.__version__}); "
        f"best of {args.rounds} rounds.\n"
    )
    print("| trial | threads in the trial | trainable in the search (s) | bare Trainer (s) |")
    print("|---|---:|---:|---:|")
    for config, b, t, n in zip(CONFIGS, best_bare, inside, threads):
        print(f"| {config['loss.name']} | {n} | {t:.1f} | {b:.1f} |")
    print(f"| **all** | | {sum(inside):.1f} | {bare_total:.1f} |\n")
    print("| measure | seconds |")
    print("|---|---:|")
    print(f"| Ray start (once per driver) | {ray_start:.1f} |")
    print(f"| search wall time (`run_search`) | {wall:.1f} |")
    print(f"| of which outside the trainables | {wall - sum(inside):.1f} |")
    print(f"| ... until the first trial starts (Tune setup, trial process start, imports) | {first:.1f} |")
    print(f"| ... between trials ({len(CONFIGS) - 1} gaps) | {between:.1f} |")
    print(f"| ... after the last trial (Tune teardown, summary) | {after:.1f} |")
    print(
        f"| first trial's trainable minus its bare time (imports, first model load in a new process) | "
        f"{inside[0] - best_bare[0]:.1f} |"
    )
    print(f"| sum of bare training times | {bare_total:.1f} |")
    print(f"| **ratio search / bare** | **{wall / bare_total:.2f}** |")
    print(f"| ratio with Ray's start | {(wall + ray_start) / bare_total:.2f} |")


if __name__ == "__main__":
    main()
