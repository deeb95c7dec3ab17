"""`tunedml` command line: parses arguments and calls the package; no logic of its own.

Every user error (TunedMLError) becomes one line on stderr and exit code 2, raised before any
model is loaded or any trial starts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from typing import Any, Callable

from .errors import DataError, TunedMLError

Command = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, Command] = {}


def command(name: str) -> Callable[[Command], Command]:
    def register(fn: Command) -> Command:
        COMMANDS[name] = fn
        return fn
    return register


# ----------------------------------------------------------------- shared options

def add_config_options(p: argparse.ArgumentParser, dataset_help: str = "a task (tunedml datasets) or a data file/folder") -> None:
    p.add_argument("--dataset", help=dataset_help)
    p.add_argument("--data-dir", help="folder with <task>/<split>.jsonl (default: $TUNEDML_DATA_DIR)")
    p.add_argument("--model", help="minilm (embedded default), a hub id such as roberta-base, or a local folder")
    p.add_argument("--config", help="YAML run config (e.g. a best_config.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. data.k=16")


def add_output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.add_argument("-v", "--verbose", action="store_true", help="let library logs through")


def config_from_args(args: argparse.Namespace, dataset: str | None = None):
    """Defaults < --config < --dataset/--data-dir/--model < --set, all validated."""
    from .config import build_config
    from .data import check_dataset_name, resolve_data_dir

    extra: dict[str, Any] = {}
    if dataset or getattr(args, "dataset", None):
        extra["data.dataset"] = dataset or args.dataset
    data_dir = resolve_data_dir(getattr(args, "data_dir", None))
    if data_dir:
        if not os.path.isdir(data_dir):
            raise DataError(f"--data-dir {data_dir!r} is not a folder")
        extra["data.data_dir"] = os.path.abspath(data_dir)  # trials run in other directories
    if getattr(args, "model", None):
        extra["model.name"] = args.model
    cfg = build_config(getattr(args, "config", None), getattr(args, "set", []), extra)
    check_dataset_name(cfg.data.dataset)
    from .model import resolve_model

    resolve_model(cfg.model.name)
    return cfg


def quiet_libraries(verbose: bool) -> None:
    """Quiet by default: library warnings and progress bars only with --verbose."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if verbose:
        return
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    import logging

    for name in ("transformers", "datasets", "mlflow", "alembic", "ray", "optuna", "filelock", "urllib3"):
        logging.getLogger(name).setLevel(logging.ERROR)


def emit_json(obj: Any) -> None:
    print(json.dumps(obj, indent=None, default=str))


def fmt_scores(s: dict[str, float] | None) -> str:
    return "-" if not s else f"acc {s['accuracy']:.4f}  macro-F1 {s['macro_f1']:.4f}"


# ----------------------------------------------------------------- train, datasets, losses

