"""The trainable: one trial of a search, run by Ray Tune in a worker process.

It wraps the core :class:`~tunedml.train.Trainer`; the tokenized data reach it through
``tune.with_parameters`` (Ray's object store), read and tokenized once in the driver.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ray import tune

from ..config import RunConfig, from_flat
from ..metrics import METRICS
from ..space import config_keys


def repeat_config(cfg: RunConfig, r: int) -> RunConfig:
    """The r-th repeat: another few-shot draw and another initialisation seed."""
    return replace(
        cfg, data=replace(cfg.data, seed=cfg.data.seed + r), train=replace(cfg.train, seed=cfg.train.seed + r)
    )


def trainable(config: dict[str, Any], tokens: Any, base: dict[str, Any], repeats: int, threads: int = 0) -> None:
    """One trial: train ``repeats`` draws in lockstep, report their mean dev scores at every dev
    evaluation (``step``: optimizer steps so far, the scheduler's clock).

    ``threads`` (the CPUs granted to the trial) applies where the config leaves train.threads at 0;
    it is not written into the config, so the best configuration carries no machine's CPU count.
    """
    import numpy as np
    import ray
    import torch

    from ..stages import STAGE_NUMBERS
    from ..train import Trainer, draw_for, prepare_tokens

    cfg = from_flat({**base, **config_keys(config)}, source="trial config")
    if not cfg.train.threads and threads:
        cfg = replace(cfg, train=replace(cfg.train, threads=threads))
    if (cfg.model.name, cfg.data.max_length) != (tokens.tokenizer_name, tokens.max_length):
        tokens = prepare_tokens(cfg)  # the space searches the model or max_length
    runs = [repeat_config(cfg, r) for r in range(repeats)]
    trainers = [Trainer(c, tokens, draw_for(c, tokens)) for c in runs]
    node = ray.get_runtime_context().get_node_id()
    gpus = len(ray.get_gpu_ids())  # the GPUs Ray granted the trial (logical ones count, as on a test's Ray)
    for results in zip(*(t.checkpoints() for t in trainers)):
        tune.report(
            {
                "step": results[0].step,
                "steps": trainers[0].total_steps,
                "epoch": results[0].epoch,
                "train_loss": float(np.mean([r.train_loss for r in results])),
                # each term and the weights in effect (learned or EPO's): loss_ce, loss_dml_supcon, loss_weight_ce...
                **{
                    f"loss_{k}": float(np.mean([r.loss_parts.get(k, np.nan) for r in results]))
                    for k in results[0].loss_parts
                },
                **{f"dev_{m}": float(np.mean([r.dev[m] for r in results])) for m in METRICS},
                **(
                    {f"dev_{m}_std": float(np.std([r.dev[m] for r in results])) for m in METRICS} if repeats > 1 else {}
                ),
                "dev_collapsed": float(np.mean([r.collapsed for r in results])),  # the share of repeats that collapsed
                "stage": STAGE_NUMBERS[results[0].stage],  # 0 joint; two_stage: 1 encoder, 2 head
                "batches_without_positives": float(np.mean([r.batches_without_positives for r in results])),
                "examples_without_positive": float(np.mean([r.examples_without_positive for r in results])),
                "node_id": node,
                "gpus": gpus,
                "threads": torch.get_num_threads(),  # what the trial really computes with
            }
        )
