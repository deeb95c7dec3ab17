"""Reading recorded searches back: the best configuration of a dataset (`tunedml best`), the best
searches on each side of the DML-vs-CCE comparison, the configuration of any recorded run, and
how many trials a search had."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import flatten, from_flat, load_yaml
from ..errors import TrackingError
from ..losses import NO_DML
from ..metrics import check_metric
from ..space import read_space_yaml
from .store import FINAL_ROLE, ROLE_TAG, SEARCH_ROLE, TRIAL_ROLE, call, client, experiment_name, reason

BEST_CONFIG = "best_config.yaml"
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

    def to_yaml(self) -> str:
        """The config as nested YAML, directly usable as ``tunedml train --config``."""
        return from_flat(self.config, source=f"run {self.run_id}").to_yaml()

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "run_id": self.run_id, "search": self.search, "space": self.space,
                "objective": self.objective, "score": self.score, "tracking_uri": self.tracking_uri,
                "trials": self.trials, "config": self.config}


def space_name(space: str) -> str:
    """``search_spaces/dml.yaml``, ``dml.yaml`` and ``dml`` all name the space ``dml``."""
    return Path(space).stem


def find_best(uri: str, dataset: str, space: str | None = None, metric: str = "accuracy") -> BestRecord:
    """The best configuration for ``dataset`` over every finished search recorded at ``uri``.

    Searches are ranked by their best trial's ``dev_<metric>``; ``space`` (a name or a space file)
    keeps only the searches over that space.
    """
    from .uri import resolve_tracking_uri

    check_metric(metric)
    uri = resolve_tracking_uri(uri)
    where = f"for dataset {dataset!r}" + (f" and space {space_name(space)!r}" if space else "")
    runs = _ranked_searches(uri, dataset, metric, 1, space)
    if runs is None:
        raise TrackingError(f"no search recorded {where} at {uri}; run `tunedml search` first")
    if not runs:
        raise TrackingError(f"no finished search recorded {where} at {uri}")
    return _record(client(uri), uri, runs[0], f"dev_{metric}", dataset)


def best_searches(uri: str, dataset: str, metric: str = "accuracy") -> tuple[BestRecord | None, BestRecord | None]:
    """(best search over a space that tries more than CCE, best search over a CCE-only space).

    Searches are ranked by their best trial's dev score, as in :func:`find_best`. A space is
    CCE-only when it fixes ``loss.name`` to ``none`` (or does not mention it and the search did not
    set it either), like search_spaces/cce.yaml; the best configuration of any other space is
    taken as "the best configuration", even where the search found plain CCE best.
    """
    runs = _ranked_searches(uri, dataset, metric, MAX_SEARCHES) or []
    mlflow = client(uri)
    found: dict[bool, BestRecord] = {}
    for run in runs:
        cce = _searches_only_cce(mlflow, uri, run)
        if cce not in found:
            found[cce] = _record(mlflow, uri, run, f"dev_{metric}", dataset)
        if len(found) == 2:
            break
    return found.get(False), found.get(True)


def run_config(uri: str, run_id: str) -> tuple[dict[str, Any], str, int | None]:
    """(full flat config, description, trials of its search) of a recorded run: a search (its best
    configuration), a trial or a final run. TrackingError when there is no such run or it holds no
    configuration."""
    mlflow = client(uri)
    run = _get_run(mlflow, uri, run_id)
    role = run.data.tags.get(ROLE_TAG, "")
    where = f"MLflow {role or 'run'} run {run_id}"
    if role == SEARCH_ROLE:
        space = run.data.tags.get("tunedml.space", "")
        return _best_config(mlflow, uri, run_id), f"{where} (space {space})" if space else where, trials_run(run)
    if role in (TRIAL_ROLE, FINAL_ROLE) and run.data.params:
        if role == TRIAL_ROLE:
            parent = run.data.tags.get("mlflow.parentRunId")
            trials = trials_run(_get_run(mlflow, uri, parent)) if parent else None
        else:
            trials = _int(run.data.tags.get(TRIALS_TAG))
        return from_flat(dict(run.data.params), source=where).to_flat(), where, trials
    raise TrackingError(f"run {run_id} at {uri} is not a tunedml search, trial or final run; "
                        "pass the id of a search (its best configuration) or of a trial")


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
    mlflow = client(uri)
    experiment = call(uri, lambda: mlflow.get_experiment_by_name(experiment_name(dataset)))
    if experiment is None:
        return None
    objective = f"dev_{metric}"
    query = f"tags.`{ROLE_TAG}` = '{SEARCH_ROLE}' and metrics.`best_{objective}` >= 0"
    if space:
        query += f" and tags.`tunedml.space` = '{space_name(space)}'"
    return call(uri, lambda: mlflow.search_runs([experiment.experiment_id], query, max_results=limit,
                                                order_by=[f"metrics.`best_{objective}` DESC", "attributes.start_time DESC"]))


def _record(mlflow: Any, uri: str, run: Any, objective: str, dataset: str) -> BestRecord:
    return BestRecord(run.info.run_id, run.data.metrics[f"best_{objective}"], _best_config(mlflow, uri, run.info.run_id),
                      run.data.tags.get("tunedml.space", ""), objective, run.data.tags.get("tunedml.dataset", dataset),
                      run.info.run_name or "", uri, trials_run(run))


def _best_config(mlflow: Any, uri: str, run_id: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        local = call(uri, lambda: mlflow.download_artifacts(run_id, BEST_CONFIG, tmp))
        source = f"{BEST_CONFIG} of run {run_id}"
        return from_flat(flatten(load_yaml(local, source), source), source=source).to_flat()


def _searches_only_cce(mlflow: Any, uri: str, run: Any) -> bool:
    if "base.loss.name" in run.data.params:  # set on the command line: it wins over the space's value
        return run.data.params["base.loss.name"] == NO_DML
    with tempfile.TemporaryDirectory() as tmp:
        files = call(uri, lambda: mlflow.list_artifacts(run.info.run_id, "space"))
        if not files:
            return False  # no space recorded: cannot tell, so not a baseline
        local = Path(call(uri, lambda: mlflow.download_artifacts(run.info.run_id, "space", tmp)))
        main = local / Path(run.data.tags.get("tunedml.space_file", files[0].path)).name  # the space, beside its includes
        if not main.is_file():
            main = local / Path(files[0].path).name
        own = flatten(load_yaml(main), main.name)
        if "loss.name" not in own and "include" in own:  # the loss may be named in an included file
            own = flatten(read_space_yaml(main), main.name)
        value = own.get("loss.name", NO_DML)
    return value == NO_DML
