"""`tunedml ui`: the MLflow UI on a store, served on loopback by an ``mlflow server`` subprocess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from typing import Any
from urllib.parse import urlparse

from ..errors import TrackingError
from .store import artifact_root

UI_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # GenAI job workers: seven processes tunedml never uses


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


def ui_command(uri: str, port: int) -> list[str]:
    """``mlflow server`` on loopback only; experiments created from the UI keep files beside the db."""
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    artifacts = artifact_root(uri)
    return cmd + (["--artifacts-destination", artifacts] if artifacts else [])
