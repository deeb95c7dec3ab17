"""MLflow tracking: every search browsable, the best configuration per dataset recorded.

The only module that talks to MLflow. Layout in the tracking store:

- one experiment per dataset, ``tunedml/<dataset>``, so that the MLflow UI's compare view puts
  every search of a dataset (any space, model or budget) side by side;
- one parent run per search (tag ``tunedml.role=search``) with the search's settings as tags and
  params, the space file as an artifact and, when it ends, the best trial as ``best.*`` params,
  ``best_score``, ``best_config.yaml`` and Optuna's plots;
- one nested child run per trial (tag ``mlflow.parentRunId``) with the trial's full flat config as
  params and its per-epoch dev metrics (step = epoch).

All writes come from the driver process, through :class:`TrialRecorder`, a Ray Tune callback:
trials never open the store, so a SQLite file never sees concurrent writers, and the same code
works unchanged against an ``mlflow server``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlparse

from ray import tune

from .errors import ConfigError, TrackingError

EXPERIMENT_PREFIX = "tunedml/"
DEFAULT_DB = "mlflow.db"
ARTIFACT_FOLDER = "mlartifacts"  # beside a SQLite database: where its runs' files go
BEST_CONFIG = "best_config.yaml"
ROLE_TAG, SEARCH_ROLE, TRIAL_ROLE = "tunedml.role", "search", "trial"
TRIAL_METRICS = ("train_loss",)  # besides every dev_* value a trial reports
CHECK_TIMEOUT_S = 5


# ----------------------------------------------------------------- public API: where, check, best

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

    def to_yaml(self) -> str:
        """The config as nested YAML, directly usable as ``tunedml train --config``."""
        from .config import from_flat

        return from_flat(self.config, source=f"run {self.run_id}").to_yaml()

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "run_id": self.run_id, "search": self.search, "space": self.space,
                "objective": self.objective, "score": self.score, "tracking_uri": self.tracking_uri,
                "config": self.config}


def find_best(uri: str, dataset: str, space: str | None = None, metric: str = "accuracy") -> BestRecord:
    """The best configuration for ``dataset`` over every finished search recorded at ``uri``.

    Searches are ranked by their best trial's ``dev_<metric>``; ``space`` (a name or a space file)
    keeps only the searches over that space.
    """
    from .search import METRICS

    if metric not in METRICS:
        raise ConfigError(f"--metric: unknown metric {metric!r}; valid: {', '.join(METRICS)}")
    uri = resolve_tracking_uri(uri)
    client = _client(uri)
    objective = f"dev_{metric}"
    where = f"for dataset {dataset!r}" + (f" and space {space_name(space)!r}" if space else "")
    experiment = _call(uri, lambda: client.get_experiment_by_name(experiment_name(dataset)))
    if experiment is None:
        raise TrackingError(f"no search recorded {where} at {uri}; run `tunedml search` first")
    query = f"tags.`{ROLE_TAG}` = '{SEARCH_ROLE}' and metrics.`best_{objective}` >= 0"
    if space:
        query += f" and tags.`tunedml.space` = '{space_name(space)}'"
    runs = _call(uri, lambda: client.search_runs([experiment.experiment_id], query, max_results=1,
                                                 order_by=[f"metrics.`best_{objective}` DESC", "attributes.start_time DESC"]))
    if not runs:
        raise TrackingError(f"no finished search recorded {where} at {uri}")
    run = runs[0]
    return BestRecord(run.info.run_id, run.data.metrics[f"best_{objective}"], _best_config(client, uri, run.info.run_id),
                      run.data.tags.get("tunedml.space", ""), objective, run.data.tags.get("tunedml.dataset", dataset),
                      run.info.run_name or "", uri)


def resolve_tracking_uri(uri: str | None = None) -> str:
    """``uri``, else $MLFLOW_TRACKING_URI, else ./mlflow.db, with every local path made absolute.

    Absolute because Ray runs each trial in its own directory and MLflow resolves a relative SQLite
    path against whichever directory it runs in. A plain path is a SQLite file if it ends in .db,
    else a file store folder.
    """
    uri = (uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_DB).strip()
    scheme = urlparse(uri).scheme
    if not scheme or len(scheme) == 1:  # a plain path (or a Windows drive letter)
        path = Path(uri).expanduser().resolve()
        return f"sqlite:///{path}" if path.suffix == ".db" else path.as_uri()
    if scheme == "sqlite":
        path = _sqlite_path(uri)
        return uri if path == ":memory:" else f"sqlite:///{Path(path).expanduser().resolve()}"
    if scheme == "file":
        return Path(urlparse(uri).path).expanduser().resolve().as_uri()
    return uri.rstrip("/")


def check_tracking(uri: str) -> None:
    """Fail fast, before any trial starts, when ``uri`` cannot be written: TrackingError says why."""
    scheme = urlparse(uri).scheme
    check = _CHECKS.get(scheme)
    if check is None:
        raise TrackingError(f"cannot use MLflow tracking URI {uri}: unsupported scheme {scheme!r}; use "
                            "sqlite:///path/mlflow.db, http(s)://host:port (an mlflow server), file:///folder "
                            "or a database URI (postgresql://, mysql://, mssql://)")
    check(uri)


def experiment_name(dataset: str) -> str:
    """One experiment per dataset; a data file or folder is named by its last path component."""
    return EXPERIMENT_PREFIX + Path(str(dataset).rstrip("/")).name


def space_name(space: str) -> str:
    """``search_spaces/dml.yaml``, ``dml.yaml`` and ``dml`` all name the space ``dml``."""
    return Path(space).stem


# ----------------------------------------------------------------- checks per scheme

def _sqlite_path(uri: str) -> str:
    return uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else uri[len("sqlite://"):]


def _check_sqlite(uri: str) -> None:
    path = _sqlite_path(uri)
    if path in ("", ":memory:"):
        raise TrackingError(f"cannot use MLflow tracking URI {uri}: an in-memory database forgets every "
                            "search when the process ends; give a file, e.g. sqlite:///mlflow.db")
    _check_writable_folder(uri, Path(path).parent)
    if Path(path).exists() and not os.access(path, os.W_OK):
        raise TrackingError(f"cannot use MLflow tracking URI {uri}: {path} is not writable")
    _check_store(uri)  # opens (and on first use creates) the database


def _check_file_store(uri: str) -> None:
    _check_writable_folder(uri, Path(urlparse(uri).path))
    _check_store(uri)


def _check_writable_folder(uri: str, folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TrackingError(f"cannot use MLflow tracking URI {uri}: cannot create {folder} ({e.strerror})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise TrackingError(f"cannot use MLflow tracking URI {uri}: folder {folder} is not writable")


def _check_server(uri: str) -> None:
    with _quick_http():
        _check_store(uri)


def _check_store(uri: str) -> None:
    client = _client(uri)
    _call(uri, lambda: client.search_experiments(max_results=1), verb="reach")


_CHECKS: dict[str, Callable[[str], None]] = {
    "sqlite": _check_sqlite, "file": _check_file_store, "http": _check_server, "https": _check_server,
    "postgresql": _check_store, "mysql": _check_store, "mssql": _check_store,
}


@contextlib.contextmanager
def _quick_http() -> Iterator[None]:
    """No retries and a short timeout: a check should fail in seconds, not after minutes of backoff."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(CHECK_TIMEOUT_S)})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _call(uri: str, fn: Callable[[], Any], verb: str = "use") -> Any:
    """Run a store operation; any failure becomes one TrackingError line naming the URI."""
    try:
        return fn()
    except TrackingError:
        raise
    except Exception as e:  # MlflowException, OSError, SQLAlchemy and requests errors alike
        raise TrackingError(f"cannot {verb} MLflow at {uri}: {_reason(e)}") from None


