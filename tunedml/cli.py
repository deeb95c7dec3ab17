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

from .checks import check_blank_options, port
from .errors import ConfigError, DataError, TunedMLError

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
    p.add_argument("--data-dir", help="folder with <task>/<split>.jsonl (default: $TUNEDML_DATA_DIR, else the SentEval copy inside the package)")
    p.add_argument("--model", help="minilm (embedded default), a hub id such as roberta-base, or a local folder")
    p.add_argument("--config", help="YAML run config (e.g. a best_config.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. data.k=16")


def add_output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.add_argument("-v", "--verbose", action="store_true", help="let library logs through")


def named_keys(args: argparse.Namespace) -> dict[str, Any]:
    """--dataset, --data-dir and --model as flat config keys (the data folder made absolute)."""
    from .data import resolve_data_dir

    extra: dict[str, Any] = {}
    if getattr(args, "dataset", None):
        extra["data.dataset"] = args.dataset
    data_dir = resolve_data_dir(getattr(args, "data_dir", None))
    if data_dir:
        if not os.path.isdir(data_dir):
            raise DataError(f"--data-dir {data_dir!r} is not a folder")
        extra["data.data_dir"] = os.path.abspath(data_dir)  # trials run in other directories
    if getattr(args, "model", None):
        extra["model.name"] = args.model
    return extra


def config_from_args(args: argparse.Namespace, dataset: str | None = None):
    """Defaults < --config < --dataset/--data-dir/--model < --set, all validated."""
    from .config import build_config
    from .data import check_dataset_name

    extra = named_keys(args)
    if dataset:
        extra["data.dataset"] = dataset
    cfg = build_config(getattr(args, "config", None), getattr(args, "set", []), extra)
    check_dataset_name(cfg.data.dataset)
    from .checks import check_model, check_model_fits

    check_model(cfg.model.name)  # its config and tokenizer load, before any data or training
    check_model_fits(cfg.model.name, cfg.model.reinit_layers, cfg.data.max_length)
    return cfg


