"""One fine-tuning run: a model, a combined loss and a few-shot draw, trained for a number of
optimizer steps with dev evaluations along the way: jointly (CCE and the DML loss on every step)
or in two stages (the encoder on the DML loss, then the classifier on the frozen encoder; see
:mod:`tunedml.stages`), on random or m-per-class batches (:mod:`tunedml.sampling`).

:class:`Trainer` is plain PyTorch and knows nothing of Ray or MLflow. It yields one
:class:`EvalResult` per dev evaluation (every ``train.eval_every`` steps, else once per pass over the
draw), so a caller (the CLI, a Ray trainable, a retrain loop) decides what to do with it; several
trainers can be stepped in lockstep to average over draws.
"""

from __future__ import annotations

import os
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from . import timing
from .adversarial import build_adversary
from .config import RunConfig
from .data import Draw, TokenizedCorpus
from .errors import ConfigError, NonFiniteLossError
from .evaluate import Outputs, autocast_for, class_centers, forward_all, predict, scores
from .losses import build_loss
from .model import EncoderOutput, build_model
from .sampling import build_sampler, has_positive_pair, without_positive
from .stages import (
    ENCODER,
    HEAD,
    HEAD_FITS,
    JOINT,
    HeadFit,
    StagePlan,
    encoder_ce_weight,
    fit_logistic_head,
    freeze,
)

EvalCallback = Callable[["EvalResult"], None]
# AdamW's fused kernel: about 20% less time per run than the multi-tensor (foreach) path on the CPU, with
# the same test accuracy (docs/speed.md); devices without it fall back to foreach
ADAMW_IMPL = {"fused": True}
FUSED_DEVICES = ("cpu", "cuda")


@dataclass
class EvalResult:
    """One dev evaluation: where the run is, what it trained on since the last one, and the scores."""

    step: int  # optimizer steps taken so far
    epoch: float  # passes over the training draw so far (step / steps per pass)
    train_loss: float  # mean over the examples of the steps since the previous evaluation
    loss_parts: dict[str, float]
    dev: dict[str, float]
    seconds: float  # since the previous evaluation, this one included
    stage: str = JOINT  # joint, or encoder / head in a two-stage run (tunedml.stages)
    batches_without_positives: int = 0  # of the steps since the previous evaluation: no class twice in the batch
    examples_without_positive: int = 0  # of those steps' examples: alone of their class in their batch

    @property
    def collapsed(self) -> bool:
        """Every dev prediction is one class (see :func:`tunedml.evaluate.scores`)."""
        return self.dev.get("collapsed", 0.0) > 0


@dataclass
class FitResult:
    history: list[EvalResult] = field(default_factory=list)
    dev: dict[str, float] = field(default_factory=dict)
    test: dict[str, float] | None = None
    seconds: float = 0.0
    final_step: int = 0  # the step whose weights the model ends with (train.restore_best: the best on dev)

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


def adamw_impl(params: Iterable[torch.nn.Parameter]) -> dict[str, bool]:
    """``ADAMW_IMPL``, or the foreach path where a parameter lives on a device without the fused kernel."""
    if ADAMW_IMPL.get("fused") and any(p.device.type not in FUSED_DEVICES for p in params):
        return {"foreach": True}
    return ADAMW_IMPL


def _exempt_from_decay(name: str, p: torch.Tensor) -> bool:
    """Biases and norms take no weight decay."""
    return p.ndim < 2 or "LayerNorm" in name or "norm" in name.lower()


