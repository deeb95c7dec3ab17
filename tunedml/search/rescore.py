"""Re-scoring the leaders of a finished search on fresh draws (`search --rescore N --rescore-draws M`).

A search's best trial is the highest of many noisy dev scores, so it is chosen partly for luck (the
winner's curse). Training the N best trials again on M draws that neither the search nor the final
evaluation uses, and choosing the best *mean* of those, takes most of that luck out at the cost of
N x M trainings, against ``--repeats`` R which costs (R - 1) x every trial. Only dev is scored:
nothing here looks at a test split.

Each (candidate, draw) result is kept in the search's folder as it comes, so an interrupted
re-scoring continues with ``--resume`` where it stopped.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..config import from_flat
from ..metrics import METRICS
from ..progress import Progress
from .results import SearchResult, TrialSummary, ranked
from .trainable import repeat_config

# draw j of re-scoring uses seed offset 500 + j (j < MAX_RESCORE_DRAWS): past a search's repeats
# (0, 1, ..., at most 500), before retrain's final draws (1000, ...)
RESCORE_OFFSET = 500
RESCORE_FILE = "tunedml_rescore.json"


@dataclass
class Rescored:
    """One candidate: its search score and its dev scores on the re-scoring draws (index -> scores)."""

    trial_id: str
    config: dict[str, Any]  # the trial's searched keys
    search_score: float
    draws: dict[int, dict[str, float]] = field(default_factory=dict)

    def scores(self, metric: str) -> list[float]:
        return [self.draws[j][metric] for j in sorted(self.draws)]

    def mean(self, metric: str) -> float:
        return statistics.fmean(self.scores(metric)) if self.draws else math.nan

    def std(self, metric: str) -> float:
        """Sample standard deviation over the re-scoring draws (0 with one draw)."""
        x = self.scores(metric)
        return statistics.stdev(x) if len(x) > 1 else 0.0

    def to_dict(self, metric: str) -> dict[str, Any]:
        """What MLflow and ``--json`` keep of a candidate."""
        return {
            "trial": self.trial_id,
            "search_score": self.search_score,
            "rescored_mean": self.mean(metric),
            "rescored_std": self.std(metric),
            "draws": len(self.draws),
            "config": self.config,
            "per_draw": {m: self.scores(m) for m in METRICS},
        }


def candidates(result: SearchResult, n: int) -> list[TrialSummary]:
    """The ``n`` trials the search ranks first (by :func:`~tunedml.search.results.ranked`)."""
    return ranked(result.trials)[:n]


def choose(rescored: list[Rescored], metric: str) -> Rescored | None:
    """The best mean re-scored dev score; ties go to the lower spread, then to the better search score."""
    done = [r for r in rescored if r.draws]
    return max(done, key=lambda r: (r.mean(metric), -r.std(metric), r.search_score), default=None)


def rescore(
    tokens: Any,
    base: dict[str, Any],
    result: SearchResult,
    n: int,
    draws: int,
    metric: str,
    cpus: float,
    gpus: float,
    verbose: bool = False,
) -> list[Rescored]:
    """Train the ``n`` leading trials of ``result`` on ``draws`` fresh draws each (Ray tasks with
    the search's resources per trial); returns them with their dev scores."""
    import ray

    state = _load(result.path)
    leaders = [Rescored(t.trial_id, t.config, float(t.score), state.get(t.trial_id, {})) for t in candidates(result, n)]
    jobs = [(c, j) for c in leaders for j in range(draws) if j not in c.draws]
    progress = Progress(len(leaders) * draws, "rescore")
    progress.done = len(leaders) * draws - len(jobs)
    task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(train_dev)
    tokens_ref = ray.put(tokens)
    pending = {}
    for c, j in jobs:
        cfg = repeat_config(from_flat({**base, **c.config}, source=f"trial {c.trial_id}"), RESCORE_OFFSET + j)
        if not cfg.train.threads:
            cfg = replace(cfg, train=replace(cfg.train, threads=max(1, int(cpus))))
        pending[task.remote(cfg, tokens_ref)] = (c, j)
    start = time.perf_counter()
    while pending:
        [ref], _ = ray.wait(list(pending), num_returns=1)
        c, j = pending.pop(ref)
        dev = ray.get(ref)
        if dev is not None:  # None: the training diverged on this draw; the candidate counts without it
            c.draws[j] = dev
        _save(result.path, leaders)
        shown = "diverged" if dev is None else f"dev_{metric} {dev[metric]:.4f}"
        progress.step(f"{c.trial_id} draw {j + 1}/{draws}: {shown}  ({time.perf_counter() - start:.0f}s)")
    if verbose:
        print(f"re-scored {len(leaders)} trials on {draws} draws each", file=sys.stderr, flush=True)
    return leaders


def train_dev(cfg: Any, tokens: Any) -> dict[str, float] | None:
    """Train one re-scoring draw and score its dev set (never its test set); None if it diverged."""
    from ..errors import NonFiniteLossError
    from ..train import Trainer, draw_for

    try:
        return Trainer(cfg, tokens, draw_for(cfg, tokens)).fit(evaluate_test=False).dev
    except NonFiniteLossError:
        return None


def apply(result: SearchResult, rescored: list[Rescored], metric: str) -> None:
    """Make the best re-scored candidate the search's choice (``result.best``), and keep the list."""
    result.rescored = rescored
    chosen = choose(rescored, metric)
    if chosen is not None:
        result.best = next(t for t in result.trials if t.trial_id == chosen.trial_id)


def _file(path: str) -> Path | None:
    return None if "://" in path else Path(path) / RESCORE_FILE


def _load(path: str) -> dict[str, dict[int, dict[str, float]]]:
    file = _file(path)
    if file is None or not file.is_file():
        return {}
    saved = json.loads(file.read_text())
    return {trial: {int(j): scores for j, scores in draws.items()} for trial, draws in saved.items()}


def _save(path: str, leaders: list[Rescored]) -> None:
    file = _file(path)
    if file is not None:
        tmp = file.with_suffix(".tmp")
        tmp.write_text(json.dumps({c.trial_id: c.draws for c in leaders}))
        tmp.replace(file)
