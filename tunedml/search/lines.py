"""What a running search shows and relays: a line per finished trial, the one Tune callback that
hands events to this process's callbacks, and trial status and errors read from Ray's trials."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Iterator

from ray import tune

from ..progress import Progress, fmt_duration
from ..space import config_keys


class TrialLines(tune.Callback):
    """One line per finished trial instead of Ray's status tables."""

    def __init__(self, total: int, objective: str, hide: set[str] | frozenset[str] = frozenset()):
        self.progress = Progress(total, "trial")
        self.objective = objective
        self.hide = set(hide)  # the space's fixed keys: the same in every trial
        self.started: dict[str, float] = {}
        self.counted_restored = False

    def __getstate__(self) -> dict[str, Any]:
        """Ray pickles the run config with its callbacks; an output stream may not pickle (and
        --resume hands Ray new callbacks anyway)."""
        return {**self.__dict__, "progress": None}

    def on_step_begin(self, iteration, trials, **info):
        """On --resume the count goes on from the trials that already ended before."""
        if not self.counted_restored:
            self.counted_restored = True
            self.progress.done = sum(t.status in ("TERMINATED", "ERROR") for t in trials)

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started[trial.trial_id] = time.perf_counter()

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        score = last.get(self.objective)
        note = "stopped early" if trial_status(trial) == "KILLED" else "done"
        took = fmt_duration(time.perf_counter() - self.started.get(trial.trial_id, time.perf_counter()))
        if score is None:
            self.progress.step(f"{trial.trial_id} {note} without a result")
        else:
            self.progress.step(
                f"{trial.trial_id} {note} at step {last.get('step', '?')}: {self.objective} "
                f"{score:.4f}  {describe(trial.config, self.hide)}  {took}"
            )

    def on_trial_error(self, iteration, trials, trial, **info):
        self.progress.step(f"{trial.trial_id} FAILED: {trial_error(trial)}  {describe(trial.config, self.hide)}")

    def on_trial_recover(self, iteration, trials, trial, **info):
        """A trial that failed within --max-failures (its node lost, say) starts again from step 0."""
        print(
            f"trial {trial.trial_id} failed ({trial_error(trial)}); restarting it",
            file=self.progress.stream,
            flush=True,
        )


_LIVE: dict[str, list[Any]] = {}  # search name -> this process's callbacks while it runs


class Relay(tune.Callback):
    """The search's one Tune callback: it hands every event to the callbacks of this process.

    Ray pickles the run config, callbacks included, and ``Tuner.restore`` (--resume) brings back
    those pickled copies, with no public way to replace them. So the callback Ray keeps only
    relays, by the search's name, to the live callbacks this process registered for it (the
    progress lines and the MLflow recorder of this run); its own copies serve only where no live
    ones are registered (a Tuner run by Ray elsewhere, as over ``ray://``).
    """

    def __init__(self, name: str, callbacks: list[Any]):
        self.name = name
        self.callbacks = callbacks

    @contextlib.contextmanager
    def live(self) -> Iterator[None]:
        """Register this relay's callbacks as the live ones of its search while the search runs."""
        _LIVE[self.name] = self.callbacks
        try:
            yield
        finally:
            _LIVE.pop(self.name, None)

    def _each(self, hook: str, **info: Any) -> None:
        for callback in _LIVE.get(self.name, self.callbacks):
            getattr(callback, hook)(**info)

    def setup(self, **info):
        self._each("setup", **info)

    def on_step_begin(self, **info):
        self._each("on_step_begin", **info)

    def on_step_end(self, **info):
        self._each("on_step_end", **info)

    def on_trial_start(self, **info):
        self._each("on_trial_start", **info)

    def on_trial_restore(self, **info):
        self._each("on_trial_restore", **info)

    def on_trial_save(self, **info):
        self._each("on_trial_save", **info)

    def on_trial_result(self, **info):
        self._each("on_trial_result", **info)

    def on_trial_complete(self, **info):
        self._each("on_trial_complete", **info)

    def on_trial_recover(self, **info):
        self._each("on_trial_recover", **info)

    def on_trial_error(self, **info):
        self._each("on_trial_error", **info)

    def on_checkpoint(self, **info):
        self._each("on_checkpoint", **info)

    def on_experiment_end(self, **info):
        self._each("on_experiment_end", **info)


def describe(config: dict[str, Any], hide: set[str] | frozenset[str] = frozenset()) -> str:
    """The searched values of a trial in a short line: the loss first, its hyperparameters unprefixed."""
    values = {k: v for k, v in config_keys(config).items() if k not in hide}
    order = sorted(values, key=lambda k: (k != "loss.name", not k.startswith("loss."), k))
    shown = []
    for k in order:
        name = k.split(".", 1)[1] if k.startswith("loss.") and k != "loss.name" else k
        v = values[k]
        shown.append(f"{name}={v:.3g}" if isinstance(v, float) else f"{name}={v}")
    return " ".join(shown)


def trial_status(trial: Any) -> str:
    """FINISHED, KILLED (the scheduler stopped it before its last step) or FAILED.

    Called from ``on_trial_complete``, where Ray still shows the trial as RUNNING.
    """
    if trial.status == "ERROR":
        return "FAILED"
    last = trial.last_result or {}
    if last.get("step") is not None and last.get("steps") is not None and last["step"] < last["steps"]:
        return "KILLED"
    return "FINISHED"


def trial_error(trial: Any) -> str:
    """The last line of a failed trial's exception (its type and message)."""
    text = ""
    if getattr(trial, "error_file", None) and Path(trial.error_file).exists():
        text = Path(trial.error_file).read_text()
    elif getattr(trial, "path", None) and (Path(trial.path) / "error.txt").exists():
        text = (Path(trial.path) / "error.txt").read_text()
    return _last_error_line(text) or "unknown error"


def saved_error(trial: Any) -> str:
    """A failed trial's reason from its saved error (wherever the storage is)."""
    try:
        error = trial.get_pickled_error() or trial.get_error()
    except Exception:  # unreadable storage: fall back to the local copy
        error = None
    return _last_error_line(str(error)) if error is not None else trial_error(trial)


def _last_error_line(text: str) -> str:
    """``NonFiniteLossError: non-finite loss at step 2: ce=nan`` from a traceback (module path dropped)."""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    for ln in reversed(lines):
        head, sep, rest = ln.partition(":")
        if sep and ("Error" in head or "Exception" in head) and " " not in head:
            return f"{head.rsplit('.', 1)[-1]}:{rest}"[:300]
    return lines[-1][:300] if lines else ""
