"""What a search produced, as plain data: its trials, the best one, the per-option counts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class SearchInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the search; Ray saved its state, so ``--resume`` continues it.

    A KeyboardInterrupt, so that callers treat it as Ctrl-C (exit 130); ``result`` has the trials so far.
    """

    def __init__(self, message: str, result: "SearchResult"):
        super().__init__(message)
        self.result = result


@dataclass
class TrialSummary:
    trial_id: str
    status: str  # FINISHED, KILLED (stopped early by the scheduler), FAILED or UNFINISHED (interrupted)
    config: dict[str, Any]
    score: float | None
    steps: int  # optimizer steps the trial took (its last report)
    error: str | None = None
    spread: float | None = None  # std of the dev score over --repeats draws (None with one draw)


def ranked(trials: list[TrialSummary]) -> list[TrialSummary]:
    """Finished trials (else any scored one), best first: by score, ties to the lower spread over
    the repeats (a configuration that is good on every draw rather than on one)."""
    scored = [t for t in trials if t.score is not None and t.status == "FINISHED"] or [
        t for t in trials if t.score is not None
    ]
    return sorted(scored, key=lambda t: (-t.score, t.spread or 0.0))


def best_trial(trials: list[TrialSummary]) -> TrialSummary | None:
    """The trial a search without re-scoring chooses: the first of :func:`ranked`."""
    order = ranked(trials)
    return order[0] if order else None


@dataclass
class SearchResult:
    dataset: str
    space: str
    path: str
    objective: str
    trials: list[TrialSummary] = field(default_factory=list)
    best: TrialSummary | None = None
    best_config: dict[str, Any] | None = None  # the full flat run config of the best trial
    seconds: float = 0.0
    choices: dict[str, list[Any]] = field(default_factory=dict)  # top-level choice key -> its options
    rescored: list[Any] = field(default_factory=list)  # search.rescore.Rescored: the leaders re-scored, if asked
    rescore_seconds: float = 0.0  # of ``seconds``, the re-scoring's share

    @property
    def search_best(self) -> TrialSummary | None:
        """The trial with the best search score (the choice without re-scoring)."""
        return best_trial(self.trials)

    mlflow: dict[str, str] = field(default_factory=dict)  # tracking_uri, experiment, run_id, once recorded

    @property
    def failures(self) -> list[TrialSummary]:
        return [t for t in self.trials if t.status == "FAILED"]

    def per_option(self, key: str = "loss.name") -> dict[str, dict[str, Any]]:
        """``{option: {"trials": n, "finished": n, "best": score or None}}`` for a choice key: how
        much of the search each option (each loss) got, and its best score (as the search's best)."""
        options = list(self.choices.get(key, []))
        options += [t.config[key] for t in self.trials if key in t.config and t.config[key] not in options]
        out = {}
        for option in options:
            trials = [t for t in self.trials if t.config.get(key) == option]
            best = best_trial(trials)
            out[str(option)] = {
                "trials": len(trials),
                "finished": sum(t.status == "FINISHED" for t in trials),
                "best": best.score if best else None,
            }
        return out

    def option_lines(self) -> list[str]:
        """The per-option table of every searched choice, for the printed summary."""
        lines = []
        for key in self.choices:
            rows = self.per_option(key)
            width = max(len(key), *(len(o) for o in rows))
            lines.append(f"  {key:<{width}}  trials  finished  best {self.objective}")
            for option, r in rows.items():
                best = "-" if r["best"] is None else f"{r['best']:.4f}"
                lines.append(f"  {option:<{width}}  {r['trials']:>6}  {r['finished']:>8}  {best}")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "space": self.space,
            "path": self.path,
            "objective": self.objective,
            "best_score": self.best.score if self.best else None,
            "best_trial": self.best.trial_id if self.best else None,
            "best_config": self.best_config,
            "trials": len(self.trials),
            "finished": sum(t.status == "FINISHED" for t in self.trials),
            "stopped_early": sum(t.status == "KILLED" for t in self.trials),
            "unfinished": sum(t.status == "UNFINISHED" for t in self.trials),  # --time-budget ran out first
            "failed": [{"trial": t.trial_id, "error": t.error} for t in self.failures],
            "per_option": {key: self.per_option(key) for key in self.choices},
            "search_best_trial": self.search_best.trial_id if self.search_best else None,
            "rescored": [r.to_dict(self.metric) for r in self.rescored] or None,
            "rescore_seconds": round(self.rescore_seconds, 1),
            "seconds": round(self.seconds, 1),
            **({"mlflow": self.mlflow} if self.mlflow else {}),
        }

    @property
    def metric(self) -> str:
        """The objective's metric (``accuracy`` for ``dev_accuracy``)."""
        return self.objective.removeprefix("dev_")
