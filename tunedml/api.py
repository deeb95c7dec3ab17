"""The operations of tunedml, from Python: the same functions the command line calls.

=====================  ==================  ===========================================
command                function            returns
=====================  ==================  ===========================================
``tunedml train``      :func:`fit`         :class:`~tunedml.train.FitResult`
``tunedml search``     :func:`optimize`    a :class:`~tunedml.search.SearchResult` per dataset
``tunedml retrain``    :func:`compare`     :class:`~tunedml.results.Comparison`
``tunedml report``     :func:`make_report` :class:`~tunedml.report.Report`
``tunedml best``       :func:`best`        :class:`~tunedml.tracking.BestRecord`
``tunedml searches``   :func:`searches`    the recorded searches and studies
=====================  ==================  ===========================================

They are not named after the commands because ``tunedml.train``, ``tunedml.search``,
``tunedml.retrain`` and ``tunedml.report`` are modules: importing one would rebind the name.

Each one checks everything it will use before any work (bad input raises a
:class:`~tunedml.errors.TunedMLError` naming the argument, with nothing written), then runs and,
where the command records, records in MLflow. Heavy libraries (torch, Ray, MLflow) are imported
when a function runs, not when ``tunedml`` is imported. What a command prints between steps (the
search about to start, the GPUs chosen, a dry run's plan) goes to the ``tunedml`` logger at INFO;
`tunedml` shows it on stderr, a script sees it after ``logging.basicConfig(level=logging.INFO)``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from .choices import AUTO
from .inputs import RunInputs, Sets, dataset_names

if TYPE_CHECKING:
    from .config import RunConfig
    from .report import Report
    from .results import Candidate, Comparison, DrawResult
    from .retrain import Job, RetrainOptions
    from .search import SearchOptions, SearchResult
    from .search.prepare import PreparedSearch
    from .tracking import BestRecord
    from .tracking.searches import SearchRecord
    from .tracking.studies import StudyRecord
    from .train import EvalResult, FitResult

log = logging.getLogger("tunedml")

PathLike = str | os.PathLike


# ----------------------------------------------------------------- train


def fit(
    config: PathLike | RunConfig | None = None,
    *,
    dataset: PathLike | None = None,
    model: PathLike | None = None,
    data_dir: PathLike | None = None,
    sets: Sets | None = None,
    progress: bool = False,
    on_eval: Callable[[EvalResult], None] | None = None,
) -> FitResult:
    """Fine-tune once (`tunedml train`): a few-shot draw of the dataset, the run's optimizer steps,
    dev and test scores.

    Args:
        config: A YAML run config, e.g. a ``best_config.yaml`` from :func:`best`, or a
            :class:`~tunedml.config.RunConfig` (such as :func:`run_config` returns).
        dataset: A task (``sst2``, ``mr``, ... see `tunedml datasets`) or a CSV/JSONL/Parquet file
            or folder. Default: the config's, else ``sst2``.
        model: ``minilm`` (shipped with tunedml, no network), a hub id such as ``roberta-base``,
            or a local model folder.
        data_dir: A folder with ``<task>/<split>.jsonl``; default ``$TUNEDML_DATA_DIR``, else the
            copy of the SentEval tasks inside the package.
        sets: Config keys on top of everything else, as ``{"data.k": 16}`` or ``["data.k=16"]``
            (`tunedml keys` and `tunedml losses` list them).
        progress: Print a line per dev evaluation on stderr, as `tunedml train` does.
        on_eval: Called with each dev evaluation (:class:`~tunedml.train.EvalResult`).

    Returns:
        The :class:`~tunedml.train.FitResult`: ``dev`` and ``test`` scores (accuracy, macro_f1,
        collapsed) and every dev evaluation in ``history``.

    Raises:
        ~tunedml.errors.ConfigError: A key, value, file or model that is not valid.
        ~tunedml.errors.DataError: A dataset that cannot be read or drawn from.

    Example:
        .. code-block:: python

            import tunedml

            result = tunedml.fit(dataset="mpqa", sets={"loss.name": "supcon", "train.steps": 20})
            print(result.test["accuracy"])
    """
    from .progress import Progress
    from .train import Trainer, draw_for, prepare_tokens

    cfg = run_config(config, dataset=dataset, model=model, data_dir=data_dir, sets=sets)
    tokens = prepare_tokens(cfg)
    trainer = Trainer(cfg, tokens, draw_for(cfg, tokens))
    lines = Progress(len(trainer.evaluation_steps()), "eval") if progress else None

    def each(e: EvalResult) -> None:
        if lines:
            parts = ", ".join(f"{k} {v:.3f}" for k, v in e.loss_parts.items())
            stage = f"  stage {e.stage}" if trainer.plan.two_stage else ""
            alone = (
                f"  without positives: {e.batches_without_positives} batches, {e.examples_without_positive} examples"
                if cfg.loss.name != "none"
                else ""
            )
            lines.step(
                f"step {e.step}/{trainer.total_steps} (epoch {e.epoch:.1f}){stage}  loss {e.train_loss:.4f} "
                f"({parts}){alone}  dev {fmt_scores(e.dev)}  {e.seconds:.1f}s"
            )
        if on_eval:
            on_eval(e)

    return trainer.fit(each)


def run_config(
    config: PathLike | RunConfig | None = None,
    *,
    dataset: PathLike | None = None,
    model: PathLike | None = None,
    data_dir: PathLike | None = None,
    sets: Sets | None = None,
) -> RunConfig:
    """The validated :class:`~tunedml.config.RunConfig` that :func:`fit` would run: defaults <
    ``config`` < ``dataset``, ``data_dir`` and ``model`` < ``sets``; its model loads.

    Raises:
        ~tunedml.errors.TunedMLError: As :func:`fit`.
    """
    from .checks import check_model, check_model_fits
    from .config import RunConfig, check_used, explicit_sources
    from .data import check_dataset_name

    if not isinstance(config, RunConfig):
        inputs = RunInputs.of(config, dataset, data_dir, model, sets)
        cfg = inputs.build()
        given = {**explicit_sources(inputs.config, [], inputs.named()), **dict.fromkeys(inputs.sets, "--set")}
        check_used(cfg, given)  # nothing the user gave is silently dropped
        return cfg
    inputs = RunInputs.of(None, dataset, data_dir, model, sets)
    cfg = config.with_overrides({**inputs.named(), **inputs.sets}, source="arguments")
    check_dataset_name(cfg.data.dataset)
    check_model(cfg.model.name)
    check_model_fits(cfg.model.name, cfg.model.reinit_layers, cfg.data.max_length)
    return cfg


def fmt_scores(s: dict[str, float] | None) -> str:
    return "-" if not s else f"acc {s['accuracy']:.4f}  macro-F1 {s['macro_f1']:.4f}"


# ----------------------------------------------------------------- search


def optimize(
    space: PathLike,
    *,
    datasets: str | Sequence[str] = "sst2",
    config: PathLike | None = None,
    model: PathLike | None = None,
    data_dir: PathLike | None = None,
    sets: Sets | None = None,
    trials: int = 20,
    concurrency: int | str = AUTO,
    repeats: int = 1,
    scheduler: str = "asha",
    metric: str = "accuracy",
    sampler_seed: int = 0,
    cpus_per_trial: float | None = None,
    gpus_per_trial: float | str = AUTO,
    time_budget: float | None = None,
    storage: PathLike | None = None,
    name: str | None = None,
    resume: bool = False,
    address: str | None = None,
    max_failures: int | None = None,
    start_per_option: int | str = 1,
    rescore: int = 0,
    rescore_draws: int = 3,
    tracking_uri: str | None = None,
    dry_run: bool = False,
    verbose: bool = False,
    on_result: Callable[[SearchResult], None] | None = None,
) -> list[SearchResult]:
    """Search a space of loss configurations per dataset (`tunedml search`): Optuna's TPE proposes,
    Ray Tune runs and stops weak trials early, MLflow records the search, each trial and the best
    configuration.

    Every dataset's search is checked (its config, space, models, draws, names, resources and the
    tracking store) before the first one starts; then they run one after another.

    Args:
        space: A search space YAML file (see ``search_spaces/``).
        datasets: ``sst2``, a comma list such as ``"sst2,mr"``, a list, or ``"all"`` (every
            registered task).
        config: A YAML run config under the space.
        model: As in :func:`fit`.
        data_dir: As in :func:`fit`.
        sets: Config keys fixed in every trial (a key the space searches may not be set).
        trials: Trials per dataset.
        concurrency: Trials at a time; ``"auto"``: one per CPU (one thread each) and no more than
            one per GPU where trials take GPUs, at most ``trials``.
        repeats: Few-shot draws (and seeds) averaged per trial.
        scheduler: Early stopping: ``asha``, ``hyperband`` or ``none``.
        metric: The dev score maximised: ``accuracy`` or ``macro_f1``.
        sampler_seed: The seed of Optuna's TPE sampler.
        cpus_per_trial: CPUs per trial; default all CPUs shared among ``concurrency`` trials.
        gpus_per_trial: GPUs per trial, a share below 1 packs trials on a GPU; ``"auto"``: one
            where the machine (or the cluster of ``address``) has GPUs, none otherwise, a share
            where ``concurrency`` trials outnumber the GPUs.
        time_budget: Stop the search after this many seconds.
        storage: Ray's results folder or ``storage_path`` (default ``./tunedml_results``).
        name: The search's name (default ``<dataset>-<space>-<time>``).
        resume: Continue the search ``name`` (or the latest of this dataset and space).
        address: A Ray cluster: ``auto`` or ``ray://host:port``.
        max_failures: Restarts of a failed trial (default 1 with ``address``, else 0).
        start_per_option: Trials per option of ``loss.name`` (or ``"KEY=N"``) before TPE proposes.
        rescore: After the search, train the ``rescore`` best trials again on ``rescore_draws``
            fresh draws and choose the best mean dev score among them (0: the best single score).
        rescore_draws: Draws per re-scored trial, apart from the search's and the retrain's.
        tracking_uri: The MLflow store (default ``$MLFLOW_TRACKING_URI``, else ``./mlflow.db``).
        dry_run: Check everything, log the plan, and stop: nothing started, nothing recorded.
        verbose: Let Ray's and Optuna's own reporting through.
        on_result: Called with each dataset's result as soon as its search ends.

    Returns:
        One :class:`~tunedml.search.SearchResult` per dataset, in order (empty for a dry run).
        ``best`` is None where no trial produced a score; ``mlflow`` names the search's run.

    Raises:
        ~tunedml.errors.TunedMLError: Bad input, before anything starts or is recorded.
        ~tunedml.search.SearchInterrupted: Ctrl-C (or SIGTERM); the search is saved, ``resume``
            continues it.

    Example:
        .. code-block:: python

            import tunedml

            (result,) = tunedml.optimize("search_spaces/dml.yaml", datasets="sst2", trials=8,
                                         sets={"data.k": 8})
            print(result.best.score, result.best_config["loss.name"])
    """
    from .search import SearchOptions, check_per_option, parse_per_option
    from .search.checks import check_search
    from .search.prepare import prepare_search
    from .tracking import resolve_tracking_uri

    options = SearchOptions(
        trials=trials,
        concurrency=concurrency,
        cpus_per_trial=cpus_per_trial,
        gpus_per_trial=gpus_per_trial,
        scheduler=scheduler,
        metric=metric,
        repeats=repeats,
        time_budget_s=time_budget,
        storage=os.fspath(storage) if storage is not None else None,
        name=name,
        resume=resume,
        address=address,
        max_failures=max_failures,
        sampler_seed=sampler_seed,
        rescore=rescore,
        rescore_draws=rescore_draws,
        verbose=verbose,
    )
    options.per_option_key, options.per_option_start = parse_per_option(str(start_per_option))
    options.validate()
    inputs = RunInputs.of(config, None, data_dir, model, sets)
    names = dataset_names(datasets)
    prepared = [prepare_search(space, dataset, inputs, names) for dataset in names]
    for p in prepared:
        check_per_option(p.space, options)
    uri = resolve_tracking_uri(tracking_uri)
    resources = check_search(prepared, options, uri, connect=not dry_run)
    options = replace(options, gpus_per_trial=resources.gpus, concurrency=resources.at_once)
    log.info(
        "search: %s",
        _describe_resources(
            resources.at_once,
            resources.cpus,
            resources.gpus,
            gpus_per_trial,
            resources.gpus_note,
            "trial",
            resources.at_once_note,
        ),
    )
    if dry_run:
        return _plan_searches(prepared, options, uri)
    from .search import run_search
    from .tracking.search_runs import SearchTracker
    from .train import prepare_tokens

    results = []
    for p in prepared:
        log.info(
            "search %s over %s: %d trials, objective %s", p.dataset, p.space.path, options.trials, options.objective
        )
        tokens = prepare_tokens(p.driver)  # before the parent run opens: nothing recorded for a failure here
        tracker = SearchTracker.open(uri, p.driver, p.base, p.space, options)
        with tracker:
            result = run_search(
                tokens, p.base, p.space, tracker.options, callbacks=[tracker.callback()], state=tracker.state
            )
            tracker.finish(result)
        result.mlflow = tracker.describe()
        results.append(result)
        if on_result:
            on_result(result)
    return results


def _plan_searches(prepared: list[PreparedSearch], options: SearchOptions, uri: str) -> list[SearchResult]:
    """A dry run's end: where each search would go; nothing to return."""
    from .search import experiment_path
    from .tracking import experiment_name

    for p in prepared:
        storage, name = experiment_path(p.driver.data.dataset, p.space, options)
        log.info(
            "search %s over %s: %d trials, objective %s, sampler seed %d; into %s/%s, MLflow experiment %s at %s",
            p.dataset,
            p.space.path,
            options.trials,
            options.objective,
            options.sampler_seed,
            storage.rstrip("/"),
            name,
            experiment_name(p.dataset),
            uri,
        )
    log.info("dry run: every check passed; nothing was started or recorded")
    return []


