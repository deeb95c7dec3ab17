"""`tunedml` command line: parses arguments, calls the package's operations, prints what they return.

Exit codes: 0 success; 2 bad input (every TunedMLError: one line on stderr, raised before any
model is loaded or any trial starts); 1 a run that produced nothing (no trial of a search scored,
every draw of one side of a retrain failed, a stage of a study failed); 130 Ctrl-C, 143 SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

from .checks import check_blank_options, concurrency, gpus, port
from .choices import AUTO, INTERVALS, PROJECTIONS, SCHEDULERS
from .errors import RunFailed, TunedMLError, did_you_mean
from .metrics import METRICS

Command = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, Command] = {}
STUDY_RESCORE = 3  # leading trials a study re-scores by default (at most its --trials)
DATASETS_HELP = "tasks: sst2, a comma list such as sst2,mr,cr, or all (every registered task)"


def command(name: str) -> Callable[[Command], Command]:
    def register(fn: Command) -> Command:
        COMMANDS[name] = fn
        return fn

    return register


# ----------------------------------------------------------------- output


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
    for name in ("transformers", "datasets", "mlflow", "alembic", "ray", "optuna", "filelock", "urllib3"):
        logging.getLogger(name).setLevel(logging.ERROR)


class Lines(logging.Handler):
    """The package's INFO messages as plain lines on stderr (looked up when written: a test's or
    a study's redirection applies)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr, flush=True)


def show_messages() -> None:
    logger = logging.getLogger("tunedml")
    logger.setLevel(logging.INFO)
    if not any(isinstance(h, Lines) for h in logger.handlers):
        logger.addHandler(Lines())


@contextlib.contextmanager
def hidden_messages() -> Iterator[None]:
    """The package's INFO messages held back (a study checking its searches says nothing per search)."""
    logger = logging.getLogger("tunedml")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def emit_json(obj: Any) -> None:
    print(json.dumps(obj, indent=None, default=str))


def fmt_scores(s: dict[str, float] | None) -> str:
    from .api import fmt_scores as scores

    return scores(s)


# ----------------------------------------------------------------- shared options


def add_run_options(
    p: argparse.ArgumentParser,
    datasets: bool = False,
    dataset_help: str = "a task (tunedml datasets) or a data file/folder",
) -> None:
    """--dataset (one) or --datasets (several), and the options every run config takes."""
    if datasets:
        p.add_argument("--datasets", default="sst2", help=DATASETS_HELP + ", or a data file/folder (default sst2)")
    else:
        p.add_argument("--dataset", help=dataset_help)
    p.add_argument(
        "--data-dir",
        help="folder with <task>/<split>.jsonl (default: $TUNEDML_DATA_DIR, else the SentEval copy inside the package)",
    )
    p.add_argument("--model", help="minilm (embedded default), a hub id such as roberta-base, or a local folder")
    p.add_argument("--config", help="YAML run config (e.g. a best_config.yaml)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. data.k=16"
    )


def add_output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.add_argument("-v", "--verbose", action="store_true", help="let library logs through")


def add_tracking_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow store: sqlite:///file.db or http://host:port (default: $MLFLOW_TRACKING_URI, else ./mlflow.db)",
    )


def add_dry_run(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--dry-run",
        action="store_true",
        help=f"run every check and say what would run, then stop: no {what}, nothing recorded",
    )


def add_gpus(p: argparse.ArgumentParser, option: str, unit: str, extra: str = "") -> None:
    p.add_argument(
        option,
        type=gpus,
        default=AUTO,
        metavar="auto|N",
        help=f"GPUs per {unit}; a share below 1 packs {unit}s on a GPU, e.g. 0.25; auto (default): 1 where "
        f"the machine or cluster has GPUs, else 0, a share where more {unit}s run at once than there "
        f"are GPUs{extra}",
    )


# ----------------------------------------------------------------- train, datasets, losses, keys