def quiet_libraries(verbose: bool) -> None:
    """Quiet by default: library warnings and progress bars only with --verbose."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if verbose:
        return
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")  # mlflow resets its logger's level on import
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
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
    from .config import check_used, explicit_sources

    cfg = config_from_args(args)
    check_used(cfg, explicit_sources(args.config, args.set, named_keys(args)))  # nothing given is dropped
    quiet_libraries(args.verbose)
    from .progress import Progress
    from .train import Trainer, draw_for, prepare_tokens

    tokens = prepare_tokens(cfg)
    trainer = Trainer(cfg, tokens, draw_for(cfg, tokens))
    progress = Progress(len(trainer.evaluation_steps()), "eval")

    def on_eval(e) -> None:
        parts = ", ".join(f"{k} {v:.3f}" for k, v in e.loss_parts.items())
        stage = f"  stage {e.stage}" if trainer.plan.two_stage else ""
        alone = (f"  without positives: {e.batches_without_positives} batches, {e.examples_without_positive} examples"
                 if cfg.loss.name != "none" else "")
        progress.step(f"step {e.step}/{trainer.total_steps} (epoch {e.epoch:.1f}){stage}  loss {e.train_loss:.4f} "
                      f"({parts}){alone}  dev {fmt_scores(e.dev)}  {e.seconds:.1f}s")

    result = trainer.fit(on_eval)
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
              "hyperparameters": {h.name: {"default": h.default, "valid": h.describe(), "help": h.help}
                                  for h in s.hyperparameters}}
             for s in LOSSES.values()]
    if args.json:
        emit_json(rows)
        return 0
    for r in rows:
        print(f"{r['name']:<19} {'proxies ' if r['proxies'] else ''}{r['summary']}")
        for name, h in r["hyperparameters"].items():
            print(f"    loss.{name:<18} default {h['default']!s:<6} {h['valid']}" + (f"  ({h['help']})" if h["help"] else ""))
    print("All losses: loss.ce_weight, loss.dml_weight (total = ce_weight*CCE + dml_weight*DML).")
    print_weightings()
    return 0


@command("keys")
def cmd_keys(args: argparse.Namespace) -> int:
    """Every key of `tunedml train --set` (and of configs and spaces) with its default, valid values
    and what it does; the loss hyperparameters are listed by `tunedml losses`."""
    from .config import FIELDS

    rows = [{"key": k, "default": h.default, "valid": h.describe(), "help": h.help} for k, h in FIELDS.items()]
    if args.json:
        emit_json(rows)
        return 0
    for r in rows:
        print(f"{r['key']:<26} default {r['default']!s:<8} {r['valid']}" + (f"  ({r['help']})" if r["help"] else ""))
    print("Loss hyperparameters (loss.<name>, loss.<loss>.<name>): tunedml losses")
    return 0


def print_weightings() -> None:
    from .losses import WEIGHTINGS

    print("Several DML losses: loss.name=proxy_anchor+supcon, each with loss.<loss>.<hyperparameter> and "
          "loss.<loss>.weight (default 1).")
    print("How CCE and the DML terms combine:")
    for name, summary in WEIGHTINGS.items():
        print(f"    loss.weighting={name:<12} {summary}")


# ----------------------------------------------------------------- search

def search_datasets(value: str | None) -> list[str]:
    from .data import TASKS

    if not value:
        return ["sst2"]
    names = [v.strip() for v in value.split(",")]
    if not all(names):
        raise ConfigError(f"--dataset {value!r}: an empty name in the list; give names separated by commas, "
                          "e.g. sst2,mr")
    return list(TASKS) if value == "all" else names


def search_options(args: argparse.Namespace):
    from .search import SearchOptions, parse_per_option

    options = SearchOptions(
        trials=args.trials, concurrency=args.concurrency, cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial, scheduler=args.scheduler, metric=args.metric, repeats=args.repeats,
        time_budget_s=args.time_budget, storage=args.storage, name=args.name, resume=args.resume,
        address=args.address, max_failures=args.max_failures, seed=args.seed, verbose=args.verbose,
        rescore=args.rescore, rescore_draws=args.rescore_draws)
    options.per_option_key, options.per_option_start = parse_per_option(args.start_per_option)
    options.validate()
    return options


def prepare_search(args: argparse.Namespace, dataset: str):
    """Validate everything for one dataset's search: (base keys, space, driver config)."""
    from .config import explicit_keys, from_flat
    from .space import load_space

    cfg = config_from_args(args, dataset=dataset)
    flat = cfg.to_flat()
    extra = {"data.dataset": dataset, "data.data_dir": cfg.data.data_dir, "model.name": args.model}  # model: only if given
    keys = explicit_keys(args.config, args.set, {k: v for k, v in extra.items() if v is not None})
    base = {k: flat[k] for k in keys if k in flat}
    space = load_space(args.space, base)
    space.check_against(base, search_datasets(args.dataset))
    return base, space, from_flat({**base, **space.root.fixed}, source=args.space)


@command("search")
def cmd_search(args: argparse.Namespace) -> int:
    options = search_options(args)
    datasets = search_datasets(args.dataset)
    prepared = [(ds, *prepare_search(args, ds)) for ds in datasets]  # all validated before any work
    quiet_libraries(args.verbose)
    from .checks import check_search
    from .tracking import check_tracking, resolve_tracking_uri
    from .tracking.search_runs import SearchTracker

    uri = resolve_tracking_uri(args.tracking_uri)
    check_search(prepared, options, uri)  # places, names, models, draws, resources: before MLflow and Ray
    check_tracking(uri)  # an unreachable or unwritable store stops here, before Ray starts
    from .search import run_search
    from .train import prepare_tokens

    summaries = []
    for dataset, base, space, driver_cfg in prepared:
        print(f"search {dataset} over {space.path}: {options.trials} trials, objective dev_{options.metric}",
              file=sys.stderr, flush=True)
        tokens = prepare_tokens(driver_cfg)  # before the parent run opens: nothing recorded for a failure here
        tracker = SearchTracker.open(uri, driver_cfg, base, space, options)
        with tracker:
            result = run_search(tokens, base, space, tracker.options, callbacks=[tracker.callback()], state=tracker.state)
            tracker.finish(result)
        summaries.append({**result.to_dict(), "mlflow": tracker.describe()})
        if not args.json:
            print_search_result(result)
            print(f"  recorded in MLflow: run {tracker.run_id} in experiment {tracker.describe()['experiment']} at {uri}")
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
    for line in result.option_lines():
        print(line)
    for line in rescore_lines(result):
        print(line)
    print(f"  best {result.objective} {result.best.score:.4f} (trial {result.best.trial_id})"
          + (" chosen on re-scored dev" if result.rescored else ""))
    searched = yaml.safe_dump(result.best.config, sort_keys=True).strip()
    print("  best configuration:\n    " + searched.replace("\n", "\n    "))