def _describe_resources(
    at_once: int | None,
    cpus: float | None,
    gpus: float,
    requested: float | str,
    note: str,
    unit: str,
    at_once_note: str = "",
) -> str:
    """``2 trials at a time (auto: 1 CPU per trial on 2 CPUs), 1 CPU and 1 GPU per trial (auto: this
    machine has 2 GPUs)``."""
    from .checks import describe_gpus

    when = f"{at_once} {unit}{'s' * (at_once != 1)} at a time" if at_once else f"as many {unit}s at a time as fit"
    when += f" (auto: {at_once_note})" if at_once_note else ""
    what = f"{cpus:g} CPU{'s' * (cpus != 1)} and " if cpus else "the CPUs shared, and "
    return f"{when}, {what}{describe_gpus(gpus, requested, note, unit)}"


# ----------------------------------------------------------------- retrain


def compare(
    dataset: PathLike | None = None,
    *,
    run_id: str | None = None,
    config: PathLike | None = None,
    baseline: str | None = None,
    model: PathLike | None = None,
    data_dir: PathLike | None = None,
    sets: Sets | None = None,
    seeds: int | None = None,
    concurrency: int | None = None,
    cpus_per_draw: float | None = None,
    gpus_per_draw: float | str = AUTO,
    address: str | None = None,
    interval: str = "t",
    bootstrap: int = 10_000,
    save_model: PathLike | bool = False,
    filters: Mapping[str, Any] | Sequence[str] | None = None,
    tracking_uri: str | None = None,
    dry_run: bool = False,
    verbose: bool = False,
    progress: bool = False,
    on_draw: Callable[[Job, DrawResult], None] | None = None,
) -> Comparison | None:
    """Retrain the best configuration and the CCE baseline on the same fresh draws, test both, and
    compare them draw by draw (`tunedml retrain`): a paired difference with its interval and p-values.

    Args:
        dataset: Whose recorded searches to take (default ``sst2``, or the dataset of ``config``
            or ``run_id``).
        run_id: An MLflow run to retrain: a search (its best configuration), a trial or a final run.
            Default: the best recorded search over a space that tries DML losses.
        config: A YAML run config to retrain instead (e.g. from :func:`best`).
        baseline: A YAML run config or space file, a run id, or ``"defaults"`` for untuned CCE.
            Default: the best recorded CCE-only search.
        model: As in :func:`fit`, for both configurations.
        data_dir: As in :func:`fit`, for both configurations.
        sets: Config keys for both configurations.
        seeds: kshot: the number of fresh draws (default 5); kfold: seeds per fold (default 1).
        concurrency: Draws at a time (default: as many as the CPUs and GPUs allow; 1 trains them
            one by one in this process).
        cpus_per_draw: CPUs per draw.
        gpus_per_draw: GPUs per draw; ``"auto"`` as ``gpus_per_trial`` of :func:`optimize`.
        address: A Ray cluster to run the draws on: ``auto`` or ``ray://host:port``.
        interval: ``t`` (Student's t) or ``bootstrap`` (percentile).
        bootstrap: Bootstrap resamples (with ``interval="bootstrap"``).
        save_model: Save the best configuration's draw with the best dev score: True for
            ``tunedml_models/<dataset>-<loss>-<time>``, or a folder.
        filters: Which recorded searches may be chosen from, as in :func:`best`.
        tracking_uri: The MLflow store, as in :func:`optimize`.
        dry_run: Check everything (the configurations are read from the store), log the plan and
            stop: nothing trained, nothing recorded.
        verbose: Let Ray's own reporting through.
        progress: Print a line per finished draw on stderr, as `tunedml retrain` does.
        on_draw: Called with each finished draw.

    Returns:
        The :class:`~tunedml.results.Comparison` (None for a dry run); ``run_ids`` names the two
        final runs, ``model_dir`` the saved model. ``failed_sides`` lists a configuration whose
        every draw failed.

    Raises:
        ~tunedml.errors.TunedMLError: Bad input or nothing recorded to retrain, before any training.

    Example:
        .. code-block:: python

            import tunedml

            comparison = tunedml.compare("sst2", seeds=5)
            print(comparison.differences["accuracy"].mean)  # best - CCE, percentage points
    """
    from .report import describe_candidate
    from .retrain import RetrainOptions, Selection, select
    from .retrain.checks import check_retrain, check_retrain_start, draws_of
    from .tracking import resolve_tracking_uri

    save = None if save_model is False or save_model is None else ("" if save_model is True else os.fspath(save_model))
    options = RetrainOptions(
        seeds=seeds,
        concurrency=concurrency,
        cpus_per_draw=cpus_per_draw,
        gpus_per_draw=gpus_per_draw,
        address=address,
        interval=interval,
        bootstrap=bootstrap,
        keep_model=save is not None,
        verbose=verbose,
    )
    options.validate()
    selection = Selection(
        _text(dataset),
        run_id,
        _text(config),
        baseline,
        RunInputs.of(None, None, data_dir, model, sets).overrides(),
        filters=_filters(filters),
    )
    selection.check()
    uri = selection.tracking_uri = resolve_tracking_uri(tracking_uri)
    resources = check_retrain_start(options, uri, save, connect=not dry_run)  # places, address, resources
    options = replace(options, gpus_per_draw=resources.gpus)
    best, base = select(selection)
    check_retrain(best, base, options)  # models and draws of both: before any training
    draws = draws_of(best, options)
    log.info(
        "retrain %s: %d draws of best = %s and baseline = %s; %s",
        best.config["data.dataset"],
        draws,
        describe_candidate(best),
        describe_candidate(base),
        _describe_resources(
            options.concurrency, resources.cpus, resources.gpus, gpus_per_draw, resources.gpus_note, "draw"
        ),
    )
    if dry_run:
        log.info("dry run: every check passed; nothing was trained or recorded")
        return None
    return _retrain(best, base, options, uri, save, draws, progress, on_draw)