@command("train")
def cmd_train(args: argparse.Namespace) -> int:
    quiet_libraries(args.verbose)
    from . import api

    cfg = api.run_config(args.config, dataset=args.dataset, model=args.model, data_dir=args.data_dir, sets=args.set)
    result = api.fit(cfg, progress=True)
    summary = {
        "dataset": cfg.data.dataset,
        "model": cfg.model.name,
        "loss": cfg.loss.name,
        "inference": cfg.inference.mode,
        "dev": result.dev,
        "test": result.test,
        "seconds": round(result.seconds, 2),
    }
    if args.json:
        emit_json(summary)
        return 0
    print(f"{cfg.data.dataset}  loss={cfg.loss.name}  model={cfg.model.name}  inference={cfg.inference.mode}")
    print(f"  dev   {fmt_scores(result.dev)}")
    print(f"  test  {fmt_scores(result.test)}")
    return 0


@command("datasets")
def cmd_datasets(args: argparse.Namespace) -> int:
    from .data import TASKS

    rows = [
        {"name": t.name, "classes": list(t.labels), "official_test": t.has_test, "description": t.description}
        for t in TASKS.values()
    ]
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

    rows = [
        {"name": NO_DML, "proxies": False, "summary": "plain cross-entropy (the CCE baseline)", "hyperparameters": {}}
    ]
    rows += [
        {
            "name": s.name,
            "proxies": s.has_proxies,
            "summary": s.summary,
            "hyperparameters": {
                h.name: {"default": h.default, "valid": h.describe(), "help": h.help} for h in s.hyperparameters
            },
        }
        for s in LOSSES.values()
    ]
    if args.json:
        emit_json(rows)
        return 0
    for r in rows:
        print(f"{r['name']:<19} {'proxies ' if r['proxies'] else ''}{r['summary']}")
        for name, h in r["hyperparameters"].items():
            print(
                f"    loss.{name:<18} default {h['default']!s:<6} {h['valid']}"
                + (f"  ({h['help']})" if h["help"] else "")
            )
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

    print(
        "Several DML losses: loss.name=proxy_anchor+supcon, each with loss.<loss>.<hyperparameter> and "
        "loss.<loss>.weight (default 1)."
    )
    print("How CCE and the DML terms combine:")
    for name, summary in WEIGHTINGS.items():
        print(f"    loss.weighting={name:<12} {summary}")


# ----------------------------------------------------------------- search


@command("search")
def cmd_search(args: argparse.Namespace) -> int:
    quiet_libraries(args.verbose)
    from . import api

    def print_result(result) -> None:
        print_search_result(result)
        if result.mlflow:
            m = result.mlflow
            print(f"  recorded in MLflow: run {m['run_id']} in experiment {m['experiment']} at {m['tracking_uri']}")

    results = api.optimize(
        args.space,
        datasets=args.datasets,
        config=args.config,
        model=args.model,
        data_dir=args.data_dir,
        sets=args.set,
        trials=args.trials,
        concurrency=args.concurrency,
        repeats=args.repeats,
        scheduler=args.scheduler,
        metric=args.metric,
        sampler_seed=args.sampler_seed,
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial,
        time_budget=args.time_budget,
        storage=args.storage,
        name=args.name,
        resume=args.resume,
        address=args.address,
        max_failures=args.max_failures,
        start_per_option=args.start_per_option,
        rescore=args.rescore,
        rescore_draws=args.rescore_draws,
        tracking_uri=args.tracking_uri,
        dry_run=args.dry_run,
        verbose=args.verbose,
        on_result=None if args.json else print_result,
    )
    if args.json and results:
        summaries = [r.to_dict() for r in results]
        emit_json(summaries if len(summaries) > 1 else summaries[0])
    empty = [r.dataset for r in results if r.best is None]
    if empty:
        raise RunFailed(
            f"no trial produced a score in the search of {', '.join(empty)}; see the failed trials "
            "above and the search's MLflow run"
        )
    return 0


