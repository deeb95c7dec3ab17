"""The draws of a final evaluation and where they run: fresh seeds (kshot) or every fold (kfold),
each trained and tested by the core :class:`~tunedml.train.Trainer`, one after another in this
process or as Ray tasks when two or more fit at once (or a cluster is named)."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator

import numpy as np

from .. import timing
from ..config import RunConfig
from ..errors import NonFiniteLossError
from ..evaluate import Outputs, class_centers
from ..results import ConfigResult, DrawResult, Snapshot
from ..train import Trainer, draw_for
from .options import RetrainOptions

FRESH_OFFSET = 1000  # draw i uses seed offset FRESH_OFFSET + i: draws a search (seeds 0, 1, ...) never saw
DEFAULT_DRAWS = 5


@dataclass
class Job:
    role: str
    index: int
    cfg: RunConfig


Finished = tuple[Job, DrawResult, Any]  # the snapshot, or a Ray reference to it
DrawCallback = Callable[[Job, DrawResult], None]


def fresh_config(cfg: RunConfig, offset: int) -> RunConfig:
    """The draw at seed offset ``offset``: another few-shot draw and another initialisation seed."""
    from ..search import repeat_config  # the same rule as a search's repeats

    return repeat_config(cfg, offset)


def draw_configs(cfg: RunConfig, seeds: int | None) -> list[RunConfig]:
    """Draw i of the final evaluation, at seed offset FRESH_OFFSET + i: fresh draws for kshot; for
    kfold, every test fold (times ``seeds``), each with its own training sample and initialisation.

    A kfold draw trains on a sample of the draw part (never on a test fold), so giving every fold its
    own sample makes the draws independent trainings: the paired interval and tests then count the
    training's variance, not the same model scored on several test folds.
    """
    if cfg.data.protocol == "kfold":
        per_fold = seeds or 1
        return [
            replace(c, data=replace(c.data, fold=i % cfg.data.folds))
            for i in range(cfg.data.folds * per_fold)
            for c in [fresh_config(cfg, FRESH_OFFSET + i)]
        ]
    return [fresh_config(cfg, FRESH_OFFSET + i) for i in range(seeds or DEFAULT_DRAWS)]


def describe_protocol(cfg: RunConfig) -> str:
    d = cfg.data
    if d.protocol == "kfold":
        return f"kfold {d.folds} folds, {d.sample_size} training examples"
    return f"kshot k={d.k}"


def train_draw(cfg: RunConfig, tokens: Any, index: int, keep_state: bool = False) -> tuple[DrawResult, Snapshot | None]:
    """Train and test one draw; a diverging run is a result with an error, not an exception.

    The test split goes through the model once: its outputs give both the scores (the Trainer's
    own evaluation, with the configured inference mode) and the embeddings to plot.
    """
    start = time.perf_counter()
    fold = cfg.data.fold if cfg.data.protocol == "kfold" else None
    trainer = Trainer(cfg, tokens, draw_for(cfg, tokens))
    try:
        fit = trainer.fit(evaluate_test=False)
    except NonFiniteLossError as e:
        return DrawResult(
            index, cfg.data.seed, cfg.train.seed, fold, None, None, time.perf_counter() - start, str(e)
        ), None
    with timing.phase("test"):
        out = trainer.outputs(trainer.draw.test)
        test = trainer.evaluate(trainer.draw.test, out)
        snapshot = _snapshot(trainer, out, keep_state)
    timing.flush()
    return DrawResult(index, cfg.data.seed, cfg.train.seed, fold, test, fit.dev, time.perf_counter() - start), snapshot


def _snapshot(trainer: Trainer, test: Outputs, keep_state: bool) -> Snapshot:
    """Test embeddings with the loss's proxies, or else the class centers of the training embeddings."""
    num_classes = trainer.tokens.corpus.num_classes
    proxies = trainer.loss.dml.proxies() if trainer.loss.dml is not None else None
    if proxies is not None:
        prototypes, kind = proxies.detach().float().cpu().numpy(), "proxies"
    else:
        prototypes, kind = class_centers(trainer.outputs(trainer.draw.train), num_classes).numpy(), "class centers"
    snapshot = Snapshot(
        test.embeddings.numpy(),
        np.asarray(test.labels),
        prototypes,
        np.repeat(np.arange(num_classes), len(prototypes) // num_classes),
        kind,
    )
    if keep_state:
        snapshot.state = {
            "model": {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()},
            "loss": {k: v.detach().cpu() for k, v in trainer.loss.state_dict().items()},
        }
    return snapshot


@dataclass(frozen=True)
class Plan:
    ray: bool  # False: one draw after another in this process
    cpus: float  # per draw
    gpus: float  # per draw


def plan(options: RetrainOptions, jobs: int) -> Plan:
    """Ray only when two or more draws fit at once (or a cluster is named); GPUs used where there
    are (``auto``: see :func:`tunedml.checks.choose_gpus`), one draw at a time per GPU asked for."""
    from ..checks import autoscaling, choose_gpus, nodes_for

    cluster = bool(options.address)
    nodes = nodes_for(cluster, options.address, options.verbose)  # a cluster is joined, as run_ray would next
    gpus = choose_gpus(options.gpus_per_draw, nodes, options.concurrency or 1, "draw", "", cluster and autoscaling())[0]
    if cluster:
        return Plan(True, options.cpus_per_draw or 1.0, gpus)
    # the CPUs of the machine (or of the local Ray already started), not OMP_NUM_THREADS: that caps
    # the threads of one process, not how many draws may run side by side
    cpus = max(1, int(sum(n.cpus for n in nodes)))
    per = options.cpus_per_draw or max(1.0, float(cpus // min(jobs, options.concurrency or cpus)))
    at_once = min(jobs, int(cpus // per), options.concurrency or jobs)
    if gpus > 0:
        at_once = min(at_once, int(sum(n.gpus for n in nodes) // gpus))
    return Plan(at_once > 1, per, gpus)


def run_local(jobs: list[Job], tokens: Any, keep_state: bool) -> Iterator[Finished]:
    for job in jobs:
        result, snapshot = train_draw(job.cfg, tokens, job.index, keep_state and job.role == "best")
        yield job, result, snapshot


def run_ray(jobs: list[Job], tokens: Any, keep_state: bool, options: RetrainOptions, how: Plan) -> Iterator[Finished]:
    import ray

    from ..ray_init import init_ray

    init_ray(options.address, options.verbose)
    task = ray.remote(num_cpus=how.cpus, num_gpus=how.gpus, num_returns=2, max_retries=0)(train_draw)
    tokens_ref = ray.put(tokens)
    threads = max(1, int(how.cpus))
    pending: dict[Any, tuple[Job, Any]] = {}
    for job in jobs:
        cfg = job.cfg if job.cfg.train.threads else replace(job.cfg, train=replace(job.cfg.train, threads=threads))
        result_ref, snapshot_ref = task.remote(cfg, tokens_ref, job.index, keep_state and job.role == "best")
        pending[result_ref] = (job, snapshot_ref)
    while pending:
        [done], _ = ray.wait(list(pending), num_returns=1)
        job, snapshot_ref = pending.pop(done)
        yield job, ray.get(done), snapshot_ref


def fetch(handle: Any) -> Snapshot | None:
    """A snapshot kept in this process, or fetched from Ray's object store."""
    if handle is None or isinstance(handle, Snapshot):
        return handle
    import ray

    return ray.get(handle)


def drop_weaker_state(handles: dict[tuple[str, int], Any], best: ConfigResult, job: Job) -> None:
    """In-process runs keep the weights of the best configuration's top draw only (memory)."""
    if job.role != "best":
        return
    top = best.top_draw()
    for (role, index), handle in handles.items():
        if role == "best" and index != top and isinstance(handle, Snapshot):
            handle.state = None
