"""How a final evaluation runs and what statistics it reports: the options of `tunedml retrain`."""

from __future__ import annotations

from dataclasses import dataclass

from ..choices import AUTO, INTERVALS, is_gpus
from ..errors import ConfigError, unknown_choice


@dataclass
class RetrainOptions:
    seeds: int | None = None  # kshot: number of draws (default 5); kfold: seeds per fold (default 1)
    concurrency: int | None = None  # draws at a time; None: as many as the CPUs (and GPUs) allow; 1: in this process
    cpus_per_draw: float | None = None
    gpus_per_draw: float | str = AUTO  # auto: 1 where the machine or cluster has GPUs, else 0 (checks.auto_gpus)
    address: str | None = None  # a Ray cluster (always runs as Ray tasks)
    interval: str = "t"  # paired Student t interval, or the percentile bootstrap
    bootstrap: int = 10_000  # resamples, for interval="bootstrap"
    confidence: float = 0.95
    seed: int = 0  # of the bootstrap
    keep_model: bool = False
    verbose: bool = False

    def validate(self) -> None:
        checks = [
            (self.seeds is None or self.seeds >= 1, f"--seeds must be >= 1, got {self.seeds}"),
            (self.concurrency is None or self.concurrency >= 1, f"--concurrency must be >= 1, got {self.concurrency}"),
            (
                self.cpus_per_draw is None or self.cpus_per_draw > 0,
                f"--cpus-per-draw must be > 0, got {self.cpus_per_draw}",
            ),
            (is_gpus(self.gpus_per_draw), f"--gpus-per-draw must be auto or >= 0, got {self.gpus_per_draw}"),
            (self.bootstrap >= 100, f"--bootstrap must be >= 100 resamples, got {self.bootstrap}"),
            (0 < self.confidence < 1, f"confidence must be in (0, 1), got {self.confidence}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if self.interval not in INTERVALS:
            raise ConfigError("--interval: " + unknown_choice("interval", self.interval, INTERVALS))
        if self.interval != "bootstrap" and self.bootstrap != RetrainOptions.bootstrap:
            raise ConfigError(
                f"--bootstrap {self.bootstrap} does nothing with --interval {self.interval}: resamples "
                "are drawn only for --interval bootstrap; leave it out or pass --interval bootstrap"
            )