def _reason(e: BaseException) -> str:
    """The informative part of a store error: 'Connection refused' rather than a page of URLs."""
    text = str(e) or type(e).__name__
    errno = re.search(r"\[Errno -?\d+\] ([^\"')\]]+)", text)
    if errno:
        return errno.group(1).strip()
    status = re.search(r"(\d{3}) (Client|Server) Error[^\n]*", text)
    return status.group(0)[:200] if status else text.splitlines()[0][:300]


def _client(uri: str):
    from mlflow import MlflowClient

    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # stdout carries --json output
    return MlflowClient(tracking_uri=uri, registry_uri=uri if urlparse(uri).scheme != "file" else None)


def _best_config(client: Any, uri: str, run_id: str) -> dict[str, Any]:
    from .config import flatten, from_flat, load_yaml

    with tempfile.TemporaryDirectory() as tmp:
        local = _call(uri, lambda: client.download_artifacts(run_id, BEST_CONFIG, tmp))
        source = f"{BEST_CONFIG} of run {run_id}"
        return from_flat(flatten(load_yaml(local, source), source), source=source).to_flat()


# ----------------------------------------------------------------- the MLflow UI

def serve_ui(uri: str, port: int = 5000) -> int:
    """Run the MLflow UI on ``uri`` at http://127.0.0.1:PORT in the foreground until Ctrl-C."""
    if urlparse(uri).scheme in ("http", "https"):
        raise TrackingError(f"{uri} is an MLflow server already: open it in a browser")
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            raise TrackingError(f"cannot serve the MLflow UI on 127.0.0.1:{port}: {e.strerror}; pass --port") from None
    print(f"MLflow UI for {uri} at http://127.0.0.1:{port} (Ctrl-C stops it)", file=sys.stderr, flush=True)
    proc = subprocess.Popen(ui_command(uri, port), env={**os.environ, **UI_ENV})

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)  # a terminated `tunedml ui` takes its server along
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)


UI_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # GenAI job workers: seven processes tunedml never uses


