"""Searches: Optuna's TPE proposes loss configurations, Ray Tune runs and schedules them.

The trainable wraps the core :class:`~tunedml.train.Trainer`; data are read and tokenized once in
the driver and reach every trial through ``tune.with_parameters`` (Ray's object store). Nothing here
talks to MLflow: tracking plugs in as a Tune callback.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

from ray import tune

from .config import FIELDS, RunConfig, from_flat
from .errors import ConfigError, unknown_choice
from .metrics import METRICS, check_metric
from .progress import Progress, fmt_duration
from .space import SearchSpace, config_keys

SCHEDULERS = ("asha", "hyperband", "none")
DEFAULT_STORAGE = "tunedml_results"
STATE_FILE = "tunedml_search.json"  # what the search was, so --resume and `tunedml best` can read it
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=@-]{0,199}")  # a search's folder name
CHECKPOINT_EVERY_S = "2"  # TUNE_GLOBAL_CHECKPOINT_S unless set: how often Ray saves the search's state


def check_name(name: str | None, what: str = "--name") -> None:
    """A name that becomes a folder is one path component of plain characters: nothing escapes."""
    if name is None:
        return
    if not NAME_PATTERN.fullmatch(name) or name in (".", ".."):
        raise ConfigError(f"{what} {name!r}: not a valid name; use letters, digits and . _ - + = @ "
                          "(one folder name, not a path, at most 200 characters, starting with a letter or digit)")


@dataclass
class SearchOptions:
    trials: int = 20
    concurrency: int = 1
    cpus_per_trial: float | None = None  # None: the cluster's CPUs shared among concurrent trials
    gpus_per_trial: float = 0.0
    scheduler: str = "asha"
    metric: str = "accuracy"  # on dev; reported as dev_<metric>
    repeats: int = 1
    time_budget_s: float | None = None
    storage: str | None = None
    name: str | None = None
    resume: bool = False
    address: str | None = None
    max_failures: int | None = None  # restarts of a failed trial; None: 1 on a cluster (--address), else 0
    seed: int = 0
    verbose: bool = False
    points: list[dict[str, Any]] = field(default_factory=list)  # configs (flat keys) to try first, in order
    # The first trials cycle through every option of this top-level choice, per_option_start times
    # each, before TPE proposes (after `points`): every loss gets tried. 0 turns it off.
    per_option_key: str = "loss.name"
    per_option_start: int = 1

    def validate(self) -> None:
        checks = [
            (self.trials >= 1, f"--trials must be >= 1, got {self.trials}"),
            (self.concurrency >= 1, f"--concurrency must be >= 1, got {self.concurrency}"),
            (self.cpus_per_trial is None or self.cpus_per_trial > 0, f"--cpus-per-trial must be > 0, got {self.cpus_per_trial}"),
            (self.gpus_per_trial >= 0, f"--gpus-per-trial must be >= 0, got {self.gpus_per_trial}"),
            (self.repeats >= 1, f"--repeats must be >= 1, got {self.repeats}"),
            (self.time_budget_s is None or self.time_budget_s > 0, f"--time-budget must be > 0, got {self.time_budget_s}"),
            (self.max_failures is None or self.max_failures >= 0, f"--max-failures must be >= 0, got {self.max_failures}"),
            (self.per_option_start >= 0, f"--start-per-option must be >= 0, got {self.per_option_start}"),
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
    if options.per_option_start and options.per_option_key != "loss.name" and not space.root.options_of(options.per_option_key):
        raise ConfigError(f"--start-per-option {options.per_option_key}={options.per_option_start}: {space.path} has no "
                          f"top-level choice or categorical over {options.per_option_key}; valid: "
                          f"{', '.join(k for k in space.root.keys() if space.root.options_of(k)) or 'none'}")


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


def _best(trials: list[TrialSummary]) -> TrialSummary | None:
    """The highest score among finished trials (else among any scored one); ties go to the lower
    spread over the repeats, a configuration that is good on every draw rather than on one."""
    scored = [t for t in trials if t.score is not None and t.status == "FINISHED"] or \
             [t for t in trials if t.score is not None]
    return max(scored, key=lambda t: (t.score, -(t.spread or 0.0)), default=None)


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
            best = _best(trials)
            out[str(option)] = {"trials": len(trials), "finished": sum(t.status == "FINISHED" for t in trials),
                                "best": best.score if best else None}
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
            "dataset": self.dataset, "space": self.space, "path": self.path, "objective": self.objective,
            "best_score": self.best.score if self.best else None,
            "best_trial": self.best.trial_id if self.best else None,
            "best_config": self.best_config,
            "trials": len(self.trials),
            "finished": sum(t.status == "FINISHED" for t in self.trials),
            "stopped_early": sum(t.status == "KILLED" for t in self.trials),
            "unfinished": sum(t.status == "UNFINISHED" for t in self.trials),  # --time-budget ran out first
            "failed": [{"trial": t.trial_id, "error": t.error} for t in self.failures],
            "per_option": {key: self.per_option(key) for key in self.choices},
            "seconds": round(self.seconds, 1),
        }


# ----------------------------------------------------------------- the trainable (runs in Ray workers)

def repeat_config(cfg: RunConfig, r: int) -> RunConfig:
    """The r-th repeat: another few-shot draw and another initialisation seed."""
    return replace(cfg, data=replace(cfg.data, seed=cfg.data.seed + r), train=replace(cfg.train, seed=cfg.train.seed + r))


def trainable(config: dict[str, Any], tokens: Any, base: dict[str, Any], repeats: int, threads: int = 0) -> None:
    """One trial: train ``repeats`` draws in lockstep, report their mean dev scores at every dev
    evaluation (``step``: optimizer steps so far, the scheduler's clock).

    ``threads`` (the CPUs granted to the trial) applies where the config leaves train.threads at 0;
    it is not written into the config, so the best configuration carries no machine's CPU count.
    """
    import numpy as np
    import ray
    import torch

    from .train import Trainer, draw_for, prepare_tokens

    cfg = from_flat({**base, **config_keys(config)}, source="trial config")
    if not cfg.train.threads and threads:
        cfg = replace(cfg, train=replace(cfg.train, threads=threads))
    if (cfg.model.name, cfg.data.max_length) != (tokens.tokenizer_name, tokens.max_length):
        tokens = prepare_tokens(cfg)  # the space searches the model or max_length
    runs = [repeat_config(cfg, r) for r in range(repeats)]
    trainers = [Trainer(c, tokens, draw_for(c, tokens)) for c in runs]
    node = ray.get_runtime_context().get_node_id()
    for results in zip(*(t.checkpoints() for t in trainers)):
        tune.report({
            "step": results[0].step,
            "steps": trainers[0].total_steps,
            "epoch": results[0].epoch,
            "train_loss": float(np.mean([r.train_loss for r in results])),
            # each term and the weights in effect (learned or EPO's): loss_ce, loss_dml_supcon, loss_weight_ce...
            **{f"loss_{k}": float(np.mean([r.loss_parts.get(k, np.nan) for r in results])) for k in results[0].loss_parts},
            **{f"dev_{m}": float(np.mean([r.dev[m] for r in results])) for m in METRICS},
            **({f"dev_{m}_std": float(np.std([r.dev[m] for r in results])) for m in METRICS} if repeats > 1 else {}),
            "dev_collapsed": float(np.mean([r.collapsed for r in results])),  # the share of repeats that collapsed
            "node_id": node,
            "threads": torch.get_num_threads(),  # what the trial really computes with
        })


# ----------------------------------------------------------------- driver side

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


def _scheduler(name: str, bounds: RunBounds, objective: str):
    """ASHA (or asynchronous HyperBand: ASHA over three brackets), on the clock of optimizer steps,
    its first rung at :attr:`RunBounds.first_rung`. Every bracket's rungs lie at or after it."""
    from ray.tune.schedulers import ASHAScheduler

    if name == "none" or bounds.first_rung >= bounds.steps:
        return None
    return ASHAScheduler(time_attr="step", metric=objective, mode="max", max_t=bounds.steps,
                         grace_period=bounds.first_rung, reduction_factor=3, brackets=3 if name == "hyperband" else 1)


def _searcher(space: SearchSpace, options: SearchOptions):
    import optuna
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    sampler = optuna.samplers.TPESampler(seed=options.seed, multivariate=True, group=True,
                                         n_startup_trials=min(10, max(2, options.trials // 3)))
    optuna.logging.set_verbosity(optuna.logging.DEBUG if options.verbose else optuna.logging.WARNING)
    points = [space.optuna_params(p) for p in options.points]
    if options.per_option_start:
        points += space.per_option_points(options.per_option_key, options.per_option_start)
    search = OptunaSearch(space=space.define_by_run, metric=options.objective, mode="max", sampler=sampler,
                          points_to_evaluate=points or None)  # enqueued in the Optuna study, in order
    return ConcurrencyLimiter(search, max_concurrent=options.concurrency)


def init_ray(address: str | None, verbose: bool) -> None:
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    kwargs: dict[str, Any] = {"log_to_driver": verbose, "configure_logging": True,
                              "logging_level": "INFO" if verbose else "ERROR"}
    if address:
        ray.init(address=address, **kwargs)
    elif os.environ.get("RAY_ADDRESS"):  # set by `ray job submit`: the job runs on its cluster
        ray.init(**kwargs)
    else:  # "local": without it Ray joins whatever cluster `ray start` last left on this machine
        ray.init(address="local", include_dashboard=False, **kwargs)
    from .interrupt import sigterm_as_ctrl_c

    sigterm_as_ctrl_c()  # ray.init replaced it with a handler that exits: a search would end FAILED
    if not verbose:  # failed trials are summarised by tunedml; Ray's tracebacks stay in the results folder
        import logging

        for name in ("ray", "ray.tune", "ray.train"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


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
            self.progress.step(f"{trial.trial_id} {note} at step {last.get('step', '?')}: {self.objective} "
                               f"{score:.4f}  {describe(trial.config, self.hide)}  {took}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.progress.step(f"{trial.trial_id} FAILED: {trial_error(trial)}  {describe(trial.config, self.hide)}")

    def on_trial_recover(self, iteration, trials, trial, **info):
        """A trial that failed within --max-failures (its node lost, say) starts again from step 0."""
        print(f"trial {trial.trial_id} failed ({trial_error(trial)}); restarting it", file=self.progress.stream, flush=True)


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


def _saved_error(trial: Any) -> str:
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


def run_search(tokens: Any, base: dict[str, Any], space: SearchSpace, options: SearchOptions,
               callbacks: list[Any] | None = None, state: dict[str, Any] | None = None) -> SearchResult:
    """Run (or resume) one search over ``space`` on already tokenized data; return its summary.

    ``base`` is the flat config that the space's fixed and searched values override.
    """
    import ray

    options.validate()
    check_per_option(space, options)
    init_ray(options.address, options.verbose)
    storage, name = experiment_path(base.get("data.dataset", "dataset"), space, options)
    path = f"{storage.rstrip('/')}/{name}"
    cpus = options.cpus_per_trial or _default_cpus(options.concurrency)
    fn = tune.with_resources(tune.with_parameters(trainable, tokens=tokens, base=base, repeats=options.repeats,
                                                  threads=max(1, int(cpus))),
                             {"cpu": cpus, "gpu": options.gpus_per_trial})
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
                search_alg=_searcher(space, options), scheduler=_scheduler(options.scheduler, bounds, objective),
                num_samples=options.trials, time_budget_s=options.time_budget_s, trial_dirname_creator=_trial_dirname,
                reuse_actors=True),  # a new trial process would import torch and transformers again
            run_config=tune.RunConfig(
                name=name, storage_path=storage, callbacks=[relay], verbose=2 if options.verbose else 0,
                failure_config=tune.FailureConfig(max_failures=options.retries, fail_fast=False),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
        )
    with relay.live():
        tuner.fit()  # Ctrl-C: Ray saves the state, stops the trials and returns
    result = _summarise(_saved_trials(path), base, space, path, objective, time.perf_counter() - start)
    if _interrupted(result, total, options):
        done = sum(t.status in ("FINISHED", "KILLED", "FAILED") for t in result.trials)
        raise SearchInterrupted(f"{done} of {total} trials ended; the search is saved in {path}; "
                                f"continue it with --resume --name {name}", result)
    return result


def _train_size(tokens: Any, base: dict[str, Any], space: SearchSpace) -> int:
    """Training examples of a draw of the search's data (what a run given in epochs steps through)."""
    from .train import draw_for

    return len(draw_for(from_flat({**base, **space.root.fixed}, source=space.path), tokens).train)


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


def _summarise(trials: list[Any], base: dict[str, Any], space: SearchSpace, path: str, objective: str,
               seconds: float) -> SearchResult:
    result = SearchResult(str(base.get("data.dataset")), space.name, path, objective, seconds=seconds)
    for trial in trials:
        last = trial.last_result or {}
        error = None
        if trial.status == "ERROR":
            status, error = "FAILED", _saved_error(trial)
        elif trial.status != "TERMINATED" or last.get("step") is None:
            status = "UNFINISHED"  # pending or running when the search was interrupted, or out of time
        else:
            status = trial_status(trial)
        score = last.get(objective) if status in ("FINISHED", "KILLED") else None
        spread = last.get(f"{objective}_std") if score is not None else None
        result.trials.append(TrialSummary(trial.trial_id, status, config_keys(trial.config or {}), score,
                                          int(last.get("step") or 0), error, spread))
    result.choices = {key: space.root.options_of(key) for key in space.root.branches}
    result.choices.update({d.key: d.choices for d in space.root.dists if d.key == "loss.name"})
    result.best = _best(result.trials)
    if result.best is not None:
        result.best_config = from_flat({**base, **result.best.config}, source="best trial").to_flat()
    return result
