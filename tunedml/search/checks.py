"""Everything `tunedml search` will use, checked for every dataset before MLflow or Ray is
touched: where it writes, the names of its searches, its models, its data and every draw its
space can ask for, and the resources its trials ask for (``auto`` GPUs chosen here)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ..checks import (
    DRAW_KEYS,
    Request,
    autoscaling,
    check_address,
    check_draws,
    check_model,
    check_model_fits,
    check_quantity,
    check_request,
    check_storage,
    choose_gpus,
    nodes_for,
    on_cluster,
)
from ..choices import AUTO
from ..errors import ConfigError
from ..space import SearchSpace
from .options import SearchOptions
from .prepare import PreparedSearch

GROWING_DRAW_KEYS = ("data.k", "data.sample_size", "data.test_size")  # the larger, the harder to draw
RESUMED_AS_SAVED = {
    "trials": "--trials",
    "scheduler": "--scheduler",
    "metric": "--metric",
    "repeats": "--repeats",
    "sampler_seed": "--sampler-seed",
    "concurrency": "--concurrency",
    "time_budget_s": "--time-budget",
    "rescore": "--rescore",
    "rescore_draws": "--rescore-draws",
}


@dataclass(frozen=True)
class Resources:
    """What each trial gets, as the search will ask Ray for it."""

    cpus: float
    gpus: float
    at_once: int
    gpus_note: str  # why ``auto`` chose ``gpus`` ("" where the user gave a number)
    at_once_note: str = ""  # why ``--concurrency auto`` chose ``at_once`` ("" where the user gave a number)


def check_search(
    prepared: list[PreparedSearch], options: SearchOptions, uri: str, *, connect: bool = True
) -> Resources:
    """Every check of `tunedml search`, the tracking store's last (``connect=False``: a dry run,
    nothing created); returns the resources each trial will get (``options.gpus_per_trial`` may
    be ``auto``: this says what it is)."""
    from ..data import load_corpus
    from ..tracking import check_tracking
    from .run import experiment_path

    options.validate()
    check_storage(options.storage)
    check_address(options.address)
    datasets = [p.dataset for p in prepared]
    if len(set(datasets)) < len(datasets):
        raise ConfigError(f"--datasets lists {next(d for d in datasets if datasets.count(d) > 1)} twice")
    if options.name and len(datasets) > 1:
        raise ConfigError(
            f"--name names one search; with {len(datasets)} datasets leave it out "
            "(each search is named <dataset>-<space>-<time>)"
        )
    for p in prepared:
        _check_search_folder(*experiment_path(p.driver.data.dataset, p.space, options), options)
        flat = p.driver.to_flat()
        for name in sorted({p.driver.model.name} | space_values(p.space.root, "model.name"), key=str):
            check_model(str(name))
            largest = [int(max(p.space.root.largest(k, flat[k]))) for k in ("model.reinit_layers", "data.max_length")]
            check_model_fits(str(name), *largest, source=p.space.path)
        d = p.driver.data
        corpus = load_corpus(d.dataset, d.data_dir, d.text_column, d.label_column)
        for settings, note in search_draws(p.space, flat):
            check_draws(corpus, [settings], note)
    resources = check_search_resources(options)  # on a cluster: joins it, as the search would next
    for p in prepared:
        devices = {p.driver.train.device} | space_values(p.space.root, "train.device")
        if resources.gpus == 0 and any(str(d).startswith("cuda") for d in devices):
            given = f"auto ({resources.gpus_note})" if options.gpus_per_trial == AUTO else "0"
            raise ConfigError(
                f"train.device=cuda with --gpus-per-trial {given}: Ray hides the GPUs from a trial "
                "that asks for none; pass --gpus-per-trial (e.g. 1, or 0.25 to share a GPU) or "
                "train.device=auto"
            )
    check_tracking(uri, connect=connect)
    return resources


def check_search_resources(options: SearchOptions) -> Resources:
    """The per-trial request against this machine, or the cluster it joins; ``auto`` GPUs chosen
    from what is there (see :func:`tunedml.checks.choose_gpus`)."""
    check_quantity(options.cpus_per_trial, "--cpus-per-trial")
    if options.gpus_per_trial != AUTO:
        check_quantity(float(options.gpus_per_trial), "--gpus-per-trial")
    if options.concurrency != AUTO and options.concurrency > options.trials:
        raise ConfigError(
            f"--concurrency {options.concurrency} is more than --trials {options.trials}; "
            f"at most {options.trials} trials can run at once"
        )
    cluster = on_cluster(options.address)
    where = "the cluster" if cluster else "this machine"
    nodes = nodes_for(cluster, options.address, options.verbose)
    grows = cluster and autoscaling()
    at_once, why = options.at_once(nodes)
    gpus, note = choose_gpus(options.gpus_per_trial, nodes, at_once, "trial", where, grows)
    cpus = options.cpus_per_trial
    if cpus is None:  # the default: the CPUs shared among concurrent trials, at least 1
        cpus = max(1.0, float(min(sum(n.cpus for n in nodes) // at_once, max(n.cpus for n in nodes))))
    request = Request(cpus, gpus, at_once, "--cpus-per-trial", "--gpus-per-trial", "--concurrency")
    check_request(request, nodes, where, wait_ok=grows)
    return Resources(cpus, gpus, at_once, note, why)


def space_values(space: Any, key: str) -> set[Any]:
    """Every value a search space can give ``key``: fixed, categorical or as a choice's option."""
    values: set[Any] = set()
    if key in space.fixed:
        values.add(space.fixed[key])
    values.update(v for d in space.dists if d.key == key and d.kind == "categorical" for v in d.choices)
    for branch_key, (_, options) in space.branches.items():
        if branch_key == key:
            values.update(options)
        for sub in options.values():
            values |= space_values(sub, key)
    return values


