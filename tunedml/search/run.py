"""Running (or resuming) one search on Ray Tune, and reading its trials back as a summary.

Nothing here talks to MLflow: tracking plugs in as a Tune callback (:mod:`tunedml.tracking.search_runs`).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ray import tune

from ..choices import AUTO
from ..config import from_flat
from ..errors import ConfigError
from ..ray_init import init_ray
from ..space import SearchSpace, config_keys
from .lines import Relay, TrialLines, saved_error, trial_status
from .options import DEFAULT_STORAGE, SearchOptions, check_per_option
from .rescore import apply, rescore
from .results import SearchInterrupted, SearchResult, TrialSummary, best_trial
from .schedule import make_scheduler, make_searcher, run_bounds
from .trainable import trainable

STATE_FILE = "tunedml_search.json"  # what the search was, so --resume and `tunedml best` can read it
CHECKPOINT_EVERY_S = "2"  # TUNE_GLOBAL_CHECKPOINT_S unless set: how often Ray saves the search's state


def experiment_path(dataset: str, space: SearchSpace, options: SearchOptions) -> tuple[str, str]:
    """(storage, name): a new timestamped name, or for --resume the given or latest matching one."""
    storage = options.storage or str(Path(DEFAULT_STORAGE).resolve())
    prefix = f"{Path(dataset).name}-{space.name}"
    if options.name:
        return storage, options.name
    if not options.resume:
        return storage, f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    if "://" in storage:
        raise ConfigError(f"--resume with --storage {storage}: pass --name NAME of the search to resume")
    found = sorted(p.name for p in Path(storage).glob(f"{prefix}-*") if (p / STATE_FILE).exists())
    if not found:
        raise ConfigError(f"--resume: no search {prefix}-* under {storage}; run it first or pass --name")
    return storage, found[-1]


def run_search(
    tokens: Any,
    base: dict[str, Any],
    space: SearchSpace,
    options: SearchOptions,
    callbacks: list[Any] | None = None,
    state: dict[str, Any] | None = None,
) -> SearchResult:
    """Run (or resume) one search over ``space`` on already tokenized data; return its summary.

    ``base`` is the flat config that the space's fixed and searched values override.
    """
    options.validate()
    check_per_option(space, options)
    init_ray(options.address, options.verbose)
    if options.concurrency == AUTO:  # the API resolves it in its checks; a direct call here
        from ..checks import local_node, ray_nodes

        options = replace(options, concurrency=options.at_once(ray_nodes() or [local_node()])[0])
    storage, name = experiment_path(base.get("data.dataset", "dataset"), space, options)
    path = f"{storage.rstrip('/')}/{name}"
    cpus = options.cpus_per_trial or _default_cpus(options.concurrency)
    fn = tune.with_resources(
        tune.with_parameters(trainable, tokens=tokens, base=base, repeats=options.repeats, threads=max(1, int(cpus))),
        {"cpu": cpus, "gpu": gpus_per_trial(options)},
    )
    objective = options.objective
    total = int(read_state(path).get("options", {}).get("trials", options.trials)) if options.resume else options.trials
    lines = TrialLines(total, objective, hide=set(space.root.fixed))
    relay = Relay(name, [lines, *(callbacks or [])])
    # Ray saves the search's state every 10 s or more (and at Ctrl-C); every 2 s instead, so that a
    # killed driver loses only trials that ended in its last 2 s. Each save copies the results
    # folder, so not after every step.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", CHECKPOINT_EVERY_S)
    bounds = run_bounds(space, base, _train_size(tokens, base, space))
    start = time.perf_counter()
    if options.resume:
        if not tune.Tuner.can_restore(path):
            raise ConfigError(f"--resume: {path} holds no search that can be resumed")
        tuner = tune.Tuner.restore(path, trainable=fn, resume_unfinished=True, resume_errored=False)
    else:
        _write_state(storage, name, {**(state or {}), "space": space.path, "base": base, "options": options.__dict__})
        tuner = tune.Tuner(
            fn,
            tune_config=tune.TuneConfig(
                search_alg=make_searcher(space, options),
                scheduler=make_scheduler(options.scheduler, bounds, objective),
                num_samples=options.trials,
                time_budget_s=options.time_budget_s,
                trial_dirname_creator=_trial_dirname,
                reuse_actors=True,
            ),  # a new trial process would import torch and transformers again
            run_config=tune.RunConfig(
                name=name,
                storage_path=storage,
                callbacks=[relay],
                verbose=2 if options.verbose else 0,
                failure_config=tune.FailureConfig(max_failures=options.retries, fail_fast=False),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            ),
        )
    with relay.live():
        tuner.fit()  # Ctrl-C: Ray saves the state, stops the trials and returns
    result = _summarise(_saved_trials(path), base, space, path, objective, time.perf_counter() - start)
    if _interrupted(result, total, options):
        done = sum(t.status in ("FINISHED", "KILLED", "FAILED") for t in result.trials)
        raise SearchInterrupted(
            f"{done} of {total} trials ended; the search is saved in {path}; continue it with --resume --name {name}",
            result,
        )
    n, draws = _rescoring(path, options)
    if n and result.best is not None:
        rescore_start = time.perf_counter()
        try:
            leaders = rescore(
                tokens, base, result, n, draws, result.metric, cpus, options.gpus_per_trial, options.verbose
            )
        except KeyboardInterrupt:
            raise SearchInterrupted(
                f"every trial ended; re-scoring stopped; the search is saved in {path}; "
                f"continue it with --resume --name {name}",
                result,
            ) from None
        apply(result, leaders, result.metric)
        result.best_config = from_flat({**base, **result.best.config}, source="best trial").to_flat()
        result.seconds = time.perf_counter() - start
        result.rescore_seconds = time.perf_counter() - rescore_start
    return result


def _rescoring(path: str, options: SearchOptions) -> tuple[int, int]:
    """(leaders, draws) to re-score: the options the search was started with (on --resume, the saved ones)."""
    saved = read_state(path).get("options", {}) if options.resume else {}
    return int(saved.get("rescore", options.rescore)), int(saved.get("rescore_draws", options.rescore_draws))


def _train_size(tokens: Any, base: dict[str, Any], space: SearchSpace) -> int:
    """Training examples of a draw of the search's data (what a run given in epochs steps through)."""
    from ..train import draw_for

    return len(draw_for(from_flat({**base, **space.root.fixed}, source=space.path), tokens).train)


