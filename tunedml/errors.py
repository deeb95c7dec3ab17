"""Exceptions that carry a user-facing, one-line message.

The CLI turns every :class:`TunedMLError` into that line on stderr and exit code 2, so anything
raised here must be caused by the user's input (a config, a file, a name), never by a bug.
"""

from __future__ import annotations

import difflib
from typing import Iterable


class TunedMLError(Exception):
    """Bad user input: reported as one line, exit code 2, no traceback."""


class ConfigError(TunedMLError):
    """A config key, value or search-space entry is not valid."""


class DataError(TunedMLError):
    """A dataset cannot be loaded or cannot supply the requested few-shot draw."""


class TrackingError(TunedMLError):
    """The MLflow tracking location cannot be used (unreachable, unwritable, empty)."""


class NonFiniteLossError(RuntimeError):
    """Training produced NaN or inf; names the step and the loss parts so the cause is visible.

    Not a :class:`TunedMLError`: it is a property of a configuration, and a search records it as a
    failed trial rather than stopping.
    """

    def __init__(self, step: int, parts: dict[str, float]):
        self.step = step
        self.parts = dict(parts)
        shown = ", ".join(f"{k}={v:.4g}" for k, v in parts.items())
        super().__init__(f"non-finite loss at step {step}: {shown}")

    def __reduce__(self):
        """Picklable with its own arguments: Ray sends a failed trial's exception to the driver."""
        return type(self), (self.step, self.parts)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean X?)' when a close match exists, else ''."""
    match = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def unknown_choice(what: str, value: object, choices: Iterable[str]) -> str:
    """The standard message for a name that is not among the valid ones."""
    choices = list(choices)
    return f"unknown {what} {value!r}{did_you_mean(str(value), choices)}; valid: {', '.join(choices)}"


class RunFailed(Exception):
    """A command ran on valid input and produced nothing: no trial of a search scored, every draw
    of one side of a final evaluation failed, or a stage of a study failed. Exit code 1.

    Not a :class:`TunedMLError` (exit code 2): the input was fine; the run is what failed, and its
    record (MLflow runs, Ray's folder) says why.
    """