class Trainer:
    """Fine-tunes the model of ``cfg.model`` on ``draw.train``."""

    def __init__(self, cfg: RunConfig, tokens: TokenizedCorpus, draw: Draw):
        with timing.phase("setup"):
            self._set_up(cfg, tokens, draw)

    def _set_up(self, cfg: RunConfig, tokens: TokenizedCorpus, draw: Draw) -> None:
        self.cfg, self.tokens, self.draw = cfg, tokens, draw
        corpus = (
            tokens.corpus
        )  # the sampler first: a draw that cannot give its batches is refused before the model loads
        self.sampler = build_sampler(
            cfg.data.sampler,
            draw.train,
            corpus.labels[draw.train],
            corpus.label_names,
            cfg.train.batch_size,
            cfg.data.m_per_class,
        )
        torch.set_num_threads(granted_threads(cfg.train.threads))
        self.device = pick_device(cfg.train.device)
        num_classes = tokens.corpus.num_classes
        self.random = RandomState.capture(self.device)  # replaced by the seeded state below
        with self.own_rng():
            seed_everything(cfg.train.seed)
            self.model = build_model(
                cfg.model.name, num_classes, cfg.model.pooling, cfg.model.dropout, cfg.model.reinit_layers
            ).to(self.device)
            self.loss = build_loss(
                cfg.loss.name,
                encoder_ce_weight(cfg),
                cfg.loss.dml_weight,
                cfg.loss.params,
                num_classes,
                self.model.hidden_size,
                weighting=cfg.loss.weighting,
            ).to(self.device)
        if cfg.head.init == "probe" and cfg.train.schedule == "joint":
            self._probe_head()
        if cfg.model.freeze_embeddings:
            self.model.encoder.get_input_embeddings().weight.requires_grad_(False)
        if cfg.train.compile:  # in place: the module and its parameter names stay as they are
            self.model.encoder.compile(dynamic=True)
        self.adversary = build_adversary(cfg.adversarial)
        self.shared_parameters = [p for p in self.model.parameters() if p.requires_grad]
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]  # clipped in this order
        self.model_parameters = [p for n, p in named if not _exempt_from_decay(n, p)] + [
            p for n, p in named if _exempt_from_decay(n, p)
        ]
        self.optimizer = self._optimizer()
        t = cfg.train
        self.steps_per_epoch = t.steps_per_epoch(len(draw.train))
        self.total_steps = t.total_steps(len(draw.train))
        self.eval_every = t.eval_interval(len(draw.train))
        self.plan = StagePlan.for_run(cfg, self.total_steps)
        from transformers import get_linear_schedule_with_warmup

        encoder_steps = self.plan.encoder_steps  # the encoder's schedule ends with its stage
        self.scheduler = get_linear_schedule_with_warmup(
            self.optimizer, int(t.warmup_ratio * encoder_steps), encoder_steps
        )
        self.rng = np.random.default_rng(t.seed)
        self.step = 0
        self.batches_without_positives = 0  # so far
        self.examples_without_positive = 0  # so far
        self.head_fit: HeadFit | None = None  # stage 2 of a two-stage run, once it has begun
        # the sampler's generator, not a method's: a generator holding the trainer would tie it in a
        # reference cycle, and its model's memory would outlive it
        self._batches = self.sampler(self.rng)
        self.best: tuple[EvalResult, dict[str, dict[str, torch.Tensor]]] | None = None  # train.restore_best

    def _probe_head(self) -> None:
        """``head.init=probe``: the head starts as a logistic regression on the pre-trained encoder's
        embeddings of the training draw (LP-FT). With a random head, the first steps' large gradients
        reshape the encoder's features to fit that head; on a few-shot draw with a few mislabelled
        examples this is where fine-tuning fell below the majority class (docs/train.md)."""
        out = self.outputs(self.draw.train)
        if not torch.isfinite(out.embeddings).all():
            return  # nothing to fit; the first step's loss is non-finite too and fails the run, naming the step
        labels = torch.from_numpy(out.labels).to(self.device)
        fit_logistic_head(self.model.head, out.embeddings.clone().to(self.device), labels, "head.init=probe")

    @contextmanager
    def own_rng(self) -> Iterator[None]:
        """Run with this trainer's random state as the global one, and keep what it drew.

        Dropout and the initialisation of head and proxies draw from torch's global generator;
        swapping a per-trainer state in and out makes a trainer's run independent of whatever
        else (another repeat in lockstep, a test) uses the generator between its evaluations.
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
            if p.requires_grad:
                groups.setdefault((scales.get(name, 1.0), _exempt_from_decay(name, p)), []).append(p)
        ordered = sorted(groups.items(), key=lambda item: (-item[0][0], item[0][1]))  # decay before no decay
        param_groups = [
            {"params": params, "weight_decay": 0.0 if exempt else t.weight_decay, "lr": t.lr * scale}
            for (scale, exempt), params in ordered
        ]
        proxies = list(self.loss.parameters())
        if proxies:
            param_groups.append({"params": proxies, "weight_decay": 0.0, "lr": t.proxy_lr})
        return torch.optim.AdamW(param_groups, **adamw_impl(p for g in param_groups for p in g["params"]))

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
                depth = len(layers) - int(name[len(prefix) :].split(".")[0])
            elif name.startswith("encoder.") and "embeddings" in name:
                depth = len(layers) + 1
            else:
                depth = 0
            scales[name] = decay**depth
        return scales

    def train_steps(self, n: int) -> tuple[float, dict[str, float]]:
        """Take ``n`` optimizer steps; the mean loss and loss parts over their examples."""
        with self.own_rng():
            return self._train_steps(n)

    def train_epoch(self) -> tuple[float, dict[str, float]]:
        """One pass's worth of steps (a whole pass when the run has stepped in whole passes so far)."""
        return self.train_steps(self.steps_per_epoch)

    def _train_steps(self, n: int) -> tuple[float, dict[str, float]]:
        self.model.train()
        total, parts_sum, seen = 0.0, {}, 0
        for _ in range(n):
            if self._head_due():
                self._start_head()
            indices = next(self._batches)
            labels = self.tokens.corpus.labels[indices]
            self.batches_without_positives += not has_positive_pair(labels)
            self.examples_without_positive += without_positive(labels)
            self.step += 1
            loss, parts = self._step_on(indices)
            total += float(loss.detach()) * len(indices)
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + float(v.detach()) * len(indices)
            seen += len(indices)
        return total / seen, {k: v / seen for k, v in parts_sum.items()}

    def _step_on(self, indices: np.ndarray) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One optimizer step on the batch ``indices``: the model's (joint, stage 1) or the head's (stage 2)."""
        if self.head_fit is None:
            with timing.phase("batches"):
                batch = {k: v.to(self.device) for k, v in self.tokens.batch(indices).items()}
            return self._step(batch)
        labels = torch.from_numpy(self.tokens.corpus.labels[indices]).to(self.device)
        with timing.phase("forward_backward"):
            loss, parts = self.head_fit.step(indices, labels)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(self.step, {k: float(v.detach()) for k, v in parts.items()})
        return loss, parts

    # ------------------------------------------------------------ two stages

    @property
    def stage(self) -> str:
        """What the run trains now: ``joint``; or ``encoder`` (stage 1) until stage 2 has a head, then ``head``."""
        if not self.plan.two_stage:
            return JOINT
        return HEAD if self.head_fit is not None and self.head_fit.fitted else ENCODER

    def _head_due(self) -> bool:
        return self.plan.two_stage and self.head_fit is None and self.step >= self.plan.encoder_steps

    def _start_head(self) -> dict[str, float]:
        """Stage 2 begins: the encoder and the loss's proxies are frozen, the training draw is
        embedded once, and ``head.fit`` fits the classifier on it (a logistic head here and now)."""
        freeze(self.model.encoder, self.loss)
        out = self.outputs(self.draw.train)
        embeddings = out.embeddings.clone().to(self.device)  # a normal tensor: forward_all's are inference tensors
        labels = torch.from_numpy(out.labels).to(self.device)
        self.head_fit = HEAD_FITS[self.cfg.head.fit](
            self.model, embeddings, self.draw.train, labels, self.cfg, self.plan.head_steps
        )
        return self.head_fit.fit_parts

    def _step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One optimizer step on ``batch``: forward (with adversarial views), loss, backward, update."""
        start = time.perf_counter()
        labels = batch["labels"]
        with autocast_for(self.device, self.cfg.train.bf16):
            if self.adversary is None:
                out, adv = self.model(batch["input_ids"], batch["attention_mask"]), None
            else:
                out, adv = self.adversary.views(self.model, batch["input_ids"], batch["attention_mask"], labels)
        token_mode = self.cfg.model.token_mode
        emb, emb_labels = _dml_inputs(out, labels, token_mode)
        if adv is None:
            loss, parts = self.loss(out.logits, labels, emb, emb_labels)
        else:  # the adversarial views join the DML batch with their examples' labels
            adv_emb, adv_labels = _dml_inputs(adv, labels, token_mode)
            loss, parts = self.loss(
                out.logits,
                labels,
                torch.cat([emb, adv_emb]),
                torch.cat([emb_labels, adv_labels]),
                adv_logits=adv.logits,
                adv_weight=self.adversary.weight,
            )
        if not torch.isfinite(loss):
            raise NonFiniteLossError(self.step, {k: float(v.detach()) for k, v in parts.items()})
        self.optimizer.zero_grad(set_to_none=True)
        self.loss.backward(loss, parts, self.shared_parameters)
        backward_done = time.perf_counter()
        timing.add("forward_backward", backward_done - start)
        self.clip_gradients()
        self.optimizer.step()
        self.scheduler.step()
        timing.add("optimizer", time.perf_counter() - backward_done)
        return loss, parts

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
        return forward_all(
            self.model, self.tokens, indices, self.cfg.train.eval_batch_size, self.device, self.cfg.train.bf16
        )

    def evaluate(
        self, indices: np.ndarray, outputs: Outputs | None = None, mode: str | None = None
    ) -> dict[str, float]:
        """Accuracy and macro-F1 on ``indices`` with the configured inference mode (or ``mode``);
        ``outputs``: the model's outputs on ``indices`` where the caller has them already (one pass
        over a test set)."""
        inf = self.cfg.inference
        mode = mode or inf.mode
        centers = None
        if mode != "head" and (self.loss.dml is None or self.loss.dml.proxies() is None):
            centers = class_centers(self.outputs(self.draw.train), self.tokens.corpus.num_classes)
        out = outputs if outputs is not None else self.outputs(indices)
        preds = predict(mode, out, self.loss, centers, inf.mix_weight, inf.proxy_scale)
        return scores(preds, out.labels, self.tokens.corpus.num_classes)

    def _dev_mode(self) -> str:
        """Stage 1 has no trained head yet: dev is scored by the proxies (or class centers) meanwhile."""
        return "proxy" if self.stage == ENCODER else self.cfg.inference.mode

    def evaluation_steps(self) -> list[int]:
        """The steps after which dev is evaluated: every ``eval_every`` steps, at the end of a
        two-stage run's stage 1 (the encoder it hands over) and at the last step."""
        steps = {*range(self.eval_every, self.total_steps, self.eval_every), self.total_steps}
        if self.plan.encoder_steps < self.total_steps:
            steps.add(self.plan.encoder_steps)
        return sorted(steps)

    def checkpoints(self) -> Iterator[EvalResult]:
        """Train to the end of the run, evaluating dev at each of :meth:`evaluation_steps` still ahead."""
        for upto in self.evaluation_steps():
            if upto <= self.step:
                continue
            start, without = time.perf_counter(), (self.batches_without_positives, self.examples_without_positive)
            loss, parts = self.train_steps(upto - self.step)
            if self.step == self.total_steps and self._head_due():  # a logistic head, fitted after the last step
                parts = {**parts, **self._start_head()}
            with timing.phase("evaluation"):
                dev = self.evaluate(self.draw.dev, mode=self._dev_mode())
            timing.flush()
            result = EvalResult(
                self.step,
                self.step / self.steps_per_epoch,
                loss,
                parts,
                dev,
                time.perf_counter() - start,
                self.stage,
                self.batches_without_positives - without[0],
                self.examples_without_positive - without[1],
            )
            if self.cfg.train.restore_best and result.stage != ENCODER:  # stage 1's weights come without a head
                self._keep_if_best(result)
            yield result

    def _keep_if_best(self, result: EvalResult) -> None:
        """Keep a copy of the weights of the best evaluation so far on dev (accuracy, then macro-F1;
        ties keep the earlier one)."""
        key = (result.dev["accuracy"], result.dev["macro_f1"])
        if self.best is None or key > (self.best[0].dev["accuracy"], self.best[0].dev["macro_f1"]):
            state = {
                name: {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
                for name, module in (("model", self.model), ("loss", self.loss))
            }
            self.best = (result, state)

    def restore_best(self) -> EvalResult:
        """Load the weights kept by :meth:`_keep_if_best`; returns that evaluation's result."""
        result, state = self.best
        self.model.load_state_dict(state["model"])
        self.loss.load_state_dict(state["loss"])
        return result

    def fit(self, callback: EvalCallback | None = None, evaluate_test: bool = True) -> FitResult:
        """Train the whole run, then score dev (and test) with the final model: the last step's, or
        with ``train.restore_best`` the best evaluation's on dev (each result stays as it was)."""
        start = time.perf_counter()
        result = FitResult()
        for checkpoint in self.checkpoints():
            result.history.append(checkpoint)
            if callback:
                callback(checkpoint)
        if self.best is not None:
            chosen = self.restore_best()
            result.dev, result.final_step = chosen.dev, chosen.step
        else:
            result.dev, result.final_step = result.history[-1].dev, result.history[-1].step
        if evaluate_test:
            with timing.phase("test"):
                result.test = self.evaluate(self.draw.test)
            timing.flush()
        result.seconds = time.perf_counter() - start
        return result


def prepare_tokens(cfg: RunConfig) -> TokenizedCorpus:
    """Read the dataset and tokenize it for the configured model: once per (dataset, model)."""
    from .data import load_corpus, tokenize
    from .model import load_tokenizer

    d = cfg.data
    with timing.phase("tokenize"):
        corpus = load_corpus(d.dataset, d.data_dir, d.text_column, d.label_column)
        tokens = tokenize(corpus, load_tokenizer(cfg.model.name), d.max_length, cfg.model.name)
    timing.flush()
    return tokens


def draw_for(cfg: RunConfig, tokens: TokenizedCorpus) -> Draw:
    from .data import draw

    d = cfg.data
    return draw(
        tokens.corpus,
        d.protocol,
        k=d.k,
        sample_size=d.sample_size,
        folds=d.folds,
        fold=d.fold,
        seed=d.seed,
        test_size=d.test_size,
    )


def run_training(
    cfg: RunConfig,
    tokens: TokenizedCorpus | None = None,
    callback: EvalCallback | None = None,
    evaluate_test: bool = True,
) -> FitResult:
    """The whole `tunedml train`: data, draw, model, the run's steps, final scores."""
    tokens = tokens or prepare_tokens(cfg)
    return Trainer(cfg, tokens, draw_for(cfg, tokens)).fit(callback, evaluate_test)
