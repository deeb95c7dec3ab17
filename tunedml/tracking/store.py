"""The MLflow store as every tracking module uses it: the client, one-line errors, experiments
created in one place, and batched writes that respect MLflow's per-request limits."""

from __future__ import annotations

import contextlib
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import urlparse

from ..errors import TrackingError

EXPERIMENT_PREFIX = "tunedml/"
ARTIFACT_FOLDER = "mlartifacts"  # beside a SQLite database: where its runs' files go
ROLE_TAG = "tunedml.role"
SEARCH_ROLE, TRIAL_ROLE, FINAL_ROLE, REPORT_ROLE = "search", "trial", "final", "report"
MAX_PARAMS, MAX_METRICS, MAX_TAGS = 100, 1000, 1000  # per log_batch request (MLflow's limits)


def experiment_name(dataset: str) -> str:
    """One experiment per dataset; a data file or folder is named by its last path component."""
    return EXPERIMENT_PREFIX + Path(str(dataset).rstrip("/")).name


def client(uri: str) -> Any:
    from mlflow import MlflowClient

    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # stdout carries --json output
    return MlflowClient(tracking_uri=uri, registry_uri=uri if urlparse(uri).scheme != "file" else None)


def call(uri: str, fn: Callable[[], Any], verb: str = "use") -> Any:
    """Run a store operation; any failure becomes one TrackingError line naming the URI."""
    try:
        return fn()
    except TrackingError:
        raise
    except Exception as e:  # MlflowException, OSError, SQLAlchemy and requests errors alike
        raise TrackingError(f"cannot {verb} MLflow at {uri}: {reason(e)}") from None


def reason(e: BaseException) -> str:
    """The informative part of a store error: 'Connection refused' rather than a page of URLs."""
    text = str(e) or type(e).__name__
    errno = re.search(r"\[Errno -?\d+\] ([^\"')\]]+)", text)
    if errno:
        return errno.group(1).strip()
    status = re.search(r"(\d{3}) (Client|Server) Error[^\n]*", text)
    return status.group(0)[:200] if status else text.splitlines()[0][:300]


def quietly(fn: Callable[[], Any]) -> None:
    """For clean-up on the way out of an error: the first error is the one to report."""
    with contextlib.suppress(Exception):
        fn()


def sqlite_path(uri: str) -> str:
    return uri[len("sqlite:///") :] if uri.startswith("sqlite:///") else uri[len("sqlite://") :]


def artifact_root(uri: str) -> str | None:
    """Where a SQLite store's runs keep their files: beside the database, not in the current folder."""
    if urlparse(uri).scheme != "sqlite":
        return None  # a server decides; a file store keeps them inside its folder
    return str(Path(sqlite_path(uri)).parent / ARTIFACT_FOLDER)


def ensure_experiment(mlflow: Any, uri: str, name: str, tags: dict[str, str] | None = None) -> str:
    """The experiment's id, created on first use (restored if it was deleted in the UI)."""
    found = call(uri, lambda: mlflow.get_experiment_by_name(name))
    if found is None:
        root = artifact_root(uri)
        location = (Path(root) / name.replace("/", "_")).as_uri() if root else None
        try:
            return mlflow.create_experiment(name, artifact_location=location, tags=tags)
        except Exception:  # created meanwhile by another process
            found = call(uri, lambda: mlflow.get_experiment_by_name(name))
            if found is None:
                raise
    if found.lifecycle_stage == "deleted":
        mlflow.restore_experiment(found.experiment_id)
    return found.experiment_id


def dataset_experiment(mlflow: Any, uri: str, dataset: str) -> str:
    return ensure_experiment(mlflow, uri, experiment_name(dataset), tags={"tunedml.dataset": str(dataset)})


def param_value(value: Any) -> str:
    return str(value)[:6000]


def metric(key: str, value: float, step: int = 0) -> Any:
    from mlflow.entities import Metric

    return Metric(key, float(value), int(time.time() * 1000), step)


def log_batch(
    mlflow: Any,
    run_id: str,
    params: dict[str, Any] | None = None,
    metrics: Iterable[Any] = (),
    tags: dict[str, Any] | None = None,
) -> None:
    """Params, metrics (mlflow Metric objects, see :func:`metric`) and tags in as few requests as
    MLflow's per-request limits allow."""
    from mlflow.entities import Param, RunTag

    chunks = [
        ("params", [Param(k, param_value(v)) for k, v in (params or {}).items()], MAX_PARAMS),
        ("metrics", list(metrics), MAX_METRICS),
        ("tags", [RunTag(k, str(v)[:5000]) for k, v in (tags or {}).items()], MAX_TAGS),
    ]
    for kind, items, size in chunks:
        for i in range(0, len(items), size):
            mlflow.log_batch(run_id, **{kind: items[i : i + size]})
