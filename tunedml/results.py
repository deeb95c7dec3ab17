"""The final evaluation's results, as data: what `retrain` produces, tracking records and reads
back, and `report` tabulates. Plain dataclasses with their JSON form; no training, no store.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .config import RunConfig, from_flat
from .losses import NO_DML
from .metrics import METRICS

ROLES = ("best", "baseline")


@dataclass(frozen=True)
class Interval:
    """A mean paired difference (percentage points) with its confidence interval and p-values.

    ``low``/``high`` (and the p-values) are None where there were too few paired draws to say
    anything: then there is no interval and nothing is marked significant.
    """

    mean: float
    low: float | None
    high: float | None
    confidence: float = 0.95
    method: str = "bootstrap"  # t | bootstrap; files written before the method was recorded were bootstrap
    p_t: float | None = None  # paired t-test
    p_wilcoxon: float | None = None  # Wilcoxon signed-rank test
    n: int | None = None  # paired draws

    @property
    def exists(self) -> bool:
        return self.low is not None and self.high is not None

    @property
    def significant(self) -> bool:
        """The interval excludes zero."""
        return self.exists and (self.low > 0 or self.high < 0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Candidate:
    """A configuration to retrain and where it came from (shown in tables and recorded in MLflow)."""

    role: str  # best | baseline
    config: dict[str, Any]  # the full flat run config
    source: str  # e.g. "MLflow run 3f2a… (space dml)", "file best.yaml", "CCE defaults"
    run_id: str | None = None  # the search run it came from, if any
    untuned: bool = False  # its searched keys are at their defaults: no search chose them
    trials: int | None = None  # trials of the search it came from: its budget
    selection_score: float | None = None  # its dev score in the search that chose it ("dev at selection")
    rescored: tuple[float, float, int] | None = None  # (mean, std, draws) of its re-scored dev, if re-scored

    @property
    def loss(self) -> str:
        return str(self.config.get("loss.name", NO_DML))

    @property
    def run_config(self) -> RunConfig:
        return from_flat(self.config, source=self.source)


@dataclass
class DrawResult:
    index: int
    data_seed: int
    train_seed: int
    fold: int | None
    test: dict[str, float] | None
    dev: dict[str, float] | None
    seconds: float
    error: str | None = None  # a draw whose training diverged (non-finite loss)

    @property
    def ok(self) -> bool:
        return self.error is None and self.test is not None

    @property
    def collapsed(self) -> bool:
        """Every test prediction fell to one class (``collapsed`` in the scores, where recorded)."""
        return bool(self.ok and self.test.get("collapsed", 0.0))


@dataclass
class ConfigResult:
    candidate: Candidate
    draws: list[DrawResult] = field(default_factory=list)

    def scores(self, metric: str, indices: list[int] | None = None) -> np.ndarray:
        by_index = {d.index: d for d in self.draws if d.ok}
        chosen = sorted(by_index) if indices is None else indices
        return np.array([by_index[i].test[metric] for i in chosen], dtype=float)

    def optimism(self, metric: str = "accuracy") -> float | None:
        """Dev at selection minus the test mean, in points: how much the choice's dev score overstated
        what it does on fresh draws' test sets (None without a recorded selection score)."""
        c = self.candidate
        mean = self.summary()[metric]["mean"]
        if c.selection_score is None or mean != mean:
            return None
        return 100 * (c.selection_score - mean)

    def summary(self) -> dict[str, dict[str, float]]:
        """Per metric: mean, sample std (0 for one draw) and the worst draw, over the draws that trained."""
        nan = float("nan")
        out = {}
        for m in METRICS:
            x = self.scores(m)
            out[m] = {
                "mean": float(x.mean()) if len(x) else nan,
                "std": float(x.std(ddof=1)) if len(x) > 1 else (0.0 if len(x) else nan),
                "worst": float(x.min()) if len(x) else nan,
            }
        return out

    @property
    def collapsed(self) -> int:
        """Draws whose test predictions all fell to one class."""
        return sum(d.collapsed for d in self.draws)

    def top_draw(self) -> int | None:
        """The draw to save and to plot: the best dev accuracy, ties to the lowest index; never
        chosen on test, which would select on the numbers the table reports."""
        ok = [d for d in self.draws if d.ok and d.dev]
        return max(ok, key=lambda d: (d.dev["accuracy"], -d.index)).index if ok else None