def print_search_result(result) -> None:
    import yaml

    finished = sum(t.status == "FINISHED" for t in result.trials)
    killed = sum(t.status == "KILLED" for t in result.trials)
    print(
        f"{result.dataset}: {len(result.trials)} trials ({finished} finished, {killed} stopped early, "
        f"{len(result.failures)} failed) in {result.seconds:.0f}s; results in {result.path}"
    )
    for t in result.failures:
        print(f"  failed {t.trial_id}: {t.error}")
    if result.best is None:
        print("  no trial produced a score")
        return
    for line in result.option_lines():
        print(line)
    for line in rescore_lines(result):
        print(line)
    print(
        f"  best {result.objective} {result.best.score:.4f} (trial {result.best.trial_id})"
        + (" chosen on re-scored dev" if result.rescored else "")
    )
    searched = yaml.safe_dump(result.best.config, sort_keys=True).strip()
    print("  best configuration:\n    " + searched.replace("\n", "\n    "))


def rescore_lines(result) -> list[str]:
    """The re-scored leaders: search score, then mean ± std over the re-scoring draws; the choice marked."""
    if not result.rescored:
        return []
    m = result.metric
    lines = [
        f"  re-scored the {len(result.rescored)} leading trials on fresh draws ({result.objective}: "
        "search score -> mean ± std over the draws):"
    ]
    for r in result.rescored:
        mark = "  <- chosen" if r.trial_id == result.best.trial_id else ""
        lines.append(
            f"    {r.trial_id}  {r.search_score:.4f} -> {r.mean(m):.4f} ± {r.std(m):.4f} ({len(r.draws)} draws){mark}"
        )
    return lines


def add_rescore_options(p: argparse.ArgumentParser, default: int) -> None:
    """--rescore N --rescore-draws M; a default above 0 is capped at --trials (None until then)."""
    p.add_argument(
        "--rescore",
        type=int,
        default=default if not default else None,
        metavar="N",
        help="after the search, train the N best trials again on --rescore-draws fresh draws and choose "
        "the best mean dev score among them (a sturdier choice than the best single score; "
        + (f"default {default}, or --trials if fewer)" if default else "default 0, off)"),
    )
    p.add_argument(
        "--rescore-draws",
        type=int,
        default=3,
        metavar="M",
        help="draws per re-scored trial, apart from the search's and retrain's (default 3)",
    )


def add_search_parser(sub) -> None:
    p = sub.add_parser("search", help="search loss configurations with Optuna TPE on Ray Tune")
    add_run_options(p, datasets=True)
    p.add_argument("--space", required=True, help="search space YAML (see search_spaces/)")
    p.add_argument("--trials", type=int, default=20, help="trials per dataset (default 20)")
    p.add_argument(
        "--concurrency",
        type=concurrency,
        default=AUTO,
        metavar="auto|N",
        help="trials at a time; auto (default): one per CPU, one thread each, and no more than one per GPU "
        "where trials take GPUs; the choice is printed",
    )
    p.add_argument("--cpus-per-trial", type=float, default=None, help="default: all CPUs / concurrency")
    add_gpus(p, "--gpus-per-trial", "trial")
    p.add_argument("--scheduler", default="asha", choices=SCHEDULERS, help="early stopping (default asha)")
    p.add_argument("--metric", default="accuracy", choices=METRICS, help="dev metric to maximise (default accuracy)")
    p.add_argument("--repeats", type=int, default=1, help="few-shot draws (and seeds) averaged per trial (default 1)")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS", help="stop the search after SECONDS")
    p.add_argument("--storage", default=None, help="results folder or any Ray storage_path (default ./tunedml_results)")
    p.add_argument("--name", default=None, help="the search's name (default <dataset>-<space>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted search (latest, or --name)")
    p.add_argument("--address", default=None, help="join a Ray cluster: auto or ray://host:port")
    p.add_argument(
        "--max-failures",
        type=int,
        default=None,
        metavar="N",
        help="restart a failed trial (e.g. lost with its node) up to N times; default 1 with --address, else 0",
    )
    p.add_argument(
        "--sampler-seed",
        type=int,
        default=0,
        metavar="N",
        help="seed of Optuna's TPE sampler: the same seed, space and data give the same proposals (default 0)",
    )
    add_rescore_options(p, default=0)
    p.add_argument(
        "--start-per-option",
        default="1",
        metavar="[KEY=]N",
        help="start with N trials of every option of loss.name (or of KEY, a top-level choice) "
        "before TPE proposes; 0 turns it off (default 1)",
    )
    add_tracking_option(p)
    add_dry_run(p, "trial started")
    add_output_options(p)


