"""Search overhead: a tunedml search against the same trials trained one after another without Ray.

Four fixed configurations from ``search_spaces/dml.yaml`` (plain CCE, Proxy Anchor, SoftTriple,
SupCon; every searched key given, so nothing is sampled) run as a search of four trials, one at a
time with all CPUs and no scheduler (they are enqueued as Optuna points). Then each configuration
is trained in this process through the core's ``Trainer`` loop, once before the search and once
after (their mean is the bare time, so that a change in machine load hits both sides alike), with
the same data already tokenized and the same thread count. Both sides load the model once per
trial. The ratio (search wall time / sum of the bare times) is what Ray Tune, Optuna, the trial
processes and the object store add; Ray's start, paid once per driver, is shown apart.

    python benchmarks/bench_search.py [--data-dir DIR] [--k 8] [--epochs 3]
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
DEFAULT_DATA_DIR = os.environ.get("TUNEDML_DATA_DIR") or str(REPO.parent / "shared" / "data" / "senteval")
SPACE = REPO / "search_spaces" / "dml.yaml"
COMMON = {"loss.ce_weight": 1.0, "loss.dml_weight": 0.1, "train.lr": 5e-5, "train.proxy_lr": 1e-2, "model.pooling": "mean"}
CONFIGS = [
    {**COMMON, "loss.name": "none", "inference.mode": "head"},
    {**COMMON, "loss.name": "proxy_anchor", "loss.margin": 0.1, "loss.alpha": 32.0, "inference.mode": "mixed"},
    {**COMMON, "loss.name": "soft_triple", "loss.centers_per_class": 3, "loss.la": 20.0, "loss.gamma": 0.1,
     "inference.mode": "proxy"},
    {**COMMON, "loss.name": "supcon", "loss.temperature": 0.1, "inference.mode": "head"},
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    parser.add_argument("--dataset", default="sst2")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--k", type=int, default=8, help="examples per class (train and dev)")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()

    import ray
    import torch

    from tunedml.config import from_flat
    from tunedml.search import SearchOptions, init_ray, run_search
    from tunedml.space import load_space
    from tunedml.train import Trainer, draw_for, prepare_tokens

    base = {"data.dataset": args.dataset, "data.data_dir": os.path.abspath(args.data_dir), "data.k": args.k,
            "model.name": args.model, "train.epochs": args.epochs}
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

    before = [bare_seconds(c) for c in CONFIGS]
    start = time.perf_counter()
    init_ray(None, verbose=False)
    ray_start = time.perf_counter() - start
    assert int(ray.cluster_resources()["CPU"]) == cpus

    with tempfile.TemporaryDirectory() as storage:
        options = SearchOptions(trials=len(CONFIGS), scheduler="none", storage=storage, name="bench", points=CONFIGS)
        start = time.perf_counter()
        result = run_search(tokens, base, space, options)
        search = time.perf_counter() - start
        from ray.tune import ExperimentAnalysis

        saved = {t.trial_id: t.last_result for t in ExperimentAnalysis(result.path).trials}
    ray.shutdown()

    after = [bare_seconds(c) for c in CONFIGS]
    rows = []
    for trial, config, b, a in zip(result.trials, CONFIGS, before, after):
        assert trial.config["loss.name"] == config["loss.name"]  # the enqueued points ran in order
        last = saved[trial.trial_id]
        rows.append((trial, (b + a) / 2, last.get("time_total_s", float("nan")), last.get("threads"), b, a))

    bare_total = sum(r[1] for r in rows)
    cpu = platform.processor() or platform.machine()
    print(f"Search overhead: {args.dataset} k={args.k}, {args.model}, {args.epochs} epochs per trial, "
          f"{len(CONFIGS)} trials one at a time on {cpus} CPUs ({cpu}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads bare).\n")
    print("| trial | loss | status | threads in trial | trainable in the search (s) | bare Trainer (s): before, after, mean |")
    print("|---|---|---|---:|---:|---:|")
    for trial, bare, inside, threads, b, a in rows:
        print(f"| {trial.trial_id} | {trial.config['loss.name']} | {trial.status} | {threads} | {inside:.1f} | "
              f"{b:.1f}, {a:.1f}, {bare:.1f} |")
    print(f"| **all** | | | | {sum(r[2] for r in rows):.1f} | {bare_total:.1f} |\n")
    print("| measure | seconds |")
    print("|---|---:|")
    print(f"| Ray start (once per driver) | {ray_start:.1f} |")
    print(f"| search wall time (run_search) | {search:.1f} |")
    print(f"| of which outside the trainables (trial start, Tune, Optuna) | {search - sum(r[2] for r in rows):.1f} |")
    print(f"| sum of bare training times | {bare_total:.1f} |")
    print(f"| **ratio search / bare** | **{search / bare_total:.2f}** |")
    print(f"| ratio with Ray's start | {(search + ray_start) / bare_total:.2f} |")


if __name__ == "__main__":
    main()