def search_draws(space: SearchSpace, driver_flat: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """The draws a search can ask for: each branch at both ends of its ranges, and every key that
    grows the draw at its largest; each with a note of where the values come from."""
    out = []
    for example in space.root.examples(0) + space.root.examples(-1):
        flat = {**driver_flat, **example}
        searched = {k: flat[k] for k in DRAW_KEYS if k in example and k not in space.root.fixed}
        out.append((flat, _note(space.path, searched)))
    largest = {k: max(int(v) for v in space.root.largest(k, driver_flat[k])) for k in GROWING_DRAW_KEYS}
    grown = {k: v for k, v in largest.items() if v != driver_flat[k]}
    out.append(({**driver_flat, **grown}, _note(space.path, grown)))
    return out


def _note(path: str, searched: dict[str, Any]) -> str:
    shown = ", ".join(f"{k}={v}" for k, v in searched.items())
    return f"{path} searches {shown}" if searched else ""


def _check_search_folder(storage: str, name: str, options: SearchOptions) -> None:
    """--resume finds the search it continues; a new search does not land in an existing one's folder."""
    from .run import read_state

    if "://" in storage and not storage.startswith("file://"):
        return
    folder = Path(urlparse(storage).path if storage.startswith("file://") else storage) / name
    if options.resume:
        from ray import tune

        if not folder.is_dir() or not tune.Tuner.can_restore(str(folder)):
            raise ConfigError(
                f"--resume --name {name}: no search to resume in {folder.parent} "
                "(run it first, or check --name and --storage)"
            )
        _check_resumed_options(options, read_state(str(folder)).get("options", {}), name)
    elif folder.exists():
        raise ConfigError(
            f"--name {name}: a search of that name is already in {folder.parent}; continue it "
            f"with --resume --name {name}, or choose another name"
        )


def _check_resumed_options(options: SearchOptions, saved: dict[str, Any], name: str) -> None:
    """--resume continues a search as Ray saved it (its searcher, scheduler, sample count, budget):
    an option given another value than the search started with would be ignored, or (--repeats)
    would change the search halfway. Options left at their defaults are not compared."""
    default = SearchOptions()
    changed = [
        f"{flag} {getattr(options, key)} (it has {saved[key]})"
        for key, flag in RESUMED_AS_SAVED.items()
        if key in saved and getattr(options, key) not in (getattr(default, key), saved[key])
    ]
    if changed:
        raise ConfigError(
            f"--resume continues {name} with the options it started with; leave out " + ", ".join(changed)
        )