def rescore_lines(result) -> list[str]:
    """The re-scored leaders: search score, then mean ± std over the re-scoring draws; the choice marked."""
    if not result.rescored:
        return []
    m = result.metric
    lines = [f"  re-scored the {len(result.rescored)} leading trials on fresh draws ({result.objective}: "
             "search score -> mean ± std over the draws):"]
    for r in result.rescored:
        mark = "  <- chosen" if r.trial_id == result.best.trial_id else ""
        lines.append(f"    {r.trial_id}  {r.search_score:.4f} -> {r.mean(m):.4f} ± {r.std(m):.4f} "
                     f"({len(r.draws)} draws){mark}")
    return lines


def add_rescore_options(p: argparse.ArgumentParser, default: int) -> None:
    p.add_argument("--rescore", type=int, default=default, metavar="N",
                   help=f"after the search, train the N best trials again on --rescore-draws fresh draws and choose "
                        f"the best mean dev score among them (a sturdier choice than the best single score; "
                        f"default {default}{', off' if not default else ''})")
    p.add_argument("--rescore-draws", type=int, default=3, metavar="M",
                   help="draws per re-scored trial, apart from the search's and retrain's (default 3)")


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
    p.add_argument("--max-failures", type=int, default=None, metavar="N",
                   help="restart a failed trial (e.g. lost with its node) up to N times; default 1 with --address, else 0")
    p.add_argument("--seed", type=int, default=0, help="TPE sampler seed")
    add_rescore_options(p, default=0)
    p.add_argument("--start-per-option", default="1", metavar="[KEY=]N",
                   help="start with N trials of every option of loss.name (or of KEY, a top-level choice) "
                        "before TPE proposes; 0 turns it off (default 1)")
    add_tracking_option(p)
    add_output_options(p)


# ----------------------------------------------------------------- tracking: best, ui

def add_filter_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--filter", action="append", default=[], metavar="NAME=VALUE",
                   help="only recorded searches with this setting, e.g. k=16, model=minilm, repeats=3, rescore=0 "
                        "(searches that differ in protocol, k, model, metric, repeats or re-scoring are never ranked together)")


def add_tracking_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow store: sqlite:///file.db or http://host:port (default: $MLFLOW_TRACKING_URI, else ./mlflow.db)")


@command("best")
def cmd_best(args: argparse.Namespace) -> int:
    quiet_libraries(verbose=False)
    from .checks import check_tracking_store
    from .tracking import find_best, resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    check_tracking_store(uri, must_exist=True)  # reading creates no database
    from .tracking.searches import parse_filters

    best = find_best(uri, args.dataset, space=args.space, metric=args.metric, filters=parse_filters(args.filter))
    if args.json:
        emit_json(best.to_dict())
        return 0
    print(f"# best {best.objective} {best.score:.4f} on {best.dataset}: search {best.search} (space {best.space}), "
          f"MLflow run {best.run_id} at {best.tracking_uri}")
    print(best.to_yaml(), end="")
    return 0


@command("ui")
def cmd_ui(args: argparse.Namespace) -> int:
    from .checks import check_tracking_store
    from .tracking import check_tracking, resolve_tracking_uri, serve_ui

    uri = resolve_tracking_uri(args.tracking_uri)
    check_tracking_store(uri)
    check_tracking(uri)
    return serve_ui(uri, args.port)