def ui_command(uri: str, port: int) -> list[str]:
    """``mlflow server`` on loopback only; experiments created from the UI keep files beside the db."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    artifacts = _artifact_root(uri)
    return cmd + (["--artifacts-destination", artifacts] if artifacts else [])


def _artifact_root(uri: str) -> str | None:
    """Where a SQLite store's runs keep their files: beside the database, not in the current folder."""
    if urlparse(uri).scheme != "sqlite":
        return None  # a server decides; a file store keeps them inside its folder
    return str(Path(_sqlite_path(uri)).parent / ARTIFACT_FOLDER)


# ----------------------------------------------------------------- recording a search

@dataclass
class SearchTracker:
    """The parent run of one search; hands out the callback that records its trials."""

    uri: str
    client: Any
    experiment_id: str
    run_id: str
    base: dict[str, Any]  # the search's fixed flat keys, under every trial's searched values
    space: Any  # SearchSpace
    options: Any  # SearchOptions, with the search's name pinned
    notes: list[str] = field(default_factory=list)
    _recorder: "TrialRecorder | None" = None

    @classmethod
    def open(cls, uri: str, driver_cfg: Any, base: dict[str, Any], space: Any, options: Any) -> "SearchTracker":
        """Start the parent run, or with ``options.resume`` continue the one of that search."""
        from .search import experiment_path, read_state

        storage, name = experiment_path(driver_cfg.data.dataset, space, options)
        options = replace(options, name=name)
        client = _client(uri)
        experiment_id = _experiment(client, uri, driver_cfg.data.dataset)
        run_id = None
        if options.resume:
            recorded = read_state(f"{storage.rstrip('/')}/{name}").get("mlflow", {})
            run_id = recorded.get("run_id") if recorded.get("tracking_uri") == uri else None
            run_id = run_id or _find_search_run(client, uri, experiment_id, name)
        tracker = cls(uri, client, experiment_id, run_id or "", base, space, options)
        if run_id:
            tracker._reopen()
        else:
            tracker._start(driver_cfg, name, f"{storage.rstrip('/')}/{name}")
        return tracker

    @property
    def state(self) -> dict[str, Any]:
        """What the search's state file keeps so that --resume continues this same parent run."""
        return {"mlflow": {"tracking_uri": self.uri, "experiment_id": self.experiment_id, "run_id": self.run_id}}

    def describe(self) -> dict[str, str]:
        return {"tracking_uri": self.uri, "experiment": experiment_name(self.base.get("data.dataset", "")),
                "run_id": self.run_id}

    def callback(self) -> "TrialRecorder":
        if self._recorder is None:
            self._recorder = TrialRecorder(self)
        return self._recorder

    def __enter__(self) -> "SearchTracker":
        return self

    def __exit__(self, kind, error, tb) -> None:
        """A search that raised leaves its parent KILLED (interrupted) or FAILED, never RUNNING, and
        its unfinished trials KILLED with ``tunedml.interrupted=true`` (--resume starts them afresh)."""
        if error is None:
            return
        if self._recorder is not None:
            self._quietly(self._recorder.close_unfinished)
        interrupted = isinstance(error, KeyboardInterrupt)  # Ctrl-C: --resume continues this run
        tag, status = ("tunedml.interrupted", "KILLED") if interrupted else ("tunedml.error", "FAILED")
        self._quietly(lambda: self.client.set_tag(self.run_id, tag, (str(error) or "interrupted")[:500]))
        self._quietly(lambda: self.client.set_terminated(self.run_id, status))

    def finish(self, result: Any) -> None:
        """Record the outcome: best.* params, best_score, best_config.yaml, plots; end the parent."""
        counts = {s: sum(t.status == s for t in result.trials) for s in ("FINISHED", "KILLED", "FAILED")}
        self._set_tags({"tunedml.trials_finished": counts["FINISHED"], "tunedml.trials_stopped_early": counts["KILLED"],
                        "tunedml.trials_failed": counts["FAILED"], "tunedml.seconds": round(result.seconds, 1)})
        if result.best is None:
            self._set_tags({"tunedml.error": "no trial produced a score"})
            self.client.set_terminated(self.run_id, "FAILED")
            return
        self._record_best(result)
        self._log_plots(result)
        if self.notes:
            self._set_tags({"tunedml.notes": "; ".join(self.notes)[:5000]})
        self.client.set_terminated(self.run_id, "FINISHED")

    # -- parent run

    def _start(self, cfg: Any, name: str, results: str) -> None:
        from . import __version__

        o = self.options
        tags = {
            ROLE_TAG: SEARCH_ROLE, "tunedml.dataset": cfg.data.dataset, "tunedml.space": self.space.name,
            "tunedml.space_file": str(Path(self.space.path).resolve()), "tunedml.space_sha256": self.space.sha256,
            "tunedml.model": cfg.model.name, "tunedml.protocol": cfg.data.protocol,
            "tunedml.objective": o.objective, "tunedml.search": name, "tunedml.results": results,
            "tunedml.ray_address": o.address or "local", "tunedml.version": __version__,
            **({"tunedml.k": cfg.data.k} if cfg.data.protocol == "kshot" else
               {"tunedml.sample_size": cfg.data.sample_size, "tunedml.folds": cfg.data.folds, "tunedml.fold": cfg.data.fold}),
        }
        run = _call(self.uri, lambda: self.client.create_run(self.experiment_id, run_name=name,
                                                             tags={k: str(v) for k, v in tags.items()}))
        self.run_id = run.info.run_id
        params = {f"search.{k}": getattr(o, k) for k in ("trials", "scheduler", "metric", "repeats", "concurrency",
                                                         "seed", "cpus_per_trial", "gpus_per_trial", "time_budget_s")}
        self._log_params({**params, **{f"base.{k}": v for k, v in self.base.items()}})
        self.client.log_text(self.run_id, self.space.text, f"space/{Path(self.space.path).name}")

    def _reopen(self) -> None:
        """--resume: the same parent run goes on; its children of interrupted trials are closed."""
        run = _call(self.uri, lambda: self.client.get_run(self.run_id))
        self.client.update_run(self.run_id, status="RUNNING")
        for tag in ("tunedml.interrupted", "tunedml.error"):
            if tag in run.data.tags:
                self.client.delete_tag(self.run_id, tag)
        self._set_tags({"tunedml.resumed": int(run.data.tags.get("tunedml.resumed", 0)) + 1})
        for child in self._children():
            if child.info.status == "RUNNING":  # its driver died; Ray starts that trial afresh
                self.client.set_tag(child.info.run_id, "tunedml.interrupted", "true")
                self.client.set_terminated(child.info.run_id, "KILLED")

    def _children(self) -> list[Any]:
        return self.client.search_runs([self.experiment_id], f"tags.`mlflow.parentRunId` = '{self.run_id}'",
                                       max_results=10_000)

    def _record_best(self, result: Any) -> None:
        from .config import from_flat

        best = result.best
        self._log_params({f"best.{k}": v for k, v in best.config.items()})
        metrics = {"best_score": best.score, f"best_{result.objective}": best.score}
        child = self.callback().runs.get(best.trial_id) or self._child_of(best.trial_id)
        if child:
            latest = self.client.get_run(child).data.metrics
            metrics.update({f"best_{k}": v for k, v in latest.items() if k.startswith("dev_")})
            metrics[f"best_{result.objective}"] = best.score
            self._set_tags({"tunedml.best_run_id": child})
        self._set_tags({"tunedml.best_trial": best.trial_id})
        self._log_metrics(metrics)
        header = (f"# best {result.objective} {best.score:.4f} on {result.dataset}: trial {best.trial_id} of search "
                  f"{Path(result.path).name} (MLflow run {self.run_id})\n# use: tunedml train --config {BEST_CONFIG}\n")
        self.client.log_text(self.run_id, header + from_flat(result.best_config, source="best trial").to_yaml(), BEST_CONFIG)

    def _child_of(self, trial_id: str) -> str | None:
        runs = [r for r in self._children() if r.data.tags.get("ray.trial_id") == trial_id
                and r.data.tags.get("tunedml.interrupted") != "true"]
        return runs[0].info.run_id if runs else None

    def _log_plots(self, result: Any) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            made = write_optuna_plots(self.space, result.trials, Path(tmp), self.notes)
            if made:
                self.client.log_artifacts(self.run_id, tmp, "plots")

    # -- small helpers

    def _log_params(self, params: dict[str, Any]) -> None:
        """Params never change in MLflow: on resume, keys already there keep their first value."""
        from mlflow.entities import Param

        have = self.client.get_run(self.run_id).data.params
        fresh = [Param(k, _param_value(v)) for k, v in params.items() if k not in have]
        changed = sorted(k for k, v in params.items() if k in have and have[k] != _param_value(v))
        if changed:
            self.notes.append(f"params {', '.join(changed)} keep their first recorded values")
        for i in range(0, len(fresh), 100):
            self.client.log_batch(self.run_id, params=fresh[i:i + 100])

    def _log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def _set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    @staticmethod
    def _quietly(fn: Callable[[], Any]) -> None:
        with contextlib.suppress(Exception):
            fn()