# ----------------------------------------------------------------- what is recorded: searches, best, ui


def add_filter_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="only recorded searches with this setting, e.g. k=16, model=minilm, repeats=3, rescore=0 "
        "(searches that differ in protocol, k, model, metric, repeats or re-scoring are never ranked together)",
    )


@command("searches")
def cmd_searches(args: argparse.Namespace) -> int:
    quiet_libraries(verbose=False)
    from . import api

    found, studies = api.searches(args.datasets, tracking_uri=args.tracking_uri)
    if args.json:
        emit_json({"searches": [s.to_dict() for s in found], "studies": [s.to_dict() for s in studies]})
        return 0
    rows = [["dataset", "search", "space", "trials", "best", "state", "run"]]
    for s in found:
        trials = f"{s.trials if s.trials is not None else '?'}/{s.budget if s.budget is not None else '?'}"
        best = "-" if s.best_score is None else f"{s.objective} {s.best_score:.4f}"
        rows.append([s.dataset, s.name, s.space, trials, best, s.state, s.run_id])
    if len(rows) > 1:
        print_table(rows)
    else:
        print("no search recorded" + (f" for {args.datasets}" if args.datasets else ""))
    if studies:
        print()
        table = [["study", "datasets", "stages done", "trials", "seeds", "repeats", "state", "run"]]
        for st in studies:
            table.append(
                [
                    st.key,
                    ",".join(st.datasets) or "-",
                    str(len(st.stages)),
                    st.settings.get("trials", "?"),
                    st.settings.get("seeds", "?"),
                    st.settings.get("repeats", "?"),
                    st.state,
                    st.run_id,
                ]
            )
        print_table(table)
    return 0


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(f"{str(v):<{w}}" for v, w in zip(r, widths)).rstrip())


@command("best")
def cmd_best(args: argparse.Namespace) -> int:
    quiet_libraries(verbose=False)
    from . import api
    from .checks import check_output_file

    if args.out:
        check_output_file(args.out, "--out")  # before the store is read
    best = api.best(
        args.dataset, space=args.space, metric=args.metric, filters=args.filter, tracking_uri=args.tracking_uri
    )
    header = (
        f"# best {best.objective} {best.score:.4f} on {best.dataset}: search {best.search} (space {best.space}), "
        f"MLflow run {best.run_id} at {best.tracking_uri}\n"
    )
    if args.out:
        Path(args.out).expanduser().parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).expanduser().write_text(header + best.to_yaml())
    if args.json:
        emit_json({**best.to_dict(), **({"out": args.out} if args.out else {})})
    elif args.out:
        print(f"{header[2:].rstrip()}; written to {args.out} (tunedml train --config {args.out})")
    else:
        print(header + best.to_yaml(), end="")
    return 0


@command("ui")
def cmd_ui(args: argparse.Namespace) -> int:
    from .tracking import check_tracking, resolve_tracking_uri, serve_ui

    uri = resolve_tracking_uri(args.tracking_uri)
    check_tracking(uri)
    return serve_ui(uri, args.port)


def add_tracking_parsers(sub) -> None:
    p = sub.add_parser(
        "searches", help="the searches recorded per dataset (space, trials, best score, state, run id) and the studies"
    )
    p.add_argument("--datasets", default=None, help=DATASETS_HELP + " (default: every dataset with a search)")
    add_tracking_option(p)
    p.add_argument("--json", action="store_true", help="print {searches: [...], studies: [...]} as JSON")

    p = sub.add_parser("best", help="the best recorded configuration for a dataset, as YAML (tunedml train --config)")
    p.add_argument("--dataset", required=True, help="the dataset searched (a task name or the data file/folder)")
    p.add_argument("--space", default=None, help="only searches over this space (name or file)")
    p.add_argument("--metric", default="accuracy", choices=METRICS, help="rank searches by their best dev score")
    add_filter_option(p)
    p.add_argument("--out", default=None, metavar="FILE", help="write the YAML to FILE instead of stdout")
    add_tracking_option(p)
    p.add_argument("--json", action="store_true", help="print the record (run, score, flat config) as JSON")

    p = sub.add_parser("ui", help="the MLflow UI on the tracking store, at http://127.0.0.1:PORT")
    p.add_argument("--port", type=port, default=5000, help="1..65535 (default 5000)")
    add_tracking_option(p)