def _retrain(
    best: Candidate,
    base: Candidate,
    options: RetrainOptions,
    uri: str,
    save: str | None,
    draws: int,
    progress: bool,
    on_draw: Callable[[Job, DrawResult], None] | None,
) -> Comparison:
    """Train both sides' draws, save the chosen model if asked, record the final runs."""
    from .progress import Progress
    from .report import draw_line
    from .retrain import retrain as run_draws
    from .retrain import save_top_model
    from .tracking import log_final
    from .train import prepare_tokens

    lines = Progress(2 * draws, "draw") if progress else None

    def each(job: Job, result: DrawResult) -> None:
        if lines:
            lines.step(draw_line(job, result))
        if on_draw:
            on_draw(job, result)

    comparison = run_draws(prepare_tokens(best.run_config), best, base, options, on_draw=each)
    model_dir = save_top_model(comparison, save) if save is not None else None
    comparison.run_ids = log_final(uri, comparison, model_dir)
    comparison.tracking_uri = uri
    comparison.model_dir = str(model_dir) if model_dir else None
    return comparison


def _text(value: PathLike | None) -> str | None:
    return None if value is None else os.fspath(value)


# ----------------------------------------------------------------- report


def make_report(
    datasets: str | Sequence[str] | None = None,
    *,
    out: PathLike = "report",
    metric: str = "accuracy",
    projection: str = "pca",
    tracking_uri: str | None = None,
) -> Report:
    """The results table over datasets and its plots (`tunedml report`), from the latest final
    evaluation of each (:func:`compare`), written to ``out`` and logged to MLflow's experiment
    ``tunedml/report``.

    Args:
        datasets: A comma list, a list, or ``"all"`` (every registered task); default every
            dataset with a final evaluation.
        out: The folder for ``results.md``, ``results.csv``, ``diff.png`` and
            ``embeddings_<dataset>.png``.
        metric: The Markdown table's metric: ``accuracy`` or ``macro_f1`` (the CSV has both).
        projection: The embeddings' 2-D projection: ``pca`` or ``tsne``.
        tracking_uri: The MLflow store, as in :func:`optimize`; it must exist.

    Returns:
        The :class:`~tunedml.report.Report`: its ``files``, ``comparisons`` and MLflow ``run_id``.

    Raises:
        ~tunedml.errors.TunedMLError: Bad input, no store, or a dataset without a final evaluation.

    Example:
        .. code-block:: python

            import tunedml

            written = tunedml.make_report("sst2,mr", out="report")
            print(written.markdown())
    """
    from .checks import check_output_folder
    from .metrics import check_metric
    from .report import Report, check_projection, write_report
    from .tracking import check_tracking, final_comparisons, log_report, resolve_tracking_uri

    check_metric(metric)
    check_projection(projection)
    uri = resolve_tracking_uri(tracking_uri)
    check_output_folder(out, "--out")
    check_tracking(uri, must_exist=True)  # nothing recorded: nothing to report, no database created
    names = dataset_names(datasets) if datasets else None
    comparisons = final_comparisons(uri, names)
    files = write_report(comparisons, out, metric, projection)
    return Report(files, comparisons, metric, log_report(uri, out, comparisons), uri)


