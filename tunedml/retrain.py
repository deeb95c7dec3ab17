"""Final evaluation: retrain a chosen configuration and the CCE baseline on the same fresh draws.

A search picks a configuration on dev scores of the draws it saw; this module answers the question
that matters afterwards: on *other* draws, scored on the test split, is it better than plain
cross-entropy, and by how much? Both configurations are trained on identical draws (same data
keys, same ``data.seed``/``train.seed`` offsets, same folds), so the comparison is paired: the
per-draw differences ``best_i - baseline_i`` cancel what comes from the draw itself, and a
percentile bootstrap over draws gives their confidence interval.

Draws are independent and run as Ray tasks when more than one fits on the machine (or a cluster is
given); otherwise one after another in this process. The training itself is the core
:class:`~tunedml.train.Trainer`; MLflow is reached only through :mod:`tunedml.tracking`.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from .config import FIELDS, RunConfig, flatten, from_flat
from .errors import ConfigError, NonFiniteLossError
from .losses import NO_DML

METRICS = ("accuracy", "macro_f1")
ROLES = ("best", "baseline")
FRESH_OFFSET = 1000  # draw i uses seed offset FRESH_OFFSET + i: draws a search (seeds 0, 1, ...) never saw
SHARED_PREFIXES = ("data.",)  # the baseline takes these from the best config, so the draws are identical
SHARED_KEYS = ("model.name", "train.seed", "train.device", "train.bf16", "train.threads")
DEFAULT_DRAWS = 5


# ----------------------------------------------------------------- statistics

@dataclass(frozen=True)
class Interval:
    """A mean with its percentile-bootstrap confidence interval."""

    mean: float
    low: float
    high: float
    confidence: float = 0.95

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "low": self.low, "high": self.high, "confidence": self.confidence}


def bootstrap_interval(values: np.ndarray | list[float], resamples: int = 10_000, confidence: float = 0.95,
                       seed: int = 0) -> Interval:
    """Mean of ``values`` and the percentile bootstrap interval of that mean (seeded, reproducible).

    With one value, or all values equal, the interval collapses to the value.
    """
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError("bootstrap_interval needs a non-empty 1-D array")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return Interval(float(x.mean()), float(low), float(high), confidence)


def paired_differences(best: np.ndarray | list[float], baseline: np.ndarray | list[float]) -> np.ndarray:
    """Per-draw differences in percentage points (scores are fractions in [0, 1])."""
    a, b = np.asarray(best, dtype=float), np.asarray(baseline, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired scores need the same draws, got {a.shape} and {b.shape}")
    return 100.0 * (a - b)


def mean_std(values: np.ndarray | list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    x = np.asarray(values, dtype=float)
    return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else 0.0


# ----------------------------------------------------------------- what is compared

@dataclass
class Candidate:
    """A configuration to retrain and where it came from (shown in tables and recorded in MLflow)."""

    role: str  # best | baseline
    config: dict[str, Any]  # the full flat run config
    source: str  # e.g. "MLflow run 3f2a… (space dml)", "file best.yaml", "CCE defaults"
    run_id: str | None = None  # the search run it came from, if any

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


@dataclass
class ConfigResult:
    candidate: Candidate
    draws: list[DrawResult] = field(default_factory=list)

    def scores(self, metric: str, indices: list[int] | None = None) -> np.ndarray:
        by_index = {d.index: d for d in self.draws if d.ok}
        chosen = sorted(by_index) if indices is None else indices
        return np.array([by_index[i].test[metric] for i in chosen], dtype=float)

    def summary(self) -> dict[str, dict[str, float]]:
        out = {}
        for m in METRICS:
            values = self.scores(m)
            mean, std = mean_std(values) if len(values) else (float("nan"), float("nan"))
            out[m] = {"mean": mean, "std": std}
        return out


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
        return {f"{prefix}embeddings": self.embeddings, f"{prefix}labels": self.labels,
                f"{prefix}prototypes": self.prototypes, f"{prefix}prototype_labels": self.prototype_labels,
                f"{prefix}prototype_kind": np.array(self.prototype_kind)}

    @classmethod
    def from_arrays(cls, arrays: Any, prefix: str = "") -> "Snapshot":
        return cls(np.asarray(arrays[f"{prefix}embeddings"]), np.asarray(arrays[f"{prefix}labels"]),
                   np.asarray(arrays[f"{prefix}prototypes"]), np.asarray(arrays[f"{prefix}prototype_labels"]),
                   str(arrays[f"{prefix}prototype_kind"]))


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
    best_draw: int | None = None  # the best configuration's top draw (test accuracy): saved, plotted
    snapshots: dict[str, Snapshot] = field(default_factory=dict)  # role -> snapshot of best_draw
    seconds: float = 0.0
    run_id: str | None = None  # the best configuration's final run, once recorded

    def result(self, role: str) -> ConfigResult:
        return self.best if role == "best" else self.baseline

    def to_dict(self) -> dict[str, Any]:
        def side(r: ConfigResult) -> dict[str, Any]:
            c = r.candidate
            return {"loss": c.loss, "source": c.source, "run_id": c.run_id, "config": c.config,
                    "summary": r.summary(), "draws": [d.__dict__ for d in r.draws]}

        return {"dataset": self.dataset, "label_names": self.label_names, "protocol": self.protocol,
                "best": side(self.best), "baseline": side(self.baseline),
                "differences_pp": {m: i.to_dict() for m, i in self.differences.items()},
                "paired_draws": self.paired, "best_draw": self.best_draw, "seconds": round(self.seconds, 1)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Comparison":
        def side(role: str) -> ConfigResult:
            s = d[role]
            return ConfigResult(Candidate(role, s["config"], s["source"], s.get("run_id")),
                                [DrawResult(**x) for x in s["draws"]])

        return cls(d["dataset"], list(d["label_names"]), d["protocol"], side("best"), side("baseline"),
                   {m: Interval(**i) for m, i in d["differences_pp"].items()}, list(d["paired_draws"]),
                   d.get("best_draw"), seconds=float(d.get("seconds", 0.0)))


# ----------------------------------------------------------------- choosing the two configurations

def shared_keys(config: dict[str, Any]) -> dict[str, Any]:
    """The keys that fix the draws and the encoder: the baseline copies them from the best config."""
    return {k: v for k, v in config.items() if k.startswith(SHARED_PREFIXES) or k in SHARED_KEYS}


def apply_overrides(config: dict[str, Any], overrides: dict[str, Any], source: str) -> dict[str, Any]:
    """A validated full flat config with the user's command-line overrides on top."""
    return from_flat(config, source=source).with_overrides(overrides, source="command line").to_flat()