@command("train")
def cmd_train(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    quiet_libraries(args.verbose)
    from .progress import Progress
    from .train import run_training

    progress = Progress(cfg.train.epochs, "epoch")

    def on_epoch(e) -> None:
        parts = ", ".join(f"{k} {v:.3f}" for k, v in e.loss_parts.items())
        progress.step(f"loss {e.train_loss:.4f} ({parts})  dev {fmt_scores(e.dev)}  {e.seconds:.1f}s")

    result = run_training(cfg, callback=on_epoch)
    summary = {"dataset": cfg.data.dataset, "model": cfg.model.name, "loss": cfg.loss.name,
               "inference": cfg.inference.mode, "dev": result.dev, "test": result.test,
               "seconds": round(result.seconds, 2)}
    if args.json:
        emit_json(summary)
    else:
        print(f"{cfg.data.dataset}  loss={cfg.loss.name}  model={cfg.model.name}  inference={cfg.inference.mode}")
        print(f"  dev   {fmt_scores(result.dev)}")
        print(f"  test  {fmt_scores(result.test)}")
    return 0


@command("datasets")
def cmd_datasets(args: argparse.Namespace) -> int:
    from .data import TASKS

    rows = [{"name": t.name, "classes": list(t.labels), "official_test": t.has_test, "description": t.description}
            for t in TASKS.values()]
    if args.json:
        emit_json(rows)
        return 0
    for r in rows:
        test = "official test" if r["official_test"] else "hold-out test"
        print(f"{r['name']:<6} {len(r['classes'])} classes ({', '.join(r['classes'])}); {test}; {r['description']}")
    print("Or pass a CSV/JSONL/Parquet file or folder as --dataset (set data.text_column / data.label_column).")
    return 0


@command("losses")
def cmd_losses(args: argparse.Namespace) -> int:
    from .losses import LOSSES, NO_DML

    rows = [{"name": NO_DML, "proxies": False, "summary": "plain cross-entropy (the CCE baseline)", "hyperparameters": {}}]
    rows += [{"name": s.name, "proxies": s.has_proxies, "summary": s.summary,
              "hyperparameters": {h.name: {"default": h.default, "valid": h.describe()} for h in s.hyperparameters}}
             for s in LOSSES.values()]
    if args.json:
        emit_json(rows)
        return 0
    for r in rows:
        print(f"{r['name']:<19} {'proxies ' if r['proxies'] else ''}{r['summary']}")
        for name, h in r["hyperparameters"].items():
            print(f"    loss.{name:<18} default {h['default']!s:<6} {h['valid']}")
    print("All losses: loss.ce_weight, loss.dml_weight (total = ce_weight*CCE + dml_weight*DML).")
    return 0


# ----------------------------------------------------------------- search

def search_datasets(value: str | None) -> list[str]:
    from .data import TASKS

    if not value:
        return ["sst2"]
    return list(TASKS) if value == "all" else [v.strip() for v in value.split(",") if v.strip()]


def search_options(args: argparse.Namespace):
    from .search import SearchOptions

    options = SearchOptions(
        trials=args.trials, concurrency=args.concurrency, cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial, scheduler=args.scheduler, metric=args.metric, repeats=args.repeats,
        time_budget_s=args.time_budget, storage=args.storage, name=args.name, resume=args.resume,
        address=args.address, seed=args.seed, verbose=args.verbose)
    options.validate()
    return options


def prepare_search(args: argparse.Namespace, dataset: str):
    """Validate everything for one dataset's search: (base keys, space, driver config)."""
    from .config import explicit_keys, from_flat
    from .space import load_space

    cfg = config_from_args(args, dataset=dataset)
    flat = cfg.to_flat()
    extra = {"data.dataset": dataset, "data.data_dir": cfg.data.data_dir, "model.name": cfg.model.name}
    keys = explicit_keys(args.config, args.set, {k: v for k, v in extra.items() if v is not None})
    base = {k: flat[k] for k in keys if k in flat}
    space = load_space(args.space, base)
    space.check_against(base)
    return base, space, from_flat({**base, **space.root.fixed}, source=args.space)


@command("search")
def cmd_search(args: argparse.Namespace) -> int:
    options = search_options(args)
    datasets = search_datasets(args.dataset)
    prepared = [(ds, *prepare_search(args, ds)) for ds in datasets]  # all validated before any work
    quiet_libraries(args.verbose)
    from .search import run_search
    from .train import prepare_tokens

    summaries = []
    for dataset, base, space, driver_cfg in prepared:
        print(f"search {dataset} over {space.path}: {options.trials} trials, objective dev_{options.metric}",
              file=sys.stderr, flush=True)
        tokens = prepare_tokens(driver_cfg)
        result = run_search(tokens, base, space, options)
        summaries.append(result.to_dict())
        if not args.json:
            print_search_result(result)
    if args.json:
        emit_json(summaries if len(summaries) > 1 else summaries[0])
    return 0


def print_search_result(result) -> None:
    import yaml

    finished = sum(t.status == "FINISHED" for t in result.trials)
    killed = sum(t.status == "KILLED" for t in result.trials)
    print(f"{result.dataset}: {len(result.trials)} trials ({finished} finished, {killed} stopped early, "
          f"{len(result.failures)} failed) in {result.seconds:.0f}s; results in {result.path}")
    for t in result.failures:
        print(f"  failed {t.trial_id}: {t.error}")
    if result.best is None:
        print("  no trial produced a score")
        return
    print(f"  best {result.objective} {result.best.score:.4f} (trial {result.best.trial_id})")
    searched = yaml.safe_dump(result.best.config, sort_keys=True).strip()
    print("  best configuration:\n    " + searched.replace("\n", "\n    "))


def add_search_parser(sub) -> None:
    p = sub.add_parser("search", help="search loss configurations with Optuna TPE on Ray Tune")
    add_config_options(p, dataset_help="task(s): sst2, a comma list such as sst2,mr,cr, all, or a data file/folder")
    p.add_argument("--space", required=True, help="search space YAML (see search_spaces/)")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--concurrency", type=int, default=1, help="trials at a time")
    p.add_argument("--cpus-per-trial", type=float, default=None, help="default: all CPUs / concurrency")
    p.add_argument("--gpus-per-trial", type=float, default=0.0, help="fractions pack trials on a GPU, e.g. 0.25")
    p.add_argument("--scheduler", default="asha", help="asha (default), hyperband or none")
    p.add_argument("--metric", default="accuracy", help="dev metric to maximise: accuracy or macro_f1")
    p.add_argument("--repeats", type=int, default=1, help="few-shot draws (and seeds) averaged per trial")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS")
    p.add_argument("--storage", default=None, help="results folder or any Ray storage_path (default ./tunedml_results)")
    p.add_argument("--name", default=None, help="experiment name (default <dataset>-<space>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted search (latest, or --name)")
    p.add_argument("--address", default=None, help="join a Ray cluster: auto or ray://host:port")
    p.add_argument("--seed", type=int, default=0, help="TPE sampler seed")
    add_output_options(p)


# ----------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tunedml", description=__doc__.splitlines()[0])
    from . import __version__

    parser.add_argument("--version", action="version", version=f"tunedml {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="fine-tune once with a config; print dev and test scores")
    add_config_options(p)
    add_output_options(p)

    for name, text in (("datasets", "list the registered datasets"), ("losses", "list losses with hyperparameters and ranges")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--json", action="store_true")

    add_search_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except TunedMLError as e:
        print(f"tunedml {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tunedml {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