def add_tracking_parsers(sub) -> None:
    p = sub.add_parser("best", help="the best recorded configuration for a dataset, as YAML (tunedml train --config)")
    p.add_argument("--dataset", required=True, help="the dataset searched (a task name or the data file/folder)")
    p.add_argument("--space", default=None, help="only searches over this space (name or file)")
    p.add_argument("--metric", default="accuracy", help="rank searches by their best dev accuracy or macro_f1")
    add_filter_option(p)
    add_tracking_option(p)
    p.add_argument("--json", action="store_true", help="print the record (run, score, flat config) as JSON")

    p = sub.add_parser("ui", help="the MLflow UI on the tracking store, at http://127.0.0.1:PORT")
    p.add_argument("--port", type=port, default=5000, help="1..65535 (default 5000)")
    add_tracking_option(p)


# ----------------------------------------------------------------- final evaluation: retrain, report

def override_args(args: argparse.Namespace) -> dict[str, Any]:
    """--data-dir, --model and --set as flat overrides for both configurations (validated when
    applied); --dataset is not one: it also says which recorded searches to take."""
    from .config import parse_set_args

    extra = {k: v for k, v in named_keys(args).items() if k != "data.dataset"}
    return {**extra, **parse_set_args(args.set)}


@command("retrain")
def cmd_retrain(args: argparse.Namespace) -> int:
    from .retrain import RetrainOptions, Selection, draw_configs, select

    options = RetrainOptions(seeds=args.seeds, parallel=args.parallel, cpus_per_draw=args.cpus_per_draw,
                             gpus_per_draw=args.gpus_per_draw, address=args.address, interval=args.interval,
                             bootstrap=args.bootstrap, keep_model=args.save_model is not None, verbose=args.verbose)
    options.validate()
    from .tracking.searches import parse_filters

    selection = Selection(args.dataset, args.run_id, args.config, args.baseline, override_args(args),
                          filters=parse_filters(args.filter))
    selection.check()
    quiet_libraries(args.verbose)
    from .tracking import check_tracking, log_final, resolve_tracking_uri

    selection.tracking_uri = resolve_tracking_uri(args.tracking_uri)
    uri = selection.tracking_uri
    from .checks import check_retrain, check_retrain_start

    check_retrain_start(options, uri, args.save_model)  # places, address, resources: before MLflow
    check_tracking(uri)
    best, baseline = select(selection)
    check_retrain(best, baseline, options)  # models and draws of both: before any training
    from .progress import Progress
    from .report import comparison_lines, describe_candidate, draw_line
    from .retrain import retrain, save_top_model
    from .train import prepare_tokens

    draws = len(draw_configs(best.run_config, args.seeds))
    print(f"retrain {best.config['data.dataset']}: {draws} draws of best = {describe_candidate(best)} and "
          f"baseline = {describe_candidate(baseline)}", file=sys.stderr, flush=True)
    tokens = prepare_tokens(best.run_config)
    progress = Progress(2 * draws, "draw")
    comparison = retrain(tokens, best, baseline, options, on_draw=lambda job, r: progress.step(draw_line(job, r)))
    model_dir = save_top_model(comparison, args.save_model) if args.save_model is not None else None
    run_ids = log_final(uri, comparison, model_dir)
    if args.json:
        emit_json({**comparison.to_dict(), "mlflow": {"tracking_uri": uri, "runs": run_ids},
                   "model": str(model_dir) if model_dir else None})
        return 0
    print("\n".join(comparison_lines(comparison)))
    print(f"  recorded in MLflow: run {run_ids['best']} (best), {run_ids['baseline']} (baseline) at {uri}")
    if model_dir:
        print(f"  model of draw {comparison.best_draw} (best dev accuracy) saved to {model_dir} "
              "(tunedml.retrain.load_model)")
    elif args.save_model is not None:
        print("  no model saved: every draw of the best configuration failed")
    return 0


