"""Reading recorded searches back: every search of every dataset (`tunedml searches`), the best
configuration of a dataset (`tunedml best`), the best searches on each side of the DML-vs-CCE
comparison, the configuration of any recorded run, and how many trials a search had. Reading
never creates a store: where none exists, nothing is recorded."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import flatten, from_flat, load_yaml
from ..errors import ConfigError, TrackingError
from ..losses import NO_DML
from ..metrics import check_metric
from ..space import read_space_yaml
from .store import (
    EXPERIMENT_PREFIX,
    FINAL_ROLE,
    ROLE_TAG,
    SEARCH_ROLE,
    TRIAL_ROLE,
    call,
    client,
    experiment_name,
    reason,
)

BEST_CONFIG = "best_config.yaml"
# Keys added after runs were recorded, each with the value every run before it trained with. A recorded
# configuration (best_config.yaml, a trial's or a final run's parameters) is a full one, every key
# written, so one without such a key predates it: read back with the old value, a recorded choice
# retrains as it was chosen, not under a default that changed since.
ADDED_KEYS = {"head.init": "random"}
MAX_SEARCHES = 1000  # searches of one dataset looked at when choosing the default configurations
TRIALS_TAG = "tunedml.trials"  # on final runs: the trials of the search the configuration came from


@dataclass(frozen=True)
class BestRecord:
    """The best configuration recorded for a dataset, and where it came from."""

    run_id: str  # the search's parent run
    score: float  # the best trial's value of ``objective``
    config: dict[str, Any]  # the full flat run config (as in best_config.yaml)
    space: str  # the search space's name (file stem)
    objective: str  # e.g. dev_accuracy
    dataset: str = ""
    search: str = ""  # the search's name (its Ray experiment folder)
    tracking_uri: str = ""
    trials: int | None = None  # trials the search ran: its budget
    search_score: float | None = None  # the chosen trial's own dev score in the search ("dev at selection")
    rescored: tuple[float, float, int] | None = None  # (mean, std, draws) of its re-scored dev, if re-scored

    def to_yaml(self) -> str:
        """The config as nested YAML, directly usable as ``tunedml train --config``."""
        return from_flat(self.config, source=f"run {self.run_id}").to_yaml()

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "run_id": self.run_id,
            "search": self.search,
            "space": self.space,
            "objective": self.objective,
            "score": self.score,
            "tracking_uri": self.tracking_uri,
            "trials": self.trials,
            "search_score": self.search_score,
            "rescored": dict(zip(("mean", "std", "draws"), self.rescored)) if self.rescored else None,
            "config": self.config,
        }


@dataclass(frozen=True)
class SearchRecord:
    """One recorded search, as `tunedml searches` lists it."""

    dataset: str
    name: str  # the search's name (its Ray experiment folder)
    space: str
    state: str  # MLflow's run status: RUNNING, FINISHED, FAILED (no trial scored, or it raised), KILLED
    trials: int | None  # trials that ended (finished, stopped early or failed); while running, its --trials
    budget: int | None  # its --trials
    objective: str  # e.g. dev_accuracy
    best_score: float | None
    run_id: str
    started: str  # local time, YYYY-MM-DD HH:MM

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def list_searches(uri: str, datasets: list[str] | None = None) -> list[SearchRecord]:
    """Every search recorded at ``uri`` (any state), per dataset in the usual order of the tasks,
    oldest first; ``datasets`` keeps those (None: every dataset with a recorded search)."""
    import time

    from .uri import store_exists

    if not store_exists(uri):
        return []
    mlflow = client(uri)
    experiments = call(uri, lambda: mlflow.search_experiments(filter_string=f"name LIKE '{EXPERIMENT_PREFIX}%'"))
    by_dataset = {e.name[len(EXPERIMENT_PREFIX) :]: e.experiment_id for e in experiments}
    wanted = datasets if datasets is not None else _task_order(list(by_dataset))
    out = []
    for dataset in wanted:
        key = Path(str(dataset).rstrip("/")).name  # a data file's experiment is named by its last component
        if key not in by_dataset:
            continue
        runs = call(
            uri,
            lambda: mlflow.search_runs(
                [by_dataset[key]],
                f"tags.`{ROLE_TAG}` = '{SEARCH_ROLE}'",
                max_results=MAX_SEARCHES,
                order_by=["attributes.start_time ASC"],
            ),
        )
        for run in runs:
            tags, metrics = run.data.tags, run.data.metrics
            objective = tags.get("tunedml.objective", "dev_accuracy")
            out.append(
                SearchRecord(
                    tags.get("tunedml.dataset", key),
                    run.info.run_name or tags.get("tunedml.search", ""),
                    tags.get("tunedml.space", ""),
                    run.info.status,
                    trials_run(run),
                    _int(run.data.params.get("search.trials")),
                    objective,
                    metrics.get(f"best_{objective}", metrics.get("best_score")),
                    run.info.run_id,
                    time.strftime("%Y-%m-%d %H:%M", time.localtime(run.info.start_time / 1000)),
                )
            )
    return out


def _task_order(names: list[str]) -> list[str]:
    """Registered tasks in their usual order, then the rest by name (the report's order)."""
    from ..data import TASKS

    return [t for t in TASKS if t in names] + sorted(
        n for n in names if n not in TASKS and n not in ("report", "study")
    )


def space_name(space: str) -> str:
    """``search_spaces/dml.yaml``, ``dml.yaml`` and ``dml`` all name the space ``dml``."""
    return Path(space).stem


# What makes two searches' best scores comparable: the same few-shot protocol and draw size, model,
# objective and way of scoring a configuration (repeats, re-scoring). Short name -> (where, key).
COMPARABLE = {
    "protocol": ("tags", "tunedml.protocol"),
    "k": ("tags", "tunedml.k"),
    "sample_size": ("tags", "tunedml.sample_size"),
    "folds": ("tags", "tunedml.folds"),
    "model": ("tags", "tunedml.model"),
    "metric": ("params", "search.metric"),
    "repeats": ("params", "search.repeats"),
    "rescore": ("params", "search.rescore"),
    "rescore_draws": ("params", "search.rescore_draws"),
}
DEFAULTS = {"rescore": "0"}  # searches recorded before re-scoring existed were not re-scored


def comparison_key(run: Any) -> tuple[tuple[str, str], ...]:
    """The settings of a recorded search that must agree for its best score to be ranked with another's."""
    values = {name: getattr(run.data, where).get(key, DEFAULTS.get(name)) for name, (where, key) in COMPARABLE.items()}
    if values["rescore"] in (None, "0"):
        values["rescore_draws"] = None  # draws of a re-scoring that did not happen
    return tuple((k, str(v)) for k, v in values.items() if v is not None)


def describe_key(key: tuple[tuple[str, str], ...]) -> str:
    return " ".join(f"{k}={v}" for k, v in key)


def parse_filters(filters: list[str] | None) -> dict[str, str]:
    """``--filter k=16`` (repeatable): keep only searches with these settings; ConfigError for a bad one."""
    out = {}
    for item in filters or []:
        name, eq, value = item.partition("=")
        if not eq or name.strip() not in COMPARABLE or not value.strip():
            raise ConfigError(
                f"--filter {item!r}: expected NAME=VALUE with NAME one of {', '.join(COMPARABLE)}, e.g. --filter k=16"
            )
        out[name.strip()] = value.strip()
    return out


def comparable(
    runs: list[Any], dataset: str, filters: dict[str, str] | None = None, like: Any | None = None
) -> list[Any]:
    """The searches among ``runs`` (best first) that may be ranked together: those passing
    ``filters`` and, with ``like`` (a search run), sharing its settings. ConfigError (exit 2) when
    they still fall into groups that cannot be compared: the line lists the groups and how to pick."""
    keep = [r for r in runs if all(dict(comparison_key(r)).get(k) == v for k, v in (filters or {}).items())]
    if like is not None:
        keep = [r for r in keep if comparison_key(r) == comparison_key(like)]
    groups: dict[tuple, list[Any]] = {}
    for run in keep:
        groups.setdefault(comparison_key(run), []).append(run)
    if len(groups) > 1:
        shown = "; ".join(
            f"{len(rs)} with {describe_key(key)} (e.g. run {rs[0].info.run_id})" for key, rs in groups.items()
        )
        differ = [name for name, _ in next(iter(groups)) if len({dict(k).get(name) for k in groups}) > 1]
        example = f"{differ[0]}={dict(next(iter(groups)))[differ[0]]}" if differ else "k=16"
        raise ConfigError(
            f"dataset {dataset!r} has searches that cannot be ranked together: {shown}; pick one with "
            f"--run-id RUN, or keep one kind with --filter NAME=VALUE (e.g. --filter {example})"
        )
    return keep


def find_best(
    uri: str, dataset: str, space: str | None = None, metric: str = "accuracy", filters: dict[str, str] | None = None
) -> BestRecord:
    """The best configuration for ``dataset`` over the finished searches recorded at ``uri``.

    Searches are ranked by their best ``dev_<metric>`` (for a re-scored search, the re-scored mean
    of its choice); ``space`` (a name or a space file) keeps only the searches over that space,
    ``filters`` (see :data:`COMPARABLE`) only those with these settings. Only comparable searches
    are ranked: ConfigError when the remaining ones are not (see :func:`comparable`).
    """
    from .uri import resolve_tracking_uri

    check_metric(metric)
    uri = resolve_tracking_uri(uri)
    where = f"for dataset {dataset!r}" + (f" and space {space_name(space)!r}" if space else "")
    runs = _ranked_searches(uri, dataset, metric, MAX_SEARCHES, space)
    if runs is None:
        raise TrackingError(f"no search recorded {where} at {uri}; run `tunedml search` first")
    runs = comparable(runs, dataset, filters)
    if not runs:
        shown = f" with {' '.join(f'{k}={v}' for k, v in filters.items())}" if filters else ""
        raise TrackingError(f"no finished search recorded {where}{shown} at {uri}")
    return _record(client(uri), uri, runs[0], f"dev_{metric}", dataset)


def best_searches(
    uri: str, dataset: str, metric: str = "accuracy", filters: dict[str, str] | None = None, like: str | None = None
) -> tuple[BestRecord | None, BestRecord | None]:
    """(best search over a space that tries more than CCE, best search over a CCE-only space),
    among comparable searches only (``filters``; ``like``: the id of a search run whose settings
    both must share).

    Searches are ranked by their best trial's dev score, as in :func:`find_best`. A space is
    CCE-only when it fixes ``loss.name`` to ``none`` (or does not mention it and the search did not
    set it either), like search_spaces/cce.yaml; the best configuration of any other space is
    taken as "the best configuration", even where the search found plain CCE best.
    """
    runs = _ranked_searches(uri, dataset, metric, MAX_SEARCHES) or []
    if not runs:
        return None, None
    mlflow = client(uri)
    anchor = _get_run(mlflow, uri, like) if like else None
    if anchor is not None and anchor.data.tags.get(ROLE_TAG) != SEARCH_ROLE:
        anchor = None  # a trial or final run: no search settings to match
    runs = comparable(runs, dataset, filters, anchor)
    found: dict[bool, BestRecord] = {}
    for run in runs:
        cce = _searches_only_cce(mlflow, uri, run)
        if cce not in found:
            found[cce] = _record(mlflow, uri, run, f"dev_{metric}", dataset)
        if len(found) == 2:
            break
    return found.get(False), found.get(True)


@dataclass(frozen=True)
class RecordedConfig:
    """The configuration of a recorded run, where it came from, and how it was chosen."""

    config: dict[str, Any]  # the full flat run config
    source: str
    trials: int | None = None  # trials of its search: the budget
    search_score: float | None = None  # its dev score in the search ("dev at selection")
    rescored: tuple[float, float, int] | None = None  # (mean, std, draws) of its re-scored dev


def run_config(uri: str, run_id: str) -> RecordedConfig:
    """The configuration of a recorded run: a search (its best configuration), a trial or a final
    run. TrackingError when there is no such run or it holds no configuration."""
    from .uri import store_exists

    if not store_exists(uri):
        raise TrackingError(f"run {run_id!r} not found at {uri}: nothing is recorded there")
    mlflow = client(uri)
    run = _get_run(mlflow, uri, run_id)
    role = run.data.tags.get(ROLE_TAG, "")
    where = f"MLflow {role or 'run'} run {run_id}"
    if role == SEARCH_ROLE:
        space = run.data.tags.get("tunedml.space", "")
        objective = run.data.tags.get("tunedml.objective", "dev_accuracy")
        return RecordedConfig(
            _best_config(mlflow, uri, run_id),
            f"{where} (space {space})" if space else where,
            trials_run(run),
            *selection_scores(run, objective),
        )
    if role in (TRIAL_ROLE, FINAL_ROLE) and run.data.params:
        config = from_flat(as_recorded(dict(run.data.params)), source=where).to_flat()
        if role == FINAL_ROLE:
            return RecordedConfig(config, where, _int(run.data.tags.get(TRIALS_TAG)))
        parent_id = run.data.tags.get("mlflow.parentRunId")
        parent = _get_run(mlflow, uri, parent_id) if parent_id else None
        objective = parent.data.tags.get("tunedml.objective", "dev_accuracy") if parent else "dev_accuracy"
        return RecordedConfig(config, where, trials_run(parent) if parent else None, run.data.metrics.get(objective))
    raise TrackingError(
        f"run {run_id} at {uri} is not a tunedml search, trial or final run; "
        "pass the id of a search (its best configuration) or of a trial"
    )


def trials_run(run: Any) -> int | None:
    """How many trials a recorded search ran (finished, stopped early or failed), else its --trials."""
    tags = run.data.tags
    counts = [_int(tags.get(f"tunedml.trials_{s}")) for s in ("finished", "stopped_early", "failed")]
    if all(c is not None for c in counts):
        return sum(counts)
    return _int(run.data.params.get("search.trials"))


def _int(text: str | None) -> int | None:
    return int(text) if text is not None and str(text).isdigit() else None


def _get_run(mlflow: Any, uri: str, run_id: str) -> Any:
    try:
        return mlflow.get_run(run_id)
    except Exception as e:
        if "RESOURCE_DOES_NOT_EXIST" in str(e) or "not found" in str(e).lower() or "No run with" in str(e):
            raise TrackingError(f"run {run_id!r} not found at {uri}") from None
        raise TrackingError(f"cannot read run {run_id!r} at {uri}: {reason(e)}") from None


def _ranked_searches(uri: str, dataset: str, metric: str, limit: int, space: str | None = None) -> list[Any] | None:
    """Finished searches of ``dataset``, best dev score first; None when the dataset has no experiment."""
    from .uri import store_exists

    if not store_exists(uri):
        return None
    mlflow = client(uri)
    experiment = call(uri, lambda: mlflow.get_experiment_by_name(experiment_name(dataset)))
    if experiment is None:
        return None
    objective = f"dev_{metric}"
    query = f"tags.`{ROLE_TAG}` = '{SEARCH_ROLE}' and metrics.`best_{objective}` >= 0"
    if space:
        query += f" and tags.`tunedml.space` = '{space_name(space)}'"
    return call(
        uri,
        lambda: mlflow.search_runs(
            [experiment.experiment_id],
            query,
            max_results=limit,
            order_by=[f"metrics.`best_{objective}` DESC", "attributes.start_time DESC"],
        ),
    )


def _record(mlflow: Any, uri: str, run: Any, objective: str, dataset: str) -> BestRecord:
    search_score, rescored = selection_scores(run, objective)
    return BestRecord(
        run.info.run_id,
        run.data.metrics[f"best_{objective}"],
        _best_config(mlflow, uri, run.info.run_id),
        run.data.tags.get("tunedml.space", ""),
        objective,
        run.data.tags.get("tunedml.dataset", dataset),
        run.info.run_name or "",
        uri,
        trials_run(run),
        search_score,
        rescored,
    )


def selection_scores(run: Any, objective: str) -> tuple[float | None, tuple[float, float, int] | None]:
    """(the chosen trial's search score, its re-scored (mean, std, draws) or None) of a search run."""
    m = run.data.metrics
    search_score = m.get(f"best_search_{objective}", m.get(f"best_{objective}"))
    if f"best_rescored_{objective}" not in m:
        return search_score, None
    return search_score, (
        m[f"best_rescored_{objective}"],
        m.get(f"best_rescored_{objective}_std", 0.0),
        int(m.get("best_rescored_draws", 0)),
    )


def _best_config(mlflow: Any, uri: str, run_id: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        local = call(uri, lambda: mlflow.download_artifacts(run_id, BEST_CONFIG, tmp))
        source = f"{BEST_CONFIG} of run {run_id}"
        return from_flat(as_recorded(flatten(load_yaml(local, source), source)), source=source).to_flat()


def as_recorded(flat: dict[str, Any]) -> dict[str, Any]:
    """A recorded full configuration as it ran: the keys it predates (ADDED_KEYS) at their old values."""
    return {**{k: v for k, v in ADDED_KEYS.items() if k not in flat}, **flat}


def _searches_only_cce(mlflow: Any, uri: str, run: Any) -> bool:
    if "base.loss.name" in run.data.params:  # set on the command line: it wins over the space's value
        return run.data.params["base.loss.name"] == NO_DML
    with tempfile.TemporaryDirectory() as tmp:
        files = call(uri, lambda: mlflow.list_artifacts(run.info.run_id, "space"))
        if not files:
            return False  # no space recorded: cannot tell, so not a baseline
        local = Path(call(uri, lambda: mlflow.download_artifacts(run.info.run_id, "space", tmp)))
        main = (
            local / Path(run.data.tags.get("tunedml.space_file", files[0].path)).name
        )  # the space, beside its includes
        if not main.is_file():
            main = local / Path(files[0].path).name
        own = flatten(load_yaml(main), main.name)
        if "loss.name" not in own and "include" in own:  # the loss may be named in an included file
            own = flatten(read_space_yaml(main), main.name)
        value = own.get("loss.name", NO_DML)
    return value == NO_DML
