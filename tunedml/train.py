"""One fine-tuning run: a model, a combined loss and a few-shot draw, trained epoch by epoch.

:class:`Trainer` is plain PyTorch and knows nothing of Ray or MLflow. It yields one
:class:`EpochResult` per epoch, so a caller (the CLI, a Ray trainable, a retrain loop) decides what
to do with it; several trainers can be stepped in lockstep to average over draws.
"""

from __future__ import annotations

import math
import os
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch

from .adversarial import build_adversary
from .config import RunConfig
from .data import Draw, TokenizedCorpus
from .errors import ConfigError, NonFiniteLossError
from .evaluate import Outputs, autocast_for, class_centers, forward_all, predict, scores
from .losses import build_loss
from .model import EncoderOutput, build_model

EpochCallback = Callable[["EpochResult"], None]


@dataclass
class EpochResult:
    epoch: int  # 1-based
    train_loss: float
    loss_parts: dict[str, float]
    dev: dict[str, float]
    seconds: float

    @property
    def collapsed(self) -> bool:
        """Every dev prediction is one class (see :func:`tunedml.evaluate.scores`)."""
        return self.dev.get("collapsed", 0.0) > 0


@dataclass
class FitResult:
    history: list[EpochResult] = field(default_factory=list)
    dev: dict[str, float] = field(default_factory=dict)
    test: dict[str, float] | None = None
    seconds: float = 0.0
    final_epoch: int = 0  # the epoch whose weights the model ends with (train.restore_best: the best on dev)

    @property
    def collapsed(self) -> bool:
        return self.dev.get("collapsed", 0.0) > 0


def granted_threads(requested: int = 0) -> int:
    """Threads for torch: the request, else what the scheduler granted (OMP_NUM_THREADS, affinity)."""
    if requested > 0:
        return requested
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r} but no CUDA device is available; valid here: auto, cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device: unknown device {name!r}; valid: auto, cpu, cuda, cuda:N") from None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class RandomState:
    """The global random states a training step can draw from (dropout, initialisation, miners).

    A :class:`Trainer` keeps its own copy and swaps it in around its work (:meth:`Trainer.own_rng`),
    so trainers stepped in lockstep (``--repeats``) draw exactly what each would draw alone.
    """

    python: object
    numpy: dict
    torch: torch.Tensor
    cuda: torch.Tensor | None = None

    @classmethod
    def capture(cls, device: torch.device) -> "RandomState":
        cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        return cls(random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda)

    def restore(self, device: torch.device) -> None:
        random.setstate(self.python)
        np.random.set_state(self.numpy)
        torch.set_rng_state(self.torch)
        if self.cuda is not None and device.type == "cuda":
            torch.cuda.set_rng_state(self.cuda, device)