# ----------------------------------------------------------------- final evaluation: retrain, report


@command("retrain")
def cmd_retrain(args: argparse.Namespace) -> int:
    quiet_libraries(args.verbose)
    from . import api
    from .report import comparison_lines

    save = False if args.save_model is None else (True if args.save_model == "" else args.save_model)
    comparison = api.compare(
        args.dataset,
        run_id=args.run_id,
        config=args.config,
        baseline=args.baseline,
        model=args.model,
        data_dir=args.data_dir,
        sets=args.set,
        seeds=args.seeds,
        concurrency=None if args.concurrency == AUTO else args.concurrency,
        cpus_per_draw=args.cpus_per_draw,
        gpus_per_draw=args.gpus_per_draw,
        address=args.address,
        interval=args.interval,
        bootstrap=args.bootstrap,
        save_model=save,
        filters=args.filter,
        tracking_uri=args.tracking_uri,
        dry_run=args.dry_run,
        verbose=args.verbose,
        progress=True,
    )
    if comparison is None:  # a dry run
        return 0
    uri = comparison.tracking_uri
    if args.json:
        emit_json(
            {
                **comparison.to_dict(),
                "mlflow": {"tracking_uri": uri, "runs": comparison.run_ids},
                "model": comparison.model_dir,
            }
        )
    else:
        print("\n".join(comparison_lines(comparison)))
        print(
            f"  recorded in MLflow: run {comparison.run_ids['best']} (best), {comparison.run_ids['baseline']} "
            f"(baseline) at {uri}"
        )
        if comparison.model_dir:
            print(
                f"  model of draw {comparison.best_draw} (best dev accuracy) saved to {comparison.model_dir} "
                "(tunedml.retrain.load_model)"
            )
        elif args.save_model is not None:
            print("  no model saved: every draw of the best configuration failed")
    if comparison.failed_sides:
        raise RunFailed(
            f"every draw of the {' and the '.join(comparison.failed_sides)} configuration failed: "
            "nothing to compare (recorded in MLflow, with each draw's error)"
        )
    return 0


@command("report")
def cmd_report(args: argparse.Namespace) -> int:
    quiet_libraries(args.verbose)
    from . import api

    written = api.make_report(
        args.datasets, out=args.out, metric=args.metric, projection=args.projection, tracking_uri=args.tracking_uri
    )
    if args.json:
        emit_json(
            {
                "rows": [r.__dict__ for r in written.rows()],
                "files": [str(f) for f in written.files],
                "mlflow": {"tracking_uri": written.tracking_uri, "run_id": written.run_id},
            }
        )
        return 0
    print(written.markdown(), end="")
    print(f"\nwrote {', '.join(str(f) for f in written.files)}")
    print(f"logged to MLflow: run {written.run_id} in experiment tunedml/report at {written.tracking_uri}")
    return 0