def align_baseline(best: Candidate, baseline: Candidate) -> Candidate:
    """The baseline on the best config's data, encoder and seeds, so that draw i is the same draw."""
    config = {**baseline.config, **shared_keys(best.config)}
    return replace(baseline, config=from_flat(config, source=baseline.source).to_flat())


def cce_defaults(overrides: dict[str, Any]) -> Candidate:
    """Plain CCE with every other key at its default."""
    return Candidate("baseline", apply_overrides({"loss.name": NO_DML}, overrides, "CCE defaults"), "CCE defaults")


def read_yaml_config(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(fixed keys, searched keys) of a YAML file: a run config has no searched keys, a space may."""
    from .space import read_space_yaml

    flat = flatten(read_space_yaml(path), path)  # a space's `include:` files merged in
    fixed = {k: v for k, v in flat.items() if not isinstance(v, dict)}
    searched = {k: v for k, v in flat.items() if isinstance(v, dict)}
    return fixed, searched


def candidate_from_file(role: str, path: str, overrides: dict[str, Any],
                        recorded: dict[str, Any] | None = None, recorded_source: str | None = None) -> Candidate:
    """A config file as is; a space file as its fixed values plus, for its searched keys, the
    values of ``recorded`` (the best recorded search of that kind) or else their defaults."""
    fixed, searched = read_yaml_config(path)
    if not searched:
        return Candidate(role, apply_overrides(fixed, overrides, path), f"file {path}")
    from .space import load_space

    load_space(path)  # validates the distributions, with the usual messages
    taken = {k: v for k, v in (recorded or {}).items() if k in searched or k.startswith("loss.")}
    config = {**taken, **fixed}
    if "loss.name" not in config:
        raise ConfigError(f"{path}: loss.name is searched in this space; a baseline needs one loss. "
                          "Pass a run config or a space with a fixed loss.name (e.g. search_spaces/cce.yaml)")
    if recorded and config.get("loss.name") != recorded.get("loss.name"):
        taken, recorded_source = {}, None  # the recorded search was another loss: its values do not apply
        config = dict(fixed)
    how = f"searched keys from {recorded_source}" if recorded_source and taken else "searched keys at defaults"
    return Candidate(role, apply_overrides(config, overrides, path), f"space {path} ({how})")


@dataclass
class Selection:
    """What the user named: the configuration (a run, a file, or the best recorded search), the
    baseline (a file, a run, or the best recorded CCE search) and overrides for both."""

    dataset: str | None = None
    run_id: str | None = None
    config_file: str | None = None
    baseline: str | None = None  # a YAML run config or space file, or a run id
    overrides: dict[str, Any] = field(default_factory=dict)  # flat keys from --data-dir/--model/--set
    tracking_uri: str = ""

    def check(self) -> None:
        """What can be checked without the tracking store: cheap errors first."""
        from .data import check_dataset_name

        if self.run_id and self.config_file:
            raise ConfigError("--run-id and --config both name the configuration to retrain; pass one of them")
        if self.dataset:
            check_dataset_name(self.dataset)
        if self.config_file and read_yaml_config(self.config_file)[1]:
            raise ConfigError(f"{self.config_file}: is a search space; --config takes a run config such as the "
                              "output of `tunedml best --dataset DATASET` (or pass --run-id)")
        apply_overrides({}, self.overrides, "command line")  # a bad --set key or value


def select(sel: Selection) -> tuple[Candidate, Candidate]:
    """The two configurations to compare, validated; TrackingError/ConfigError before any training.

    Defaults: the best recorded search over a space that tries DML losses, and the best recorded
    search over a CCE-only space (else plain CCE with defaults) as the baseline.
    """
    from . import tracking
    from .data import check_dataset_name
    from .model import resolve_model

    sel.check()
    overrides = {**({"data.dataset": sel.dataset} if sel.dataset else {}), **sel.overrides}
    searches: dict[str, tuple[Any, Any]] = {}

    def recorded(dataset: str) -> tuple[Any, Any]:
        if dataset not in searches:
            searches[dataset] = tracking.best_searches(sel.tracking_uri, dataset)
        return searches[dataset]

    best = _select_best(sel, overrides, recorded)
    dataset = str(best.config["data.dataset"])
    check_dataset_name(dataset)
    resolve_model(str(best.config["model.name"]))
    baseline = _select_baseline(sel, overrides, recorded(dataset)[1] if sel.baseline is None or
                                _is_file(sel.baseline) else None)
    return best, align_baseline(best, baseline)


def _is_file(value: str) -> bool:
    return value.endswith((".yaml", ".yml")) or Path(value).exists()


def _select_best(sel: Selection, overrides: dict[str, Any], recorded: Callable[[str], tuple[Any, Any]]) -> Candidate:
    from . import tracking
    from .errors import TrackingError

    if sel.config_file:
        fixed, _ = read_yaml_config(sel.config_file)
        return Candidate("best", apply_overrides(fixed, overrides, sel.config_file), f"file {sel.config_file}")
    if sel.run_id:
        config, source = tracking.run_config(sel.tracking_uri, sel.run_id)
        return Candidate("best", apply_overrides(config, overrides, source), source, sel.run_id)
    dataset = sel.dataset or str(FIELDS["data.dataset"].default)
    record = recorded(dataset)[0]
    if record is None:
        raise TrackingError(f"no search over a DML space recorded for dataset {dataset!r} at {sel.tracking_uri}; "
                            "run `tunedml search --space search_spaces/dml.yaml` first, or pass --config or --run-id")
    source = f"MLflow search run {record.run_id} (space {record.space})"
    return Candidate("best", apply_overrides(record.config, overrides, source), source, record.run_id)


def _select_baseline(sel: Selection, overrides: dict[str, Any], cce: Any) -> Candidate:
    from . import tracking

    recorded_source = f"MLflow search run {cce.run_id} (space {cce.space})" if cce else None
    if sel.baseline is None:
        if cce is None:
            return cce_defaults(overrides)
        return Candidate("baseline", apply_overrides(cce.config, overrides, recorded_source), recorded_source, cce.run_id)
    if _is_file(sel.baseline):
        return candidate_from_file("baseline", sel.baseline, overrides, cce.config if cce else None, recorded_source)
    config, source = tracking.run_config(sel.tracking_uri, sel.baseline)
    return Candidate("baseline", apply_overrides(config, overrides, source), source, sel.baseline)


# ----------------------------------------------------------------- the draws

def draw_configs(cfg: RunConfig, seeds: int | None) -> list[RunConfig]:
    """Draw i of the final evaluation: fresh seeds for kshot, every fold (times seeds) for kfold."""
    from .search import repeat_config

    if cfg.data.protocol == "kfold":
        per_fold = seeds or 1
        return [replace(c, data=replace(c.data, fold=i % cfg.data.folds))
                for i in range(cfg.data.folds * per_fold)
                for c in [repeat_config(cfg, FRESH_OFFSET + i // cfg.data.folds)]]
    return [repeat_config(cfg, FRESH_OFFSET + i) for i in range(seeds or DEFAULT_DRAWS)]


def describe_protocol(cfg: RunConfig) -> str:
    d = cfg.data
    if d.protocol == "kfold":
        return f"kfold {d.folds} folds, {d.sample_size} training examples"
    return f"kshot k={d.k}"


def train_draw(cfg: RunConfig, tokens: Any, index: int, keep_state: bool = False) -> tuple[DrawResult, Snapshot | None]:
    """Train and test one draw; a diverging run is a result with an error, not an exception.

    The test split goes through the model once: its outputs give both the scores (with the
    configured inference mode, as :meth:`Trainer.evaluate` scores) and the embeddings to plot.
    """
    from .evaluate import class_centers, predict, scores
    from .train import Trainer, draw_for

    start = time.perf_counter()
    fold = cfg.data.fold if cfg.data.protocol == "kfold" else None
    trainer = Trainer(cfg, tokens, draw_for(cfg, tokens))
    try:
        fit = trainer.fit(evaluate_test=False)
    except NonFiniteLossError as e:
        return DrawResult(index, cfg.data.seed, cfg.train.seed, fold, None, None, time.perf_counter() - start, str(e)), None
    num_classes = tokens.corpus.num_classes
    proxies = trainer.loss.dml.proxies() if trainer.loss.dml is not None else None
    centers = None if proxies is not None else class_centers(trainer.outputs(trainer.draw.train), num_classes)
    out = trainer.outputs(trainer.draw.test)
    inf = cfg.inference
    test = scores(predict(inf.mode, out, trainer.loss, centers, inf.mix_weight, inf.proxy_scale), out.labels, num_classes)
    prototypes = proxies.detach().float().cpu().numpy() if proxies is not None else centers.numpy()
    snapshot = Snapshot(out.embeddings.numpy(), np.asarray(out.labels), prototypes,
                        np.repeat(np.arange(num_classes), len(prototypes) // num_classes),
                        "proxies" if proxies is not None else "class centers")
    if keep_state:
        snapshot.state = {"model": {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()},
                          "loss": {k: v.detach().cpu() for k, v in trainer.loss.state_dict().items()}}
    return DrawResult(index, cfg.data.seed, cfg.train.seed, fold, test, fit.dev, time.perf_counter() - start), snapshot


@dataclass
class RetrainOptions:
    seeds: int | None = None  # kshot: number of draws (default 5); kfold: seeds per fold (default 1)
    parallel: int | None = None  # draws at a time; None: as many as the CPUs allow; 1: in this process
    cpus_per_draw: float | None = None
    gpus_per_draw: float | None = None  # None: 1 when this machine has a GPU (so draws use it), else 0
    address: str | None = None  # a Ray cluster (always runs as Ray tasks)
    bootstrap: int = 10_000
    confidence: float = 0.95
    seed: int = 0  # of the bootstrap
    keep_model: bool = False
    verbose: bool = False

    def validate(self) -> None:
        checks = [
            (self.seeds is None or self.seeds >= 1, f"--seeds must be >= 1, got {self.seeds}"),
            (self.parallel is None or self.parallel >= 1, f"--parallel must be >= 1, got {self.parallel}"),
            (self.cpus_per_draw is None or self.cpus_per_draw > 0, f"--cpus-per-draw must be > 0, got {self.cpus_per_draw}"),
            (self.gpus_per_draw is None or self.gpus_per_draw >= 0, f"--gpus-per-draw must be >= 0, got {self.gpus_per_draw}"),
            (self.bootstrap >= 100, f"--bootstrap must be >= 100 resamples, got {self.bootstrap}"),
            (0 < self.confidence < 1, f"confidence must be in (0, 1), got {self.confidence}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)


@dataclass
class Job:
    role: str
    index: int
    cfg: RunConfig


Finished = tuple[Job, DrawResult, Any]  # the snapshot, or a Ray reference to it
DrawCallback = Callable[[Job, DrawResult], None]


def _local_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass(frozen=True)
class Plan:
    ray: bool  # False: one draw after another in this process
    cpus: float  # per draw
    gpus: float  # per draw


def _plan(options: RetrainOptions, jobs: int) -> Plan:
    """Ray only when two or more draws fit at once (or a cluster is named); a local GPU is used."""
    import torch

    local_gpus = torch.cuda.device_count() if not options.address else 0
    gpus = options.gpus_per_draw if options.gpus_per_draw is not None else (1.0 if local_gpus else 0.0)
    if options.address:
        return Plan(True, options.cpus_per_draw or 1.0, gpus)
    cpus = _local_cpus()
    per = options.cpus_per_draw or max(1.0, float(cpus // min(jobs, options.parallel or cpus)))
    at_once = min(jobs, int(cpus // per), options.parallel or jobs)
    if gpus > 0:
        at_once = min(at_once, int(local_gpus // gpus))
    return Plan(at_once > 1, per, gpus)


def _run_local(jobs: list[Job], tokens: Any, keep_state: bool) -> Iterator[Finished]:
    for job in jobs:
        result, snapshot = train_draw(job.cfg, tokens, job.index, keep_state and job.role == "best")
        yield job, result, snapshot


def _run_ray(jobs: list[Job], tokens: Any, keep_state: bool, options: RetrainOptions, plan: Plan) -> Iterator[Finished]:
    import ray

    from .search import init_ray

    init_ray(options.address, options.verbose)
    task = ray.remote(num_cpus=plan.cpus, num_gpus=plan.gpus, num_returns=2, max_retries=0)(train_draw)
    tokens_ref = ray.put(tokens)
    threads = max(1, int(plan.cpus))
    pending: dict[Any, tuple[Job, Any]] = {}
    for job in jobs:
        cfg = job.cfg if job.cfg.train.threads else replace(job.cfg, train=replace(job.cfg.train, threads=threads))
        result_ref, snapshot_ref = task.remote(cfg, tokens_ref, job.index, keep_state and job.role == "best")
        pending[result_ref] = (job, snapshot_ref)
    while pending:
        [done], _ = ray.wait(list(pending), num_returns=1)
        job, snapshot_ref = pending.pop(done)
        yield job, ray.get(done), snapshot_ref


def _fetch(handle: Any) -> Snapshot | None:
    if handle is None or isinstance(handle, Snapshot):
        return handle
    import ray

    return ray.get(handle)


def retrain(tokens: Any, best: Candidate, baseline: Candidate, options: RetrainOptions,
            on_draw: DrawCallback | None = None) -> Comparison:
    """Train both configurations on the same draws; compare them draw by draw."""
    options.validate()
    baseline = align_baseline(best, baseline)
    start = time.perf_counter()
    per_role = {c.role: draw_configs(c.run_config, options.seeds) for c in (best, baseline)}
    jobs = [Job(role, i, cfgs[i]) for i in range(len(per_role["best"])) for role, cfgs in per_role.items()]
    plan = _plan(options, len(jobs))
    stream = _run_ray(jobs, tokens, options.keep_model, options, plan) if plan.ray else \
        _run_local(jobs, tokens, options.keep_model)
    results = {"best": ConfigResult(best), "baseline": ConfigResult(baseline)}
    handles: dict[tuple[str, int], Any] = {}
    for job, result, handle in stream:
        results[job.role].draws.append(result)
        handles[(job.role, job.index)] = handle
        _drop_weaker_state(handles, results["best"], job)
        if on_draw:
            on_draw(job, result)
    for r in results.values():
        r.draws.sort(key=lambda d: d.index)
    comparison = compare(str(best.config["data.dataset"]), list(tokens.corpus.label_names),
                         describe_protocol(best.run_config), results["best"], results["baseline"], options)
    if comparison.best_draw is not None:
        for role in ROLES:
            snapshot = _fetch(handles.get((role, comparison.best_draw)))
            if snapshot is not None:
                comparison.snapshots[role] = snapshot
    comparison.seconds = time.perf_counter() - start
    return comparison


def _drop_weaker_state(handles: dict[tuple[str, int], Any], best: ConfigResult, job: Job) -> None:
    """In-process runs keep the weights of the best configuration's top draw only (memory)."""
    if job.role != "best":
        return
    top = _top_draw(best)
    for (role, index), handle in handles.items():
        if role == "best" and index != top and isinstance(handle, Snapshot):
            handle.state = None


def _top_draw(result: ConfigResult) -> int | None:
    ok = [d for d in result.draws if d.ok]
    return max(ok, key=lambda d: (d.test["accuracy"], d.test["macro_f1"], -d.index)).index if ok else None


def compare(dataset: str, label_names: list[str], protocol: str, best: ConfigResult, baseline: ConfigResult,
            options: RetrainOptions) -> Comparison:
    """Paired differences over the draws both configurations finished, with bootstrap intervals."""
    ok = {d.index for d in best.draws if d.ok} & {d.index for d in baseline.draws if d.ok}
    paired = sorted(ok)
    differences = {}
    if paired:
        for m in METRICS:
            d = paired_differences(best.scores(m, paired), baseline.scores(m, paired))
            differences[m] = bootstrap_interval(d, options.bootstrap, options.confidence, options.seed)
    return Comparison(dataset, label_names, protocol, best, baseline, differences, paired, _top_draw(best))


# ----------------------------------------------------------------- saved models

MODEL_FILES = ("encoder", "head.pt", "config.yaml", "labels.json")


def save_model(path: str | Path, candidate: Candidate, snapshot: Snapshot, label_names: list[str],
               draw: DrawResult | None = None) -> Path:
    """A self-contained folder: the encoder (Hugging Face format, with its tokenizer), the head and
    loss weights (proxies) with class centers, the run config and the label names."""
    import torch

    from .model import build_model, load_tokenizer

    if snapshot.state is None:
        raise ValueError("this snapshot holds no weights; retrain with keep_model=True")
    cfg = candidate.run_config
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    model = build_model(cfg.model.name, len(label_names), cfg.model.pooling, cfg.model.dropout)
    model.load_state_dict(snapshot.state["model"])
    model.encoder.save_pretrained(folder / "encoder")
    load_tokenizer(cfg.model.name).save_pretrained(folder / "encoder")
    centers = torch.from_numpy(snapshot.prototypes) if snapshot.prototype_kind == "class centers" else None
    torch.save({"head": model.head.state_dict(), "loss": snapshot.state["loss"], "centers": centers},
               folder / "head.pt")
    (folder / "config.yaml").write_text(cfg.to_yaml())
    meta = {"labels": label_names, "source": candidate.source, "model": cfg.model.name,
            "draw": draw.__dict__ if draw else None}
    (folder / "labels.json").write_text(json.dumps(meta, indent=2))
    return folder


def save_top_model(comparison: Comparison, folder: str | None = None) -> Path | None:
    """Save the best configuration's top draw (kept by ``keep_model``); default folder
    ``tunedml_models/<dataset>-<loss>-<time>``. None when there is none (every draw failed)."""
    snapshot = comparison.snapshots.get("best")
    if snapshot is None or snapshot.state is None:
        return None
    candidate = comparison.best.candidate
    name = f"{Path(comparison.dataset).name}-{candidate.loss}-{time.strftime('%Y%m%d-%H%M%S')}"
    draw = next(d for d in comparison.best.draws if d.index == comparison.best_draw)
    return save_model(folder or Path("tunedml_models") / name, candidate, snapshot, comparison.label_names, draw)


@dataclass
class SavedModel:
    """A retrained model loaded for prediction with its configured inference mode."""

    cfg: RunConfig
    model: Any
    loss: Any
    centers: Any
    tokenizer: Any
    label_names: list[str]

    def predict_ids(self, texts: list[str]) -> np.ndarray:
        from .data import Corpus, tokenize
        from .evaluate import forward_all, predict

        corpus = Corpus("predict", list(texts), np.zeros(len(texts), dtype=np.int64), self.label_names,
                        np.arange(len(texts)), None)
        tokens = tokenize(corpus, self.tokenizer, self.cfg.data.max_length)
        device = next(self.model.parameters()).device
        out = forward_all(self.model, tokens, np.arange(len(texts)), self.cfg.train.eval_batch_size, device)
        inf = self.cfg.inference
        return predict(inf.mode, out, self.loss, self.centers, inf.mix_weight, inf.proxy_scale)

    def predict(self, texts: list[str]) -> list[str]:
        """Label names for ``texts``."""
        return [self.label_names[i] for i in self.predict_ids(texts)]


def load_model(path: str | Path) -> SavedModel:
    """Load a folder written by :func:`save_model` (or `tunedml retrain --save-model`)."""
    import torch

    from .config import build_config
    from .errors import TunedMLError
    from .losses import build_loss
    from .model import build_model, load_tokenizer

    folder = Path(path)
    missing = [f for f in MODEL_FILES if not (folder / f).exists()]
    if missing:
        raise TunedMLError(f"{folder}: not a saved tunedml model (missing {', '.join(missing)})")
    labels = json.loads((folder / "labels.json").read_text())["labels"]
    cfg = build_config(str(folder / "config.yaml")).with_overrides({"model.name": str(folder / "encoder")})
    model = build_model(cfg.model.name, len(labels), cfg.model.pooling, cfg.model.dropout)
    weights = torch.load(folder / "head.pt", map_location="cpu", weights_only=True)
    model.head.load_state_dict(weights["head"])
    loss = build_loss(cfg.loss.name, cfg.loss.ce_weight, cfg.loss.dml_weight, cfg.loss.params, len(labels),
                      model.hidden_size, weighting=cfg.loss.weighting)
    loss.load_state_dict(weights["loss"])
    model.eval()
    return SavedModel(cfg, model, loss, weights["centers"], load_tokenizer(cfg.model.name), labels)