def _dml_inputs(out: EncoderOutput, labels: torch.Tensor, token_mode: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The embeddings the DML loss sees and their labels: pooled, or (token mode) every real token
    vector carrying its sentence's label."""
    if not token_mode:
        return out.pooled, labels
    keep = out.mask.bool()
    return out.tokens[keep], labels.unsqueeze(1).expand_as(out.mask)[keep]


def _exempt_from_decay(name: str, p: torch.Tensor) -> bool:
    """Biases and norms take no weight decay."""
    return p.ndim < 2 or "LayerNorm" in name or "norm" in name.lower()


class Trainer:
    """Fine-tunes the model of ``cfg.model`` on ``draw.train``."""

    def __init__(self, cfg: RunConfig, tokens: TokenizedCorpus, draw: Draw):
        self.cfg, self.tokens, self.draw = cfg, tokens, draw
        torch.set_num_threads(granted_threads(cfg.train.threads))
        self.device = pick_device(cfg.train.device)
        num_classes = tokens.corpus.num_classes
        self.random = RandomState.capture(self.device)  # replaced by the seeded state below
        with self.own_rng():
            seed_everything(cfg.train.seed)
            self.model = build_model(cfg.model.name, num_classes, cfg.model.pooling, cfg.model.dropout,
                                     cfg.model.reinit_layers).to(self.device)
            self.loss = build_loss(cfg.loss.name, cfg.loss.ce_weight, cfg.loss.dml_weight, cfg.loss.params,
                                   num_classes, self.model.hidden_size, weighting=cfg.loss.weighting).to(self.device)
        self.adversary = build_adversary(cfg.adversarial)
        self.shared_parameters = [p for p in self.model.parameters() if p.requires_grad]
        named = list(self.model.named_parameters())  # clipped in this order, as it always was
        self.model_parameters = ([p for n, p in named if not _exempt_from_decay(n, p)]
                                 + [p for n, p in named if _exempt_from_decay(n, p)])
        self.optimizer = self._optimizer()
        steps = cfg.train.epochs * math.ceil(len(draw.train) / cfg.train.batch_size)
        from transformers import get_linear_schedule_with_warmup

        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, int(cfg.train.warmup_ratio * steps), steps)
        self.rng = np.random.default_rng(cfg.train.seed)
        self.epoch = 0
        self.best: tuple[EpochResult, dict[str, dict[str, torch.Tensor]]] | None = None  # train.restore_best

    @contextmanager
    def own_rng(self) -> Iterator[None]:
        """Run with this trainer's random state as the global one, and keep what it drew.

        Dropout and the initialisation of head and proxies draw from torch's global generator;
        swapping a per-trainer state in and out makes a trainer's run independent of whatever
        else (another repeat in lockstep, a test) uses the generator between its epochs.
        """
        outer = RandomState.capture(self.device)
        self.random.restore(self.device)
        try:
            yield
        finally:
            self.random = RandomState.capture(self.device)
            outer.restore(self.device)

    def _optimizer(self) -> torch.optim.Optimizer:
        """AdamW; no decay on biases and norms; proxies in their own group with their own rate;
        with ``train.layer_decay`` < 1, lower encoder layers learn more slowly (Howard & Ruder 2018)."""
        t = self.cfg.train
        scales = self._layer_scales() if t.layer_decay < 1.0 else {}
        groups: dict[tuple[float, bool], list[torch.nn.Parameter]] = {}
        for name, p in self.model.named_parameters():
            groups.setdefault((scales.get(name, 1.0), _exempt_from_decay(name, p)), []).append(p)
        ordered = sorted(groups.items(), key=lambda item: (-item[0][0], item[0][1]))  # decay before no decay
        param_groups = [{"params": params, "weight_decay": 0.0 if exempt else t.weight_decay, "lr": t.lr * scale}
                        for (scale, exempt), params in ordered]
        proxies = list(self.loss.parameters())
        if proxies:
            param_groups.append({"params": proxies, "weight_decay": 0.0, "lr": t.proxy_lr})
        return torch.optim.AdamW(param_groups)

    def _layer_scales(self) -> dict[str, float]:
        """Learning-rate factor per parameter name: ``layer_decay ** (depth below the top)``.

        The head and whatever sits above the last encoder layer learn at ``train.lr``, the top
        layer at ``lr * decay``, ..., the embeddings at ``lr * decay ** (layers + 1)``.
        """
        from .model import encoder_layers

        decay = self.cfg.train.layer_decay
        stack, layers = encoder_layers(self.model.encoder)
        prefix = f"encoder.{stack}."
        scales = {}
        for name, _ in self.model.named_parameters():
            if name.startswith(prefix):
                depth = len(layers) - int(name[len(prefix):].split(".")[0])
            elif name.startswith("encoder.") and "embeddings" in name:
                depth = len(layers) + 1
            else:
                depth = 0
            scales[name] = decay ** depth
        return scales

    def train_epoch(self) -> tuple[float, dict[str, float]]:
        with self.own_rng():
            return self._train_epoch()

    def _train_epoch(self) -> tuple[float, dict[str, float]]:
        self.epoch += 1
        self.model.train()
        token_mode = self.cfg.model.token_mode
        total, parts_sum, n = 0.0, {}, 0
        for batch in self.tokens.train_batches(self.draw.train, self.cfg.train.batch_size, self.rng):
            batch = {k: v.to(self.device) for k, v in batch.items()}
            labels = batch["labels"]
            with autocast_for(self.device, self.cfg.train.bf16):
                if self.adversary is None:
                    out, adv = self.model(batch["input_ids"], batch["attention_mask"]), None
                else:
                    out, adv = self.adversary.views(self.model, batch["input_ids"], batch["attention_mask"], labels)
            emb, emb_labels = _dml_inputs(out, labels, token_mode)
            if adv is None:
                loss, parts = self.loss(out.logits, labels, emb, emb_labels)
            else:  # the adversarial views join the DML batch with their examples' labels
                adv_emb, adv_labels = _dml_inputs(adv, labels, token_mode)
                loss, parts = self.loss(out.logits, labels, torch.cat([emb, adv_emb]), torch.cat([emb_labels, adv_labels]),
                                        adv_logits=adv.logits, adv_weight=self.adversary.weight)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(self.epoch, {k: float(v.detach()) for k, v in parts.items()})
            self.optimizer.zero_grad(set_to_none=True)
            self.loss.backward(loss, parts, self.shared_parameters)
            self.clip_gradients()
            self.optimizer.step()
            self.scheduler.step()
            total += float(loss.detach()) * len(labels)
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + float(v.detach()) * len(labels)
            n += len(labels)
        return total / n, {k: v / n for k, v in parts_sum.items()}

    def clip_gradients(self) -> None:
        """Clip the encoder and head by one norm and the loss's own parameters by another.

        Proxies often get gradients far larger than the encoder's; one global norm over both would
        shrink the encoder's update whenever a proxy loss is on, which never happens to plain CCE.
        """
        max_norm = self.cfg.train.max_grad_norm
        if max_norm <= 0:
            return
        for params in (self.model_parameters, list(self.loss.parameters())):
            if params:
                torch.nn.utils.clip_grad_norm_(params, max_norm)

    def outputs(self, indices: np.ndarray) -> Outputs:
        return forward_all(self.model, self.tokens, indices, self.cfg.train.eval_batch_size, self.device, self.cfg.train.bf16)

    def evaluate(self, indices: np.ndarray, outputs: Outputs | None = None) -> dict[str, float]:
        """Accuracy and macro-F1 on ``indices`` with the configured inference mode; ``outputs``: the
        model's outputs on ``indices`` where the caller has them already (one pass over a test set)."""
        inf = self.cfg.inference
        centers = None
        if inf.mode != "head" and (self.loss.dml is None or self.loss.dml.proxies() is None):
            centers = class_centers(self.outputs(self.draw.train), self.tokens.corpus.num_classes)
        out = outputs if outputs is not None else self.outputs(indices)
        preds = predict(inf.mode, out, self.loss, centers, inf.mix_weight, inf.proxy_scale)
        return scores(preds, out.labels, self.tokens.corpus.num_classes)

    def epochs(self) -> Iterator[EpochResult]:
        while self.epoch < self.cfg.train.epochs:
            start = time.perf_counter()
            loss, parts = self.train_epoch()
            dev = self.evaluate(self.draw.dev)
            result = EpochResult(self.epoch, loss, parts, dev, time.perf_counter() - start)
            if self.cfg.train.restore_best:
                self._keep_if_best(result)
            yield result

    def _keep_if_best(self, epoch: EpochResult) -> None:
        """Keep a copy of the weights of the best epoch so far on dev (accuracy, then macro-F1;
        ties keep the earlier epoch)."""
        key = (epoch.dev["accuracy"], epoch.dev["macro_f1"])
        if self.best is None or key > (self.best[0].dev["accuracy"], self.best[0].dev["macro_f1"]):
            state = {name: {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
                     for name, module in (("model", self.model), ("loss", self.loss))}
            self.best = (epoch, state)

    def restore_best(self) -> EpochResult:
        """Load the weights kept by :meth:`_keep_if_best`; returns that epoch's result."""
        epoch, state = self.best
        self.model.load_state_dict(state["model"])
        self.loss.load_state_dict(state["loss"])
        return epoch

    def fit(self, callback: EpochCallback | None = None, evaluate_test: bool = True) -> FitResult:
        """Train all epochs, then score dev (and test) with the final model: the last epoch's, or
        with ``train.restore_best`` the best epoch's on dev (each epoch's result stays as it was)."""
        start = time.perf_counter()
        result = FitResult()
        for epoch in self.epochs():
            result.history.append(epoch)
            if callback:
                callback(epoch)
        if self.best is not None:
            chosen = self.restore_best()
            result.dev, result.final_epoch = chosen.dev, chosen.epoch
        else:
            result.dev, result.final_epoch = result.history[-1].dev, result.history[-1].epoch
        if evaluate_test:
            result.test = self.evaluate(self.draw.test)
        result.seconds = time.perf_counter() - start
        return result


def prepare_tokens(cfg: RunConfig) -> TokenizedCorpus:
    """Read the dataset and tokenize it for the configured model: once per (dataset, model)."""
    from .data import load_corpus, tokenize
    from .model import load_tokenizer

    d = cfg.data
    corpus = load_corpus(d.dataset, d.data_dir, d.text_column, d.label_column)
    return tokenize(corpus, load_tokenizer(cfg.model.name), d.max_length, cfg.model.name)


def draw_for(cfg: RunConfig, tokens: TokenizedCorpus) -> Draw:
    from .data import draw

    d = cfg.data
    return draw(tokens.corpus, d.protocol, k=d.k, sample_size=d.sample_size, folds=d.folds, fold=d.fold,
                seed=d.seed, test_size=d.test_size)


def run_training(cfg: RunConfig, tokens: TokenizedCorpus | None = None, callback: EpochCallback | None = None,
                 evaluate_test: bool = True) -> FitResult:
    """The whole `tunedml train`: data, draw, model, epochs, final scores."""
    tokens = tokens or prepare_tokens(cfg)
    return Trainer(cfg, tokens, draw_for(cfg, tokens)).fit(callback, evaluate_test)
