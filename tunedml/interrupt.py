"""SIGTERM stops a command as Ctrl-C does, so a search killed by a scheduler or `timeout` is saved
and recorded KILLED (resumable), not FAILED or left RUNNING.

Python's default for SIGTERM ends the process at once, and ``ray.init`` installs a handler that
calls ``sys.exit``: either way a search's MLflow run ends FAILED and Ray Tune saves nothing. Here
SIGTERM goes to whatever handles SIGINT at that moment: Ray Tune's handler during a search (it
saves the search's state and stops its trials, as for Ctrl-C), else Python's, which raises
KeyboardInterrupt. The command then exits with 143 (128 + SIGTERM), where Ctrl-C gives 130.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

_received: list[int] = []  # the signals that interrupted this process


def sigterm_as_ctrl_c() -> None:
    """Install the handler; again after ``ray.init``, which replaces it. Main thread only."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


def _on_sigterm(signum: int, frame: Any) -> None:
    _received.append(signum)
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler) and handler is not _on_sigterm:
        handler(signal.SIGINT, frame)  # Ray Tune's: stop cleanly; Python's: KeyboardInterrupt
    else:
        raise KeyboardInterrupt


def exit_code() -> int:
    """143 after SIGTERM, 130 after Ctrl-C: the shell's convention, 128 + the signal's number."""
    return 128 + signal.SIGTERM if _received else 130


def describe() -> str:
    return "terminated (SIGTERM)" if _received else "interrupted"
