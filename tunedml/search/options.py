"""What a search is asked to do: its options, checked at the edge (`tunedml search` flags)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..checks import Node, auto_concurrency
from ..choices import AUTO, SCHEDULERS, is_concurrency, is_gpus
from ..errors import ConfigError, unknown_choice
from ..metrics import check_metric
from ..space import SearchSpace

MAX_RESCORE_DRAWS = 500  # re-scoring draws use seed offsets 500 + j: below retrain's 1000
DEFAULT_STORAGE = "tunedml_results"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=@-]{0,199}")  # a search's folder name


def check_name(name: str | None, what: str = "--name") -> None:
    """A name that becomes a folder is one path component of plain characters: nothing escapes."""
    if name is None:
        return
    if not NAME_PATTERN.fullmatch(name) or name in (".", ".."):
        raise ConfigError(
            f"{what} {name!r}: not a valid name; use letters, digits and . _ - + = @ "
            "(one folder name, not a path, at most 200 characters, starting with a letter or digit)"
        )


@dataclass
class SearchOptions:
    trials: int = 20
    concurrency: int | str = AUTO  # trials at a time; auto: one per CPU and per GPU (checks.auto_concurrency)
    cpus_per_trial: float | None = None  # None: the cluster's CPUs shared among concurrent trials
    gpus_per_trial: float | str = AUTO  # auto: 1 where the machine or cluster has GPUs, else 0 (checks.auto_gpus)
    scheduler: str = "asha"
    metric: str = "accuracy"  # on dev; reported as dev_<metric>
    repeats: int = 1
    time_budget_s: float | None = None
    storage: str | None = None
    name: str | None = None
    resume: bool = False
    address: str | None = None
    max_failures: int | None = None  # restarts of a failed trial; None: 1 on a cluster (--address), else 0
    sampler_seed: int = 0  # TPE's seed
    verbose: bool = False
    points: list[dict[str, Any]] = field(default_factory=list)  # configs (flat keys) to try first, in order
    # The first trials cycle through every option of this top-level choice, per_option_start times
    # each, before TPE proposes (after `points`): every loss gets tried. 0 turns it off.
    per_option_key: str = "loss.name"
    per_option_start: int = 1
    # After the search, the `rescore` best trials are trained again on `rescore_draws` fresh draws and
    # the best mean dev score among them is the search's choice (search.rescore). 0 turns it off.
    rescore: int = 0
    rescore_draws: int = 3

    def validate(self) -> None:
        checks = [
            (self.trials >= 1, f"--trials must be >= 1, got {self.trials}"),
            (is_concurrency(self.concurrency), f"--concurrency must be auto or >= 1, got {self.concurrency}"),
            (
                self.cpus_per_trial is None or self.cpus_per_trial > 0,
                f"--cpus-per-trial must be > 0, got {self.cpus_per_trial}",
            ),
            (is_gpus(self.gpus_per_trial), f"--gpus-per-trial must be auto or >= 0, got {self.gpus_per_trial}"),
            (
                1 <= self.repeats <= MAX_RESCORE_DRAWS,
                f"--repeats must be between 1 and {MAX_RESCORE_DRAWS}, got {self.repeats}",
            ),
            (
                self.time_budget_s is None or self.time_budget_s > 0,
                f"--time-budget must be > 0, got {self.time_budget_s}",
            ),
            (
                self.max_failures is None or self.max_failures >= 0,
                f"--max-failures must be >= 0, got {self.max_failures}",
            ),
            (self.per_option_start >= 0, f"--start-per-option must be >= 0, got {self.per_option_start}"),
            (
                0 <= self.rescore <= self.trials,
                f"--rescore must be between 0 and --trials ({self.trials}), got {self.rescore}",
            ),
            (
                1 <= self.rescore_draws <= MAX_RESCORE_DRAWS,
                f"--rescore-draws must be between 1 and {MAX_RESCORE_DRAWS}, got {self.rescore_draws}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if self.scheduler not in SCHEDULERS:
            raise ConfigError("--scheduler: " + unknown_choice("scheduler", self.scheduler, SCHEDULERS))
        check_metric(self.metric)
        check_name(self.name, "--name")  # a search's folder is <storage>/<name>: nothing escapes it

    @property
    def objective(self) -> str:
        return f"dev_{self.metric}"

    def at_once(self, nodes: list[Node]) -> tuple[int, str]:
        """``--concurrency`` as given, or for ``auto`` what :func:`tunedml.checks.auto_concurrency` chooses
        from ``nodes`` (and why; "" when given)."""
        if self.concurrency != AUTO:
            return int(self.concurrency), ""
        return auto_concurrency(nodes, self.cpus_per_trial, self.gpus_per_trial, self.trials, "trial")

    @property
    def retries(self) -> int:
        """How often Ray Tune restarts a failed trial (FailureConfig.max_failures).

        Ray cannot tell a trial lost with its node from one that raised, so both are retried. On one
        machine a lost node is the whole search, and a raising trial (NaN loss) would only fail
        again: no retries. On a cluster one retry lets a search outlive a worker node.
        """
        if self.max_failures is not None:
            return self.max_failures
        return 1 if self.address else 0


def parse_per_option(text: str) -> tuple[str, int]:
    """``--start-per-option``: ``N`` (trials per option of loss.name) or ``KEY=N``; 0 turns it off."""
    key, _, count = text.rpartition("=")
    key = key.strip() or "loss.name"
    try:
        n = int(count)
    except ValueError:
        n = -1
    if n < 0:
        raise ConfigError(f"--start-per-option {text!r}: expected N or KEY=N with N >= 0, e.g. 2 or loss.name=2")
    return key, n


def check_per_option(space: SearchSpace, options: SearchOptions) -> None:
    """A per-option start asked for a key other than the default needs a top-level choice over it."""
    if (
        options.per_option_start
        and options.per_option_key != "loss.name"
        and not space.root.options_of(options.per_option_key)
    ):
        raise ConfigError(
            f"--start-per-option {options.per_option_key}={options.per_option_start}: {space.path} has no "
            f"top-level choice or categorical over {options.per_option_key}; valid: "
            f"{', '.join(k for k in space.root.keys() if space.root.options_of(k)) or 'none'}"
        )