# ----------------------------------------------------------------- what is recorded


def best(
    dataset: PathLike,
    *,
    space: PathLike | None = None,
    metric: str = "accuracy",
    filters: Mapping[str, Any] | Sequence[str] | None = None,
    tracking_uri: str | None = None,
) -> BestRecord:
    """The best configuration recorded for a dataset (`tunedml best`), over every finished search
    (ranked by its best trial's dev score).

    Args:
        dataset: The dataset searched (a task name or the data file/folder).
        space: Only searches over this space (a name such as ``dml``, or its file).
        metric: Rank by dev ``accuracy`` or ``macro_f1``.
        filters: Only searches with these settings, as ``{"k": 16}`` or ``["k=16"]`` (names: see
            ``tunedml best --help``); searches that differ in protocol, k, model, metric, repeats or
            re-scoring are never ranked together.
        tracking_uri: The MLflow store, as in :func:`optimize`; it must exist.

    Returns:
        The :class:`~tunedml.tracking.BestRecord`: ``score``, ``run_id``, the flat ``config``, and
        ``to_yaml()`` for :func:`fit`'s ``config``.

    Raises:
        ~tunedml.errors.TrackingError: No store, or no finished search of the dataset.

    Example:
        .. code-block:: python

            import pathlib
            import tunedml

            record = tunedml.best("sst2")
            pathlib.Path("best.yaml").write_text(record.to_yaml())
            tunedml.fit("best.yaml")
    """
    from .metrics import check_metric
    from .tracking import check_tracking, find_best, resolve_tracking_uri

    check_metric(metric)
    wanted = _filters(filters)
    uri = resolve_tracking_uri(tracking_uri)
    check_tracking(uri, must_exist=True)  # reading creates no database
    return find_best(uri, os.fspath(dataset), space=_text(space), metric=metric, filters=wanted)