def _experiment(client: Any, uri: str, dataset: str) -> str:
    """The dataset's experiment id, created on first use (restored if it was deleted in the UI)."""
    name = experiment_name(dataset)
    found = _call(uri, lambda: client.get_experiment_by_name(name))
    if found is None:
        root = _artifact_root(uri)
        location = (Path(root) / name.replace("/", "_")).as_uri() if root else None
        try:
            return client.create_experiment(name, artifact_location=location, tags={"tunedml.dataset": str(dataset)})
        except Exception:  # created meanwhile by another search
            found = _call(uri, lambda: client.get_experiment_by_name(name))
            if found is None:
                raise
    if found.lifecycle_stage == "deleted":
        client.restore_experiment(found.experiment_id)
    return found.experiment_id


def _find_search_run(client: Any, uri: str, experiment_id: str, name: str) -> str | None:
    runs = _call(uri, lambda: client.search_runs(
        [experiment_id], f"tags.`{ROLE_TAG}` = '{SEARCH_ROLE}' and tags.`tunedml.search` = '{name}'", max_results=1))
    return runs[0].info.run_id if runs else None


def _param_value(value: Any) -> str:
    return str(value)[:6000]


# ----------------------------------------------------------------- one child run per trial

class TrialRecorder(tune.Callback):
    """Ray Tune callback, run in the driver: one nested MLflow run per trial.

    A tracking failure in the middle of a search is reported once and the search goes on: losing
    hours of trials to a network hiccup would be worse than a gap in the record (Ray keeps every
    result in its own folder).
    """

    def __init__(self, tracker: SearchTracker):
        self.tracker = tracker
        self.client = tracker.client
        self.runs: dict[str, str] = {}  # trial id -> child run id
        self.unfinished: set[str] = set()  # trial ids started and not yet ended
        self.node: dict[str, str] = {}  # trial id -> the node it last reported from
        self.warned = False
        for run in tracker._children() if tracker.options.resume else []:
            if run.data.tags.get("tunedml.interrupted") != "true" and "ray.trial_id" in run.data.tags:
                self.runs[run.data.tags["ray.trial_id"]] = run.info.run_id

    def on_trial_start(self, iteration, trials, trial, **info):
        self._safely(self._start, trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._safely(self._result, trial, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        from .search import trial_status

        status = trial_status(trial)
        tags = {"tunedml.stopped_early": "true"} if status == "KILLED" else {}
        self._safely(self._end, trial, status, tags)

    def on_trial_error(self, iteration, trials, trial, **info):
        from .search import trial_error

        self._safely(self._end, trial, "FAILED", {"tunedml.error": trial_error(trial)})

    # --

    def _start(self, trial: Any) -> None:
        from mlflow.entities import Param

        self.unfinished.add(trial.trial_id)
        if trial.trial_id in self.runs:  # restarted (resumed or unpaused): same run goes on
            self.client.update_run(self.runs[trial.trial_id], status="RUNNING")
            return
        tags = {"mlflow.parentRunId": self.tracker.run_id, ROLE_TAG: TRIAL_ROLE, "ray.trial_id": trial.trial_id,
                "tunedml.dataset": str(self.tracker.base.get("data.dataset", ""))}
        run = self.client.create_run(self.tracker.experiment_id, run_name=trial.trial_id, tags=tags)
        self.runs[trial.trial_id] = run.info.run_id
        params = [Param(k, _param_value(v)) for k, v in self._flat_config(trial.config).items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(run.info.run_id, params=params[i:i + 100])

    def _flat_config(self, config: dict[str, Any]) -> dict[str, Any]:
        from .config import from_flat
        from .space import config_keys

        merged = {**self.tracker.base, **config_keys(config)}
        try:
            return from_flat(merged, source="trial config").to_flat()
        except Exception:  # the trial will fail on it too, and say why; record what it was given
            return merged

    def _result(self, trial: Any, result: dict[str, Any]) -> None:
        from mlflow.entities import Metric, RunTag

        run_id = self.runs.get(trial.trial_id)
        if run_id is None or result.get("epoch") is None:
            return
        now, step = int(time.time() * 1000), int(result["epoch"])
        metrics = [Metric(k, float(v), now, step) for k, v in result.items()
                   if (k in TRIAL_METRICS or k.startswith("dev_")) and isinstance(v, (int, float))]
        tags = []
        node = str(result.get("node_id") or "")
        if node and self.node.get(trial.trial_id) != node:  # first result, or restarted elsewhere
            tags = [RunTag("ray.node_id", node)]
            self.node[trial.trial_id] = node
        self.client.log_batch(run_id, metrics=metrics, tags=tags)

    def _end(self, trial: Any, status: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.unfinished.discard(trial.trial_id)
        run_id = self.runs.get(trial.trial_id)
        if run_id is None:
            return
        if tags:
            self.client.log_batch(run_id, tags=[RunTag(k, v[:5000]) for k, v in tags.items()])
        self.client.set_terminated(run_id, status)

    def close_unfinished(self) -> None:
        """The search stopped under these trials: mark their runs interrupted (KILLED)."""
        for trial_id in sorted(self.unfinished):
            run_id = self.runs.pop(trial_id, None)
            if run_id:
                self.client.set_tag(run_id, "tunedml.interrupted", "true")
                self.client.set_terminated(run_id, "KILLED")
        self.unfinished.clear()

    def _safely(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as e:
            if not self.warned:
                self.warned = True
                print(f"tunedml: warning: MLflow at {self.tracker.uri} failed ({_reason(e)}); the search goes on, "
                      "its results stay in Ray's folder", file=sys.stderr, flush=True)


# ----------------------------------------------------------------- Optuna's plots of a finished search

PLOTS = {  # artifact name -> optuna.visualization function
    "optimization_history": "plot_optimization_history",
    "param_importances": "plot_param_importances",
    "parallel_coordinate": "plot_parallel_coordinate",
    "slice": "plot_slice",
}


def optuna_params(space: Any, config: dict[str, Any]) -> dict[str, Any]:
    """A trial's config keys back to Optuna's parameter names (``key|option`` inside branches)."""
    out = {d.name: config[d.key] for d in space.dists if d.key in config}
    for key, (name, options) in space.branches.items():
        option = config.get(key)
        if option in options:
            out[name] = option
            out.update(optuna_params(options[option], config))
    return out


def optuna_study(space: Any, trials: list[Any]) -> Any:
    """An in-memory Optuna study rebuilt from the search's trials, for Optuna's visualisations."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = space.optuna_distributions()
    study = optuna.create_study(direction="maximize")
    states = {"FINISHED": optuna.trial.TrialState.COMPLETE, "KILLED": optuna.trial.TrialState.PRUNED,
              "FAILED": optuna.trial.TrialState.FAIL}
    for t in trials:
        params = optuna_params(space.root, t.config)
        state = states[t.status] if t.score is not None or t.status == "FAILED" else optuna.trial.TrialState.FAIL
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={k: dists[k] for k in params}, state=state,
            value=t.score if state == optuna.trial.TrialState.COMPLETE else None,
            intermediate_values={t.epochs: t.score} if state == optuna.trial.TrialState.PRUNED else None))
    return study


def write_optuna_plots(space: Any, trials: list[Any], folder: Path, notes: list[str]) -> list[str]:
    """Write each plot as a self-contained HTML file (viewable offline); a plot that cannot be
    made (too few trials, nothing varied) is skipped with a note, never failing the search."""
    import warnings

    import optuna.visualization as vis

    try:
        study = optuna_study(space, trials)
    except Exception as e:
        notes.append(f"no Optuna plots: {_reason(e)}")
        return []
    made = []
    for name, fn in PLOTS.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                getattr(vis, fn)(study).write_html(str(folder / f"{name}.html"), include_plotlyjs="cdn")
            made.append(name)
        except Exception as e:
            notes.append(f"plot {name} skipped: {_reason(e)}")
    return made


# ---- final evaluation (retrain / report)
#
# `tunedml retrain` records one final run per (dataset, configuration) in the dataset's experiment
# (tag tunedml.role=final, tunedml.final_role=best|baseline) with per-draw test metrics (step = draw),
# their mean and std, the paired difference to the baseline with its interval, the comparison as
# JSON and, on the best configuration's run, the test embeddings behind the report's projection
# plot (and the saved model). `tunedml report` reads the latest pair per dataset back and logs the
# report itself to the experiment `tunedml/report`.

FINAL_ROLE, REPORT_ROLE = "final", "report"
FINAL_ROLE_TAG = "tunedml.final_role"
COMPARISON_FILE, EMBEDDINGS_FILE, FINAL_CONFIG = "comparison.json", "embeddings.npz", "config.yaml"
REPORT_EXPERIMENT = EXPERIMENT_PREFIX + "report"
MAX_SEARCHES = 1000  # searches of one dataset looked at when choosing the default configurations


def run_config(uri: str, run_id: str) -> tuple[dict[str, Any], str]:
    """(full flat config, description) of a recorded run: a search (its best configuration), a trial
    or a final run. TrackingError when there is no such run or it holds no configuration."""
    from .config import from_flat

    client = _client(uri)
    try:
        run = client.get_run(run_id)
    except Exception as e:
        if "RESOURCE_DOES_NOT_EXIST" in str(e) or "not found" in str(e).lower() or "No run with" in str(e):
            raise TrackingError(f"run {run_id!r} not found at {uri}") from None
        raise TrackingError(f"cannot read run {run_id!r} at {uri}: {_reason(e)}") from None
    role = run.data.tags.get(ROLE_TAG, "")
    where = f"MLflow {role or 'run'} run {run_id}"
    if role == SEARCH_ROLE:
        space = run.data.tags.get("tunedml.space", "")
        return _best_config(client, uri, run_id), f"{where} (space {space})" if space else where
    if role in (TRIAL_ROLE, FINAL_ROLE) and run.data.params:
        return from_flat(dict(run.data.params), source=where).to_flat(), where
    raise TrackingError(f"run {run_id} at {uri} is not a tunedml search, trial or final run; "
                        "pass the id of a search (its best configuration) or of a trial")


def best_searches(uri: str, dataset: str, metric: str = "accuracy") -> tuple[BestRecord | None, BestRecord | None]:
    """(best search over a space that tries more than CCE, best search over a CCE-only space).

    Searches are ranked by their best trial's dev score, as in :func:`find_best`. A space is
    CCE-only when it fixes ``loss.name`` to ``none`` (or does not mention it and the search did not
    set it either), like search_spaces/cce.yaml; the best configuration of any other space is
    taken as "the best configuration", even where the search found plain CCE best.
    """
    client = _client(uri)
    experiment = _call(uri, lambda: client.get_experiment_by_name(experiment_name(dataset)))
    if experiment is None:
        return None, None
    objective = f"dev_{metric}"
    runs = _call(uri, lambda: client.search_runs(
        [experiment.experiment_id], f"tags.`{ROLE_TAG}` = '{SEARCH_ROLE}' and metrics.`best_{objective}` >= 0",
        max_results=MAX_SEARCHES, order_by=[f"metrics.`best_{objective}` DESC", "attributes.start_time DESC"]))
    found: dict[bool, BestRecord] = {}
    for run in runs:
        cce = _searches_only_cce(client, uri, run)
        if cce not in found:
            found[cce] = BestRecord(run.info.run_id, run.data.metrics[f"best_{objective}"],
                                    _best_config(client, uri, run.info.run_id), run.data.tags.get("tunedml.space", ""),
                                    objective, dataset, run.info.run_name or "", uri)
        if len(found) == 2:
            break
    return found.get(False), found.get(True)


def _searches_only_cce(client: Any, uri: str, run: Any) -> bool:
    from .config import flatten, load_yaml
    from .losses import NO_DML

    if "base.loss.name" in run.data.params:  # set on the command line: it wins over the space's value
        return run.data.params["base.loss.name"] == NO_DML
    with tempfile.TemporaryDirectory() as tmp:
        files = _call(uri, lambda: client.list_artifacts(run.info.run_id, "space"))
        if not files:
            return False  # no space recorded: cannot tell, so not a baseline
        local = _call(uri, lambda: client.download_artifacts(run.info.run_id, files[0].path, tmp))
        value = flatten(load_yaml(local), files[0].path).get("loss.name", NO_DML)
    return value == NO_DML


def log_final(uri: str, comparison: Any, model_dir: str | Path | None = None) -> dict[str, str]:
    """Record a final evaluation (a :class:`tunedml.retrain.Comparison`): one run per configuration.

    Returns ``{role: run_id}``. Runs are marked FAILED if writing them fails half-way.
    """
    import json

    import numpy as np

    from .config import from_flat
    from .retrain import ROLES

    client = _client(uri)
    experiment_id = _experiment(client, uri, comparison.dataset)
    group = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    run_ids: dict[str, str] = {}
    try:
        for role in ROLES:
            result = comparison.result(role)
            c = result.candidate
            tags = {ROLE_TAG: FINAL_ROLE, FINAL_ROLE_TAG: role, "tunedml.dataset": comparison.dataset,
                    "tunedml.loss": c.loss, "tunedml.source": c.source[:5000], "tunedml.comparison": group,
                    "tunedml.protocol": comparison.protocol, "tunedml.draws": str(len(result.draws)),
                    **({"tunedml.search_run_id": c.run_id} if c.run_id else {})}
            run = _call(uri, lambda: client.create_run(experiment_id, run_name=f"final-{role}-{c.loss}", tags=tags))
            run_ids[role] = run.info.run_id
            _log_final_run(client, run.info.run_id, comparison, role, from_flat(c.config, source=c.source).to_yaml())
        client.set_tag(run_ids["best"], "tunedml.baseline_run_id", run_ids["baseline"])
        client.set_tag(run_ids["baseline"], "tunedml.best_run_id", run_ids["best"])
        client.log_text(run_ids["best"], json.dumps(comparison.to_dict(), indent=1, default=str), COMPARISON_FILE)
        if comparison.snapshots:
            with tempfile.TemporaryDirectory() as tmp:
                arrays = {k: v for role, snap in comparison.snapshots.items() for k, v in snap.arrays(f"{role}_").items()}
                np.savez_compressed(Path(tmp) / EMBEDDINGS_FILE, **arrays)
                client.log_artifact(run_ids["best"], str(Path(tmp) / EMBEDDINGS_FILE))
        if model_dir is not None:
            client.log_artifacts(run_ids["best"], str(model_dir), "model")
    except BaseException:
        for run_id in run_ids.values():
            SearchTracker._quietly(lambda: client.set_terminated(run_id, "FAILED"))
        raise
    for run_id in run_ids.values():
        client.set_terminated(run_id, "FINISHED")
    comparison.run_id = run_ids["best"]
    return run_ids


def _log_final_run(client: Any, run_id: str, comparison: Any, role: str, config_yaml: str) -> None:
    from mlflow.entities import Metric, Param

    result = comparison.result(role)
    params = [Param(k, _param_value(v)) for k, v in result.candidate.config.items()]
    for i in range(0, len(params), 100):
        client.log_batch(run_id, params=params[i:i + 100])
    now = int(time.time() * 1000)
    metrics = [Metric(f"{split}_{m}", float(v), now, d.index)
               for d in result.draws if d.ok for split, scores in (("test", d.test), ("dev", d.dev)) for m, v in scores.items()]
    for m, s in result.summary().items():
        metrics += [Metric(f"test_{m}_mean", s["mean"], now, 0), Metric(f"test_{m}_std", s["std"], now, 0)]
    for m, interval in comparison.differences.items():
        metrics += [Metric(f"diff_{m}_pp", interval.mean, now, 0), Metric(f"diff_{m}_pp_low", interval.low, now, 0),
                    Metric(f"diff_{m}_pp_high", interval.high, now, 0)]
    metrics += [Metric("draws_failed", float(sum(not d.ok for d in result.draws)), now, 0)]
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i:i + 1000])
    client.log_text(run_id, config_yaml, FINAL_CONFIG)


def final_comparisons(uri: str, datasets: list[str] | None = None) -> list[Any]:
    """The latest final evaluation per dataset (all datasets with one when ``datasets`` is None),
    with the embeddings recorded for it. TrackingError naming the first dataset that has none."""
    import json

    import numpy as np

    from .retrain import Comparison, Snapshot

    client = _client(uri)
    if datasets is None:
        experiments = _call(uri, lambda: client.search_experiments(filter_string=f"name LIKE '{EXPERIMENT_PREFIX}%'"))
        names = [e.name[len(EXPERIMENT_PREFIX):] for e in experiments if e.name != REPORT_EXPERIMENT]
        datasets = _dataset_order(names)
        explicit = False
    else:
        explicit = True
    found = []
    for dataset in datasets:
        run = _latest_final(client, uri, dataset)
        if run is None:
            if explicit:
                raise TrackingError(f"no final evaluation recorded for dataset {dataset!r} at {uri}; "
                                    f"run `tunedml retrain --dataset {dataset}` first")
            continue
        found.append(run)
    if not found:
        raise TrackingError(f"no final evaluation recorded at {uri}; run `tunedml retrain --dataset DATASET` first")
    comparisons = []
    for run in found:
        with tempfile.TemporaryDirectory() as tmp:
            local = _call(uri, lambda: client.download_artifacts(run.info.run_id, COMPARISON_FILE, tmp))
            comparison = Comparison.from_dict(json.loads(Path(local).read_text()))
            names = {f.path for f in _call(uri, lambda: client.list_artifacts(run.info.run_id))}
            if EMBEDDINGS_FILE in names:
                local = _call(uri, lambda: client.download_artifacts(run.info.run_id, EMBEDDINGS_FILE, tmp))
                with np.load(local) as arrays:
                    comparison.snapshots = {role: Snapshot.from_arrays(arrays, f"{role}_") for role in ("best", "baseline")
                                            if f"{role}_embeddings" in arrays}
        comparison.run_id = run.info.run_id
        comparisons.append(comparison)
    return comparisons


def _latest_final(client: Any, uri: str, dataset: str) -> Any | None:
    experiment = _call(uri, lambda: client.get_experiment_by_name(experiment_name(dataset)))
    if experiment is None:
        return None
    runs = _call(uri, lambda: client.search_runs(
        [experiment.experiment_id],
        f"tags.`{ROLE_TAG}` = '{FINAL_ROLE}' and tags.`{FINAL_ROLE_TAG}` = 'best' and attributes.status = 'FINISHED'",
        max_results=1, order_by=["attributes.start_time DESC"]))
    return runs[0] if runs else None


def _dataset_order(names: list[str]) -> list[str]:
    """Registered tasks in their usual order (as in the papers' tables), then the rest by name."""
    from .data import TASKS

    return [t for t in TASKS if t in names] + sorted(n for n in names if n not in TASKS)


def log_report(uri: str, folder: str | Path, comparisons: list[Any]) -> str:
    """Log a written report folder as a run of the experiment ``tunedml/report``; returns its id."""
    from mlflow.entities import Metric

    client = _client(uri)
    experiment = _call(uri, lambda: client.get_experiment_by_name(REPORT_EXPERIMENT))
    if experiment is None:
        root = _artifact_root(uri)
        location = (Path(root) / REPORT_EXPERIMENT.replace("/", "_")).as_uri() if root else None
        experiment_id = _call(uri, lambda: client.create_experiment(REPORT_EXPERIMENT, artifact_location=location))
    else:
        experiment_id = experiment.experiment_id
    datasets = [c.dataset for c in comparisons]
    tags = {ROLE_TAG: REPORT_ROLE, "tunedml.datasets": ",".join(datasets),
            "tunedml.final_runs": ",".join(c.run_id or "" for c in comparisons)}
    run = _call(uri, lambda: client.create_run(experiment_id, run_name=f"report-{time.strftime('%Y%m%d-%H%M%S')}", tags=tags))
    now = int(time.time() * 1000)
    metrics = [Metric(f"diff_{m}_pp.{_metric_key(c.dataset)}", i.mean, now, 0)
               for c in comparisons for m, i in c.differences.items()]
    if metrics:
        client.log_batch(run.info.run_id, metrics=metrics)
    client.log_artifacts(run.info.run_id, str(folder))
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def _metric_key(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", Path(str(name)).name)


def download_model(uri: str, run_id: str, destination: str | Path) -> Path:
    """The model a final run saved (`tunedml retrain --save-model`), as a local folder for
    :func:`tunedml.retrain.load_model`."""
    client = _client(uri)
    Path(destination).mkdir(parents=True, exist_ok=True)
    local = _call(uri, lambda: client.download_artifacts(run_id, "model", str(destination)))
    return Path(local)
