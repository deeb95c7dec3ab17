"""Where the MLflow store is (a URI resolved once, local paths made absolute) and whether it can
be used, checked in seconds before any trial or draw starts."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

from ..checks import check_writable_folder, probe
from ..errors import ConfigError, TrackingError
from .store import call, client, sqlite_path

DEFAULT_DB = "mlflow.db"
CHECK_TIMEOUT_S = 5
DATABASE_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}
SCHEMES = ("sqlite", "file", "http", "https", *DATABASE_PORTS)
SQLITE_HEADER = b"SQLite format 3\x00"


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


def check_tracking(uri: str, *, must_exist: bool = False, connect: bool = True) -> None:
    """The store at ``uri`` can be used; TrackingError says why not, in seconds where MLflow would
    retry for minutes.

    Its scheme is one MLflow serves; a local store (SQLite file, file store folder) can be written
    (a file is really created and removed: root passes every permission check) or, for
    ``must_exist`` (commands that only read), exists; a database server answers on its port. Then,
    with ``connect``, the store is opened and queried, which creates a SQLite database or a file
    store on first use: ``connect=False`` (a dry run) writes nothing.
    """
    scheme = urlparse(uri).scheme.split("+")[0]  # postgresql+psycopg2: a driver named after the database
    where = f"cannot use MLflow tracking URI {uri}"
    if scheme not in SCHEMES:
        raise TrackingError(
            f"{where}: unsupported scheme {scheme!r}; use sqlite:///path/mlflow.db, http(s)://host:port "
            "(an mlflow server), file:///folder or a database URI (postgresql://, mysql://, mssql://)"
        )
    if scheme == "sqlite":
        _check_sqlite_file(uri, where, must_exist)
    elif scheme == "file":
        _check_file_store(uri, where, must_exist)
    elif scheme in DATABASE_PORTS:
        parsed = urlparse(uri)
        if parsed.hostname:
            try:
                probe(parsed.hostname, parsed.port or DATABASE_PORTS[scheme], f"cannot reach MLflow at {uri}")
            except ConfigError as e:
                raise TrackingError(str(e)) from None
    if connect:
        _open(uri, scheme)


def store_exists(uri: str) -> bool:
    """Whether a local store is there to be read (a server is taken to be)."""
    scheme = urlparse(uri).scheme
    if scheme == "sqlite":
        return Path(sqlite_path(uri)).is_file()
    if scheme == "file":
        return Path(urlparse(uri).path).is_dir()
    return True


def _nothing_recorded(uri: str, path: Path) -> TrackingError:
    return TrackingError(
        f"nothing recorded at {uri}: {path} does not exist; run `tunedml search` first or pass --tracking-uri"
    )


def _check_sqlite_file(uri: str, where: str, must_exist: bool) -> None:
    text = sqlite_path(uri)
    if text in ("", ":memory:"):
        raise TrackingError(
            f"{where}: an in-memory database forgets every search when the process ends; "
            "give a file, e.g. sqlite:///mlflow.db"
        )
    path = Path(text)
    if path.is_dir():
        raise TrackingError(f"{where}: {path} is a folder; name a database file, e.g. sqlite:///{path}/mlflow.db")
    if not path.exists():
        if must_exist:
            raise _nothing_recorded(uri, path)
        _writable(path.parent, where)
        return
    try:
        with open(path, "rb+") as f:  # opened for writing, nothing written
            header = f.read(len(SQLITE_HEADER))
    except OSError as e:
        raise TrackingError(f"{where}: cannot write {path} ({e.strerror})") from None
    if header and header != SQLITE_HEADER:
        raise TrackingError(f"{where}: {path} is not an SQLite database")


def _check_file_store(uri: str, where: str, must_exist: bool) -> None:
    folder = Path(urlparse(uri).path)
    if not _file_store_allowed():
        raise TrackingError(
            f"{where}: {folder} names a folder (an MLflow file store), which this MLflow opens only "
            f"with MLFLOW_ALLOW_FILE_STORE=true; name a database file, e.g. {folder}.db"
        )
    if folder.is_file():
        raise TrackingError(f"{where}: {folder} is a file; a file store is a folder")
    if must_exist and not folder.is_dir():
        raise _nothing_recorded(uri, folder)
    _writable(folder, where)


def _file_store_allowed() -> bool:
    """Whether this MLflow opens a file store (newer versions refuse one unless told to)."""
    try:
        from mlflow.environment_variables import MLFLOW_ALLOW_FILE_STORE
    except ImportError:  # a version from before the switch: file stores open
        return True
    return bool(MLFLOW_ALLOW_FILE_STORE.get())


def _writable(folder: Path, where: str) -> None:
    try:
        check_writable_folder(folder, where)
    except ConfigError as e:
        raise TrackingError(str(e)) from None


def _open(uri: str, scheme: str) -> None:
    """Open the store and ask it one question: its tables are created on first use, a server
    answers (or not, within CHECK_TIMEOUT_S and without retries)."""
    if scheme == "sqlite":
        Path(sqlite_path(uri)).parent.mkdir(parents=True, exist_ok=True)  # checked writable above
    mlflow = client(uri)
    with _quick_http() if scheme in ("http", "https") else contextlib.nullcontext():
        call(uri, lambda: mlflow.search_experiments(max_results=1), verb="reach")


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