@command("report")
def cmd_report(args: argparse.Namespace) -> int:
    from .metrics import check_metric
    from .report import check_projection, markdown, rows, write_report

    check_metric(args.metric)
    check_projection(args.projection)
    quiet_libraries(args.verbose)
    from .tracking import check_tracking, final_comparisons, log_report, resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    from .checks import check_output_folder, check_tracking_store

    check_tracking_store(uri, must_exist=True)  # nothing recorded: nothing to report, no database created
    check_output_folder(args.out, "--out")
    check_tracking(uri)
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()] if args.datasets else None
    comparisons = final_comparisons(uri, datasets)
    files = write_report(comparisons, args.out, args.metric, args.projection)
    run_id = log_report(uri, args.out, comparisons)
    if args.json:
        emit_json({"rows": [r.__dict__ for r in rows(comparisons, args.metric)], "files": [str(f) for f in files],
                   "mlflow": {"tracking_uri": uri, "run_id": run_id}})
        return 0
    print(markdown(comparisons, args.metric), end="")
    print(f"\nwrote {', '.join(str(f) for f in files)}")
    print(f"logged to MLflow: run {run_id} in experiment tunedml/report at {uri}")
    return 0


def add_final_parsers(sub) -> None:
    p = sub.add_parser("retrain", help="retrain the best configuration and the CCE baseline on fresh draws; compare")
    add_config_options(p, dataset_help="the dataset (default sst2, or the one of --config / --run-id)")
    p.add_argument("--run-id", default=None, help="MLflow run to retrain: a search (its best configuration) or a trial")
    p.add_argument("--seeds", type=int, default=None,
                   help="kshot: fresh draws (and seeds), default 5; kfold: seeds per fold, default 1 (every fold)")
    p.add_argument("--baseline", default=None,
                   help="a YAML run config or space file (e.g. search_spaces/cce.yaml), a run id, or 'defaults' "
                        "for untuned CCE (default: the best recorded CCE-only search)")
    p.add_argument("--parallel", type=int, default=None, help="draws at a time (default: as many as the CPUs allow; "
                                                              "1 trains them one by one in this process)")
    p.add_argument("--cpus-per-draw", type=float, default=None, help="CPUs per draw (default: all CPUs / parallel draws)")
    p.add_argument("--gpus-per-draw", type=float, default=None,
                   help="GPUs per draw; fractions share a GPU (default: 1 where this machine has a GPU, else 0)")
    p.add_argument("--address", default=None, help="run the draws on a Ray cluster: auto or ray://host:port")
    p.add_argument("--interval", default="t",
                   help="interval of the paired difference: t (Student's t, default) or bootstrap (percentile)")
    p.add_argument("--bootstrap", type=int, default=10_000, help="bootstrap resamples (with --interval bootstrap)")
    add_filter_option(p)
    p.add_argument("--save-model", nargs="?", const="", default=None, metavar="DIR",
                   help="save the model of the best configuration's draw with the best dev score to DIR "
                        "(default tunedml_models/<dataset>-<loss>-<time>) and to its MLflow run")
    add_tracking_option(p)
    add_output_options(p)

    p = sub.add_parser("report", help="the results table over datasets and its plots, from the final runs in MLflow")
    p.add_argument("--datasets", default=None, help="comma list, e.g. sst2,mr (default: every dataset with a final run)")
    p.add_argument("--out", default="report", help="output folder (default report/)")
    p.add_argument("--metric", default="accuracy", help="the table's metric: accuracy or macro_f1 (the CSV has both)")
    p.add_argument("--projection", default="pca", help="2-D projection of the embeddings: pca or tsne")
    add_tracking_option(p)
    add_output_options(p)


# ----------------------------------------------------------------- study

def run_command(argv: list[str]) -> int:
    """One tunedml command from an argument list, through this parser (the study's stages)."""
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command](args)


def check_search(argv: list[str]) -> None:
    """Validate a search's arguments as `tunedml search` does, without running it."""
    args = build_parser().parse_args(argv)
    search_options(args)
    for dataset in search_datasets(args.dataset):
        prepare_search(args, dataset)


