"""Everything `tunedml retrain` will use, checked before anything trains: first what its options
alone tell (where it writes, the cluster, what each draw asks for, ``auto`` GPUs chosen), then,
once its two configurations are read, their models and every draw of both."""

from __future__ import annotations

from dataclasses import dataclass

from ..checks import (
    Request,
    autoscaling,
    check_address,
    check_draws,
    check_model,
    check_model_fits,
    check_output_folder,
    check_quantity,
    check_request,
    choose_gpus,
    nodes_for,
)
from ..choices import AUTO
from ..errors import ConfigError
from ..results import Candidate
from .options import RetrainOptions

DEFAULT_MODEL_FOLDER = "tunedml_models"


@dataclass(frozen=True)
class DrawResources:
    """What each draw asks for (CPUs: None leaves it to the plan, all CPUs shared)."""

    cpus: float | None
    gpus: float
    gpus_note: str  # why ``auto`` chose ``gpus`` ("" where the user gave a number)


def check_retrain_start(
    options: RetrainOptions, uri: str, save_model: str | None, *, connect: bool = True
) -> DrawResources:
    """What is known from the options alone: where it writes (--save-model, then the tracking
    store, opened unless ``connect`` is False), the cluster it joins and what each draw asks for."""
    from ..tracking import check_tracking

    options.validate()
    check_address(options.address)
    if save_model is not None:
        check_output_folder(save_model or DEFAULT_MODEL_FOLDER, "--save-model")
    resources = check_retrain_resources(options)
    check_tracking(uri, connect=connect)
    return resources


def check_retrain_resources(options: RetrainOptions) -> DrawResources:
    """The per-draw request: refused where :func:`tunedml.retrain.draws.plan` would silently drop
    it; ``auto`` GPUs: one per draw where there are GPUs (the plan then runs as many draws at a
    time as there are GPUs), a share where --concurrency asks for more draws at once than GPUs."""
    check_quantity(options.cpus_per_draw, "--cpus-per-draw")
    if options.gpus_per_draw != AUTO:
        check_quantity(float(options.gpus_per_draw), "--gpus-per-draw")
    cluster = bool(options.address)  # as retrain plans it: RAY_ADDRESS alone does not make a cluster run
    if cluster and options.concurrency is not None:
        raise ConfigError(
            "--concurrency has no effect on a cluster (--address): Ray runs as many draws as the "
            "nodes fit; leave it out, or set --cpus-per-draw / --gpus-per-draw"
        )
    where = "the cluster" if cluster else "this machine"
    nodes = nodes_for(cluster, options.address, options.verbose)
    grows = cluster and autoscaling()
    gpus, note = choose_gpus(options.gpus_per_draw, nodes, options.concurrency or 1, "draw", where, grows)
    request = Request(
        options.cpus_per_draw or 1.0,
        gpus,
        options.concurrency or 1,
        "--cpus-per-draw",
        "--gpus-per-draw",
        "--concurrency",
    )
    check_request(request, nodes, where, wait_ok=grows)
    return DrawResources(options.cpus_per_draw, gpus, note)


def check_retrain(best: Candidate, baseline: Candidate, options: RetrainOptions) -> None:
    """The rest, once its two configurations are known: their models, every draw of both (fresh
    seeds, every fold) and their number against --concurrency."""
    from ..data import load_corpus
    from .draws import draw_configs
    from .selection import align_baseline

    baseline = align_baseline(best, baseline)  # as retrain will: the same draws for both
    configs = {c.role: draw_configs(c.run_config, options.seeds) for c in (best, baseline)}
    for candidate in (best, baseline):
        cfg = candidate.run_config
        check_model(cfg.model.name)
        check_model_fits(
            cfg.model.name, cfg.model.reinit_layers, cfg.data.max_length, f"the {candidate.role} configuration"
        )
    d = best.run_config.data
    corpus = load_corpus(d.dataset, d.data_dir, d.text_column, d.label_column)
    for role, cfgs in configs.items():
        check_draws(corpus, [c.to_flat() for c in cfgs], f"the {role} configuration")
    draws = sum(len(c) for c in configs.values())
    if options.concurrency is not None and options.concurrency > draws:
        raise ConfigError(
            f"--concurrency {options.concurrency} is more than the {draws} draws to train "
            "(best and baseline); at most that many run at once"
        )


def draws_of(best: Candidate, options: RetrainOptions) -> int:
    """Draws per configuration (fresh seeds for kshot, every fold times --seeds for kfold)."""
    from .draws import draw_configs

    return len(draw_configs(best.run_config, options.seeds))
