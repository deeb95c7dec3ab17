"""The ranking metrics: what :func:`tunedml.evaluate.scores` computes that searches maximise on dev,
that `tunedml best` ranks by and that the final tables show on test. Named and checked here, once."""

from __future__ import annotations

from .errors import ConfigError, unknown_choice

METRICS = ("accuracy", "macro_f1")


def check_metric(metric: str, option: str = "--metric") -> None:
    if metric not in METRICS:
        raise ConfigError(f"{option}: " + unknown_choice("metric", metric, METRICS))