def _filters(filters: Mapping[str, Any] | Sequence[str] | None) -> dict[str, str]:
    """``--filter NAME=VALUE`` texts or a mapping, checked (ConfigError names the valid names)."""
    from .tracking.searches import parse_filters

    if isinstance(filters, Mapping):
        filters = [f"{k}={v}" for k, v in filters.items()]
    return parse_filters(list(filters or []))


def searches(
    datasets: str | Sequence[str] | None = None, *, tracking_uri: str | None = None
) -> tuple[list[SearchRecord], list[StudyRecord]]:
    """The searches recorded per dataset (space, trials, best score, state, run id) and the studies
    (`tunedml searches`).

    Args:
        datasets: A comma list, a list or ``"all"``; default every dataset with a recorded search.
        tracking_uri: The MLflow store, as in :func:`optimize`; it must exist.

    Returns:
        (searches, studies): :class:`~tunedml.tracking.searches.SearchRecord` per search, per
        dataset in the tasks' order, oldest first; :class:`~tunedml.tracking.studies.StudyRecord`
        per study.

    Raises:
        ~tunedml.errors.TrackingError: No store at ``tracking_uri``.

    Example:
        .. code-block:: python

            import tunedml

            found, studies = tunedml.searches("sst2")
            print([(s.space, s.best_score, s.state) for s in found])
    """
    from .tracking import check_tracking, resolve_tracking_uri
    from .tracking.searches import list_searches
    from .tracking.studies import list_studies

    uri = resolve_tracking_uri(tracking_uri)
    check_tracking(uri, must_exist=True)
    return list_searches(uri, dataset_names(datasets) if datasets else None), list_studies(uri)