def add_final_parsers(sub) -> None:
    p = sub.add_parser("retrain", help="retrain the best configuration and the CCE baseline on fresh draws; compare")
    add_run_options(p, dataset_help="the dataset (default sst2, or the one of --config / --run-id)")
    p.add_argument("--run-id", default=None, help="MLflow run to retrain: a search (its best configuration) or a trial")
    p.add_argument(
        "--seeds",
        type=int,
        default=None,
        metavar="N",
        help="how many fresh draws (not a seed): kshot: N draws, default 5; kfold: N seeds per fold, "
        "default 1 (every fold)",
    )
    p.add_argument(
        "--baseline",
        default=None,
        help="a YAML run config or space file (e.g. search_spaces/cce.yaml), a run id, or 'defaults' "
        "for untuned CCE (default: the best recorded CCE-only search)",
    )
    p.add_argument(
        "--concurrency",
        type=concurrency,
        default=AUTO,
        metavar="auto|N",
        help="draws at a time; auto (default): as many as the CPUs and GPUs allow; 1 trains them one by one "
        "in this process",
    )
    p.add_argument("--cpus-per-draw", type=float, default=None, help="CPUs per draw (default: all CPUs / concurrency)")
    add_gpus(p, "--gpus-per-draw", "draw")
    p.add_argument("--address", default=None, help="run the draws on a Ray cluster: auto or ray://host:port")
    p.add_argument(
        "--interval",
        default="t",
        choices=INTERVALS,
        help="interval of the paired difference: t (Student's t, default) or bootstrap (percentile)",
    )
    p.add_argument("--bootstrap", type=int, default=10_000, help="bootstrap resamples (with --interval bootstrap)")
    add_filter_option(p)
    p.add_argument(
        "--save-model",
        nargs="?",
        const="",
        default=None,
        metavar="DIR",
        help="save the model of the best configuration's draw with the best dev score to DIR "
        "(default tunedml_models/<dataset>-<loss>-<time>) and to its MLflow run",
    )
    add_tracking_option(p)
    add_dry_run(p, "training")
    add_output_options(p)

    p = sub.add_parser("report", help="the results table over datasets and its plots, from the final runs in MLflow")
    p.add_argument("--datasets", default=None, help=DATASETS_HELP + " (default: every dataset with a final run)")
    p.add_argument("--out", default="report", help="output folder (default report/)")
    p.add_argument("--metric", default="accuracy", choices=METRICS, help="the table's metric (the CSV has both)")
    p.add_argument("--projection", default="pca", choices=PROJECTIONS, help="2-D projection of the embeddings")
    add_tracking_option(p)
    add_output_options(p)


# ----------------------------------------------------------------- study


def run_command(argv: list[str]) -> int:
    """One tunedml command from an argument list, through this parser (the study's stages)."""
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command](args)


def check_command(argv: list[str]) -> None:
    """Check a command as its --dry-run does, quietly (the study checks every search up front)."""
    with hidden_messages(), contextlib.redirect_stdout(io.StringIO()):
        run_command([*argv, "--dry-run"])


@command("study")
def cmd_study(args: argparse.Namespace) -> int:
    from .inputs import RunInputs, dataset_names
    from .study import Commands, Settings, run_study

    data_dir = RunInputs.of(data_dir=args.data_dir).named().get("data.data_dir")
    settings = Settings(
        datasets=tuple(dataset_names(args.datasets)),
        trials=args.trials,
        seeds=args.seeds,
        repeats=args.repeats,
        rescore=min(STUDY_RESCORE, args.trials) if args.rescore is None else args.rescore,
        rescore_draws=args.rescore_draws,
        space=args.space or "",
        sets=tuple(args.set),
        model=args.model,
        data_dir=data_dir,
        scheduler=args.scheduler,
        sampler_seed=args.sampler_seed,
        concurrency=args.concurrency,
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial,
        address=args.address,
        storage=args.storage or "",
        tracking_uri=args.tracking_uri or "",
        out=args.out,
        resume=args.resume,
        verbose=args.verbose,
    )
    settings.validate()
    quiet_libraries(args.verbose)
    return run_study(settings, Commands(run=run_command, check=check_command), dry_run=args.dry_run)