@command("study")
def cmd_study(args: argparse.Namespace) -> int:
    from .data import resolve_data_dir
    from .study import Commands, Settings, run_study

    data_dir = resolve_data_dir(args.data_dir)
    if data_dir and not os.path.isdir(data_dir):
        raise DataError(f"--data-dir {data_dir!r} is not a folder")
    settings = Settings(
        datasets=tuple(search_datasets(args.datasets)), trials=args.trials, seeds=args.seeds, repeats=args.repeats,
        rescore=args.rescore, rescore_draws=args.rescore_draws,
        space=args.space or "", sets=tuple(args.set), model=args.model,
        data_dir=os.path.abspath(data_dir) if data_dir else None,
        scheduler=args.scheduler, seed=args.seed, concurrency=args.concurrency, cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial, address=args.address, storage=args.storage or "", out=args.out,
        resume=args.resume, verbose=args.verbose)
    settings.validate()
    quiet_libraries(args.verbose)
    from dataclasses import replace

    from .tracking import check_tracking, resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    return run_study(replace(settings, tracking_uri=uri), Commands(run=run_command, check=check_search),
                     check_store=lambda: check_tracking(uri))


def add_study_parser(sub) -> None:
    p = sub.add_parser("study", help="the whole pipeline per dataset: CCE and DML searches, retrain, report; resumable")
    p.add_argument("--datasets", required=True, help="tasks: sst2, a comma list such as sst2,mr,cr, or all")
    p.add_argument("--trials", type=int, default=20, help="trials of each search (CCE and DML alike; default 20)")
    p.add_argument("--seeds", type=int, default=5, help="fresh draws of the final retrain (default 5)")
    p.add_argument("--repeats", type=int, default=3,
                   help="few-shot draws averaged per trial (default 3: a trial costs about 3x the time of one training)")
    add_rescore_options(p, default=3)
    p.add_argument("--space", default=None, help="the DML search space (default: the shipped dml.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="fix a config key in both searches and the retrain, e.g. data.k=16 (a key a space searches "
                        "is then fixed)")
    p.add_argument("--model", help="minilm (embedded default), a hub id such as roberta-base, or a local folder")
    p.add_argument("--data-dir", help="folder with <task>/<split>.jsonl (default: $TUNEDML_DATA_DIR, else the "
                                      "SentEval copy inside the package)")
    p.add_argument("--scheduler", default="asha", help="early stopping in the searches: asha (default), hyperband or none")
    p.add_argument("--seed", type=int, default=0, help="TPE sampler seed of both searches")
    p.add_argument("--concurrency", type=int, default=1, help="trials at a time")
    p.add_argument("--cpus-per-trial", type=float, default=None, help="CPUs per trial and per retrain draw")
    p.add_argument("--gpus-per-trial", type=float, default=None, help="GPUs per trial and per retrain draw, e.g. 0.25")
    p.add_argument("--address", default=None, help="join a Ray cluster: auto or ray://host:port")
    p.add_argument("--storage", default=None, help="the searches' results folder or Ray storage_path (default ./tunedml_results)")
    p.add_argument("--out", default="report", help="the report's folder (default report/)")
    p.add_argument("--resume", action="store_true",
                   help="continue the study with these settings (the same command without it does too, or starts it)")
    add_tracking_option(p)
    p.add_argument("-v", "--verbose", action="store_true", help="let library logs through")


# ----------------------------------------------------------------- parser

class Parser(argparse.ArgumentParser):
    """argparse with the project's form of errors: one line on stderr, exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="tunedml", description=__doc__.splitlines()[0])
    from . import __version__

    parser.add_argument("--version", action="version", version=f"tunedml {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="fine-tune once with a config; print dev and test scores")
    add_config_options(p)
    add_output_options(p)

    for name, text in (("datasets", "list the registered datasets"), ("losses", "list losses with hyperparameters and ranges"),
                       ("keys", "list every config key with its default, valid values and what it does")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--json", action="store_true")

    add_search_parser(sub)
    add_tracking_parsers(sub)
    add_final_parsers(sub)
    add_study_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from . import interrupt

    parser = build_parser()
    args = parser.parse_args(argv)
    interrupt.sigterm_as_ctrl_c()  # a scheduler's or `timeout`'s SIGTERM stops a command as Ctrl-C does
    try:
        check_blank_options(args)
        return COMMANDS[args.command](args)
    except TunedMLError as e:
        print(f"tunedml {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # a search says how to resume
        print(f"tunedml {args.command}: {interrupt.describe()}{f': {e}' if str(e) else ''}", file=sys.stderr)
        return interrupt.exit_code()


if __name__ == "__main__":
    sys.exit(main())
