"""Where the MLflow store is (a URI resolved once, local paths made absolute) and whether it can
be written, checked in seconds before any trial or draw starts."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlparse

from ..errors import TrackingError
from .store import call, client, sqlite_path

DEFAULT_DB = "mlflow.db"
CHECK_TIMEOUT_S = 5


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
        path = sqlite_path(uri)
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


def _check_sqlite(uri: str) -> None:
    path = sqlite_path(uri)
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
    mlflow = client(uri)
    call(uri, lambda: mlflow.search_experiments(max_results=1), verb="reach")


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