@dataclass
class Snapshot:
    """Test embeddings and class prototypes of one trained draw (and its weights for --save-model)."""

    embeddings: np.ndarray  # (n_test, hidden)
    labels: np.ndarray  # (n_test,)
    prototypes: np.ndarray  # (P, hidden): the loss's proxies, or class centers of the training embeddings
    prototype_labels: np.ndarray  # (P,)
    prototype_kind: str  # "proxies" | "class centers"
    state: dict[str, Any] | None = None  # {"model": state dict, "loss": state dict}

    def arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        return {
            f"{prefix}embeddings": self.embeddings,
            f"{prefix}labels": self.labels,
            f"{prefix}prototypes": self.prototypes,
            f"{prefix}prototype_labels": self.prototype_labels,
            f"{prefix}prototype_kind": np.array(self.prototype_kind),
        }

    @classmethod
    def from_arrays(cls, arrays: Any, prefix: str = "") -> "Snapshot":
        return cls(
            np.asarray(arrays[f"{prefix}embeddings"]),
            np.asarray(arrays[f"{prefix}labels"]),
            np.asarray(arrays[f"{prefix}prototypes"]),
            np.asarray(arrays[f"{prefix}prototype_labels"]),
            str(arrays[f"{prefix}prototype_kind"]),
        )


@dataclass
class Comparison:
    """Both configurations on the same draws, and the paired differences best - baseline."""

    dataset: str
    label_names: list[str]
    protocol: str  # e.g. "kshot k=16" or "kfold 5 folds, 64 examples"
    best: ConfigResult
    baseline: ConfigResult
    differences: dict[str, Interval] = field(default_factory=dict)  # metric -> interval in pp
    paired: list[int] = field(default_factory=list)  # draw indices where both configurations trained
    best_draw: int | None = None  # the best configuration's top draw (dev accuracy): saved, plotted
    snapshots: dict[str, Snapshot] = field(default_factory=dict)  # role -> snapshot of best_draw
    seconds: float = 0.0
    run_id: str | None = None  # the best configuration's final run, once recorded
    run_ids: dict[str, str] = field(default_factory=dict)  # role -> its final run, once recorded
    model_dir: str | None = None  # where the best configuration's top draw was saved, if it was
    tracking_uri: str | None = None  # the store the final runs are recorded in

    def result(self, role: str) -> ConfigResult:
        return self.best if role == "best" else self.baseline

    @property
    def failed_sides(self) -> list[str]:
        """The roles whose every draw failed (diverged): nothing to compare on that side."""
        return [role for role in ROLES if not any(d.ok for d in self.result(role).draws)]

    @property
    def budgets_differ(self) -> bool:
        """Both searches are known and had different numbers of trials."""
        a, b = self.best.candidate.trials, self.baseline.candidate.trials
        return a is not None and b is not None and a != b

    def to_dict(self) -> dict[str, Any]:
        def side(r: ConfigResult) -> dict[str, Any]:
            c = r.candidate
            return {
                "loss": c.loss,
                "source": c.source,
                "run_id": c.run_id,
                "untuned": c.untuned,
                "trials": c.trials,
                "selection_score": c.selection_score,
                "rescored": list(c.rescored) if c.rescored else None,
                "config": c.config,
                "summary": r.summary(),
                "collapsed": r.collapsed,
                "draws": [d.__dict__ for d in r.draws],
            }

        return {
            "dataset": self.dataset,
            "label_names": self.label_names,
            "protocol": self.protocol,
            "best": side(self.best),
            "baseline": side(self.baseline),
            "differences_pp": {m: i.to_dict() for m, i in self.differences.items()},
            "paired_draws": self.paired,
            "best_draw": self.best_draw,
            "seconds": round(self.seconds, 1),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Comparison":
        """Also reads comparison.json files of older versions (no method, p-values, trials or flags)."""

        def side(role: str) -> ConfigResult:
            s = d[role]
            rescored = s.get("rescored")
            candidate = Candidate(
                role,
                s["config"],
                s["source"],
                s.get("run_id"),
                s.get("untuned", s["source"] == "CCE defaults"),
                s.get("trials"),
                s.get("selection_score"),
                tuple(rescored) if rescored else None,
            )
            return ConfigResult(candidate, [DrawResult(**x) for x in s["draws"]])

        return cls(
            d["dataset"],
            list(d["label_names"]),
            d["protocol"],
            side("best"),
            side("baseline"),
            {m: Interval(**i) for m, i in d["differences_pp"].items()},
            list(d["paired_draws"]),
            d.get("best_draw"),
            seconds=float(d.get("seconds", 0.0)),
        )
