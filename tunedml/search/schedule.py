"""Who decides which trials run and for how long: Optuna's TPE proposes, ASHA stops early on the
clock of optimizer steps, never before the longest warmup a trial of the space can have."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

from ..config import FIELDS
from ..space import SearchSpace
from .options import SearchOptions


@dataclass(frozen=True)
class RunBounds:
    """The longest run and the longest warmup, in optimizer steps, that a trial of a space can have."""

    steps: int
    warmup: int

    @property
    def first_rung(self) -> int:
        """Where early stopping may first compare trials: after the longest warmup, and no earlier
        than a quarter of the run (a trial still warming up, or barely started, says little)."""
        return max(1, self.warmup, math.ceil(self.steps / 4))


def run_bounds(space: SearchSpace, base: dict[str, Any], train_size: int) -> RunBounds:
    """The bounds over every branch of ``space`` on top of ``base`` for a draw of ``train_size``
    training examples; a run given in epochs counts at the smallest batch size the space allows."""

    def extreme(key: str, pick: Any) -> Any:
        values = [v for v in space.root.largest(key, base.get(key), smallest=pick is min) if v is not None]
        return pick(values) if values else None

    epochs = extreme("train.epochs", max)
    steps = extreme("train.steps", max)
    if steps is None and epochs is None:
        steps = FIELDS["train.steps"].default
    batch = extreme("train.batch_size", min) or FIELDS["train.batch_size"].default
    longest = max(steps or 0, (epochs or 0) * math.ceil(train_size / batch))
    warmup = extreme("train.warmup_ratio", max)
    warmup = FIELDS["train.warmup_ratio"].default if warmup is None else warmup
    return RunBounds(int(longest), math.ceil(warmup * longest))


def make_scheduler(name: str, bounds: RunBounds, objective: str):
    """ASHA (or asynchronous HyperBand: ASHA over three brackets), on the clock of optimizer steps,
    its first rung at :attr:`RunBounds.first_rung`. Every bracket's rungs lie at or after it."""
    from ray.tune.schedulers import ASHAScheduler

    if name == "none" or bounds.first_rung >= bounds.steps:
        return None
    return ASHAScheduler(
        time_attr="step",
        metric=objective,
        mode="max",
        max_t=bounds.steps,
        grace_period=bounds.first_rung,
        reduction_factor=3,
        brackets=3 if name == "hyperband" else 1,
    )


def make_searcher(space: SearchSpace, options: SearchOptions):
    import optuna
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    sampler = optuna.samplers.TPESampler(
        seed=options.sampler_seed, multivariate=True, group=True, n_startup_trials=min(10, max(2, options.trials // 3))
    )
    optuna.logging.set_verbosity(optuna.logging.DEBUG if options.verbose else optuna.logging.WARNING)
    points = [space.optuna_params(p) for p in options.points]
    if options.per_option_start:
        points += space.per_option_points(options.per_option_key, options.per_option_start)
    search = OptunaSearch(
        space=space.define_by_run,
        metric=options.objective,
        mode="max",
        sampler=sampler,
        points_to_evaluate=points or None,
    )  # enqueued in the Optuna study, in order
    return ConcurrencyLimiter(search, max_concurrent=options.concurrency)