def add_study_parser(sub) -> None:
    p = sub.add_parser("study", help="the whole pipeline per dataset: CCE and DML searches, retrain, report; resumable")
    p.add_argument("--datasets", required=True, help=DATASETS_HELP)
    p.add_argument("--trials", type=int, default=20, help="trials of each search (CCE and DML alike; default 20)")
    p.add_argument(
        "--seeds",
        type=int,
        default=5,
        metavar="N",
        help="how many fresh draws the final retrain trains and tests (not a seed; default 5)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="few-shot draws averaged per trial (default 3: a trial costs about 3x the time of one training)",
    )
    add_rescore_options(p, default=STUDY_RESCORE)
    p.add_argument("--space", default=None, help="the DML search space (default: the shipped dml.yaml)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fix a config key in both searches and the retrain, e.g. data.k=16 (a key a space searches is then fixed)",
    )
    p.add_argument("--model", help="minilm (embedded default), a hub id such as roberta-base, or a local folder")
    p.add_argument(
        "--data-dir",
        help="folder with <task>/<split>.jsonl (default: $TUNEDML_DATA_DIR, else the SentEval copy inside the package)",
    )
    p.add_argument(
        "--scheduler", default="asha", choices=SCHEDULERS, help="early stopping in the searches (default asha)"
    )
    p.add_argument(
        "--sampler-seed",
        type=int,
        default=0,
        metavar="N",
        help="seed of Optuna's TPE sampler in both searches (default 0)",
    )
    p.add_argument(
        "--concurrency",
        type=concurrency,
        default=AUTO,
        metavar="auto|N",
        help="trials (and retrain draws) at a time; auto (default): one per CPU, one thread each, and no more "
        "than one per GPU where they take GPUs",
    )
    p.add_argument("--cpus-per-trial", type=float, default=None, help="CPUs per trial and per retrain draw")
    add_gpus(p, "--gpus-per-trial", "trial", extra=" (the retrain's draws get the same)")
    p.add_argument("--address", default=None, help="join a Ray cluster: auto or ray://host:port")
    p.add_argument(
        "--storage", default=None, help="the searches' results folder or Ray storage_path (default ./tunedml_results)"
    )
    p.add_argument("--out", default="report", help="the report's folder (default report/)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the study with these settings (the same command without it does too, or starts it)",
    )
    add_tracking_option(p)
    add_dry_run(p, "stage run")
    p.add_argument("-v", "--verbose", action="store_true", help="let library logs through")


# ----------------------------------------------------------------- parser


class Parser(argparse.ArgumentParser):
    """argparse with the project's form of errors: one line on stderr, exit code 2. No
    abbreviations: `--seed` must not quietly mean `--seeds`, nor `--dataset` `--datasets`."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_args(self, args: Any = None, namespace: Any = None) -> argparse.Namespace:
        """As argparse, but an unknown option is refused by its command's parser, with the
        option it may have meant."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            command = self._commands().get(getattr(parsed, "command", None) or "", self)
            known = [s for action in command._actions for s in action.option_strings]
            hint = "".join(_hint(x.split("=", 1)[0], known) for x in extras if x.startswith("-"))
            command.error(f"unrecognized arguments: {' '.join(extras)}{hint}")
        return parsed

    def _commands(self) -> dict[str, argparse.ArgumentParser]:
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                return dict(action.choices)
        return {}


RENAMED = {
    "--seed": ("--sampler-seed", "the TPE sampler's seed; --seeds is how many final draws"),
    "--parallel": ("--concurrency", "draws at a time"),
    "--dataset": ("--datasets", "a comma list or all"),
}


def _hint(option: str, known: list[str]) -> str:
    """What an unknown option is called here: the new name of a renamed one, else a close match."""
    if option in RENAMED and RENAMED[option][0] in known:
        new, meaning = RENAMED[option]
        return f" ({option} is now {new}: {meaning})"
    return did_you_mean(option, known)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="tunedml",
        description=__doc__.splitlines()[0],
        epilog="Exit codes: 0 success, 2 bad input, 1 a run that produced nothing, 130 Ctrl-C, 143 SIGTERM.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"tunedml {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="fine-tune once with a config; print dev and test scores")
    add_run_options(p)
    add_output_options(p)

    for name, text in (
        ("datasets", "list the registered datasets"),
        ("losses", "list losses with hyperparameters and ranges"),
        ("keys", "list every config key with its default, valid values and what it does"),
    ):
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
    show_messages()
    interrupt.sigterm_as_ctrl_c()  # a scheduler's or `timeout`'s SIGTERM stops a command as Ctrl-C does
    try:
        check_blank_options(args)
        return COMMANDS[args.command](args)
    except TunedMLError as e:
        print(f"tunedml {args.command}: error: {e}", file=sys.stderr)
        return 2
    except RunFailed as e:
        print(f"tunedml {args.command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # a search says how to resume
        print(f"tunedml {args.command}: {interrupt.describe()}{f': {e}' if str(e) else ''}", file=sys.stderr)
        return interrupt.exit_code()


if __name__ == "__main__":
    sys.exit(main())