def gpus_per_trial(options: SearchOptions) -> float:
    """The GPUs each trial asks for; ``auto`` chosen from the Ray this search runs on, by the rule
    of the pre-flight checks (:func:`tunedml.checks.choose_gpus`)."""
    from ..checks import autoscaling, choose_gpus, on_cluster, ray_nodes

    grows = on_cluster(options.address) and autoscaling()
    return choose_gpus(options.gpus_per_trial, ray_nodes() or [], options.concurrency, "trial", "", grows)[0]


def _default_cpus(concurrency: int) -> float:
    """All CPUs shared among the concurrent trials, but no more than one node has (a trial runs on one)."""
    import ray

    per_node = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")] or [1]
    total = int(ray.cluster_resources().get("CPU", 1))
    return max(1.0, float(min(total // concurrency, int(max(per_node)))))


def _trial_dirname(trial: Any) -> str:
    """``trial_<id>``: the id printed on each trial's line, instead of Ray's long config-named folders."""
    return f"trial_{trial.trial_id}"


def _interrupted(result: SearchResult, total: int, options: SearchOptions) -> bool:
    """Ray returns normally after Ctrl-C: a trial left unfinished, or too few trials, tells
    (unless --time-budget ran out, which ends a search the same way)."""
    if options.time_budget_s is not None and result.seconds >= options.time_budget_s:
        return False
    return any(t.status == "UNFINISHED" for t in result.trials) or len(result.trials) < total


def _write_state(storage: str, name: str, state: dict[str, Any]) -> None:
    if "://" in storage:
        return  # remote storage: Ray keeps its own state there; nothing local to add
    folder = Path(storage) / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / STATE_FILE).write_text(json.dumps(state, indent=2, default=str))


def read_state(path: str) -> dict[str, Any]:
    file = Path(path) / STATE_FILE
    return json.loads(file.read_text()) if file.exists() else {}


def _saved_trials(path: str) -> list[Any]:
    """The trials as Ray saved them. After Ctrl-C, the trials Ray stopped read TERMINATED in memory
    but were saved RUNNING or PENDING, which is what --resume goes by; so the saved state tells."""
    from ray.tune import ExperimentAnalysis

    return list(ExperimentAnalysis(path).trials)


def _summarise(
    trials: list[Any], base: dict[str, Any], space: SearchSpace, path: str, objective: str, seconds: float
) -> SearchResult:
    result = SearchResult(str(base.get("data.dataset")), space.name, path, objective, seconds=seconds)
    for trial in trials:
        last = trial.last_result or {}
        error = None
        if trial.status == "ERROR":
            status, error = "FAILED", saved_error(trial)
        elif trial.status != "TERMINATED" or last.get("step") is None:
            status = "UNFINISHED"  # pending or running when the search was interrupted, or out of time
        else:
            status = trial_status(trial)
        score = last.get(objective) if status in ("FINISHED", "KILLED") else None
        spread = last.get(f"{objective}_std") if score is not None else None
        result.trials.append(
            TrialSummary(
                trial.trial_id,
                status,
                config_keys(trial.config or {}),
                score,
                int(last.get("step") or 0),
                error,
                spread,
            )
        )
    result.choices = {key: space.root.options_of(key) for key in space.root.branches}
    result.choices.update({d.key: d.choices for d in space.root.dists if d.key == "loss.name"})
    result.best = best_trial(result.trials)
    if result.best is not None:
        result.best_config = from_flat({**base, **result.best.config}, source="best trial").to_flat()
    return result
