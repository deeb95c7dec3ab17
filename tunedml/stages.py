"""Training schedules: one joint stage, or two stages with a classifier fitted on a frozen encoder.

Joint training (CCE and the DML loss on the same batches for the whole run) is one end of a range
whose other end is the recipe of supervised contrastive learning (Khosla et al. 2020) and SetFit
(Tunstall et al. 2022): stage 1 trains the encoder, and a proxy loss's proxies, with the DML loss
alone; stage 2 freezes both and fits a classifier on the embeddings of the training draw. This
module says where the stages lie in a run (:class:`StagePlan`) and how stage 2 fits the
classifier (:data:`HEAD_FITS`); :class:`tunedml.train.Trainer` runs them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .errors import ConfigError, DataError

if TYPE_CHECKING:
    from sklearn.linear_model import LogisticRegression

    from .config import RunConfig
    from .model import EncoderClassifier

JOINT, ENCODER, HEAD = "joint", "encoder", "head"  # what a run is training at an evaluation
STAGE_NUMBERS = {JOINT: 0, ENCODER: 1, HEAD: 2}  # the stage as a number, for Ray Tune's and MLflow's metrics


@dataclass(frozen=True)
class StagePlan:
    """Where the stages lie in a run of ``total_steps`` optimizer steps.

    The first ``encoder_steps`` train the encoder (all of them in a joint run); a two-stage run's
    remaining steps train the linear head. A logistic head takes no steps: stage 1 is the whole
    run and the head is fitted after its last step.
    """

    total_steps: int
    encoder_steps: int
    two_stage: bool

    @classmethod
    def for_run(cls, cfg: "RunConfig", total_steps: int) -> "StagePlan":
        t = cfg.train
        if t.schedule == "joint":
            return cls(total_steps, total_steps, False)
        if not HEAD_FITS[cfg.head.fit].takes_steps:
            return cls(total_steps, total_steps, True)
        if total_steps < 2:
            raise ConfigError(
                f"train.schedule=two_stage with head.fit=linear needs a step for each stage; the run has "
                f"{total_steps}; lengthen the run or use head.fit=logistic"
            )
        encoder = min(total_steps - 1, max(1, round(t.stage1_fraction * total_steps)))
        return cls(total_steps, encoder, True)

    @property
    def head_steps(self) -> int:
        return self.total_steps - self.encoder_steps


def encoder_ce_weight(cfg: "RunConfig") -> float:
    """CCE's weight in the loss the encoder trains on: ``loss.ce_weight`` in a joint run; none in a
    two-stage run, whose stage 2 trains the head with CCE alone. Whoever rebuilds the loss (a
    saved model) builds it with this weight, so that its parameters are the trained ones."""
    return cfg.loss.ce_weight if cfg.train.schedule == "joint" else 0.0


def freeze(*modules: nn.Module) -> None:
    """Stage 2: nothing in ``modules`` (the encoder, the loss's proxies) learns any more."""
    for module in modules:
        for p in module.parameters():
            p.requires_grad_(False)


class LinearHeadFit:
    """``head.fit=linear``: the model's linear head learns with CCE on the frozen encoder's
    embeddings of each batch (a linear probe), for the steps left after stage 1, at ``head.lr``
    with its own AdamW and linear schedule (warmup ``train.warmup_ratio``).

    The embeddings of the training draw are computed once, in eval mode: the encoder is frozen, so
    each step costs the head's forward and backward only. The head's dropout still applies.
    """

    takes_steps = True

    def __init__(
        self,
        model: "EncoderClassifier",
        embeddings: torch.Tensor,
        indices: np.ndarray,
        labels: torch.Tensor,
        cfg: "RunConfig",
        steps: int,
    ):
        from transformers import get_linear_schedule_with_warmup

        self.model, self.embeddings = model, embeddings
        self.rows = {int(i): r for r, i in enumerate(indices)}
        head = model.head
        self.optimizer = torch.optim.AdamW(
            [
                {"params": [head.weight], "weight_decay": cfg.train.weight_decay},
                {"params": [head.bias], "weight_decay": 0.0},
            ],
            lr=cfg.head.lr,
        )
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, int(cfg.train.warmup_ratio * steps), steps)
        self.max_grad_norm = cfg.train.max_grad_norm
        self.steps_taken = 0
        self.fit_parts: dict[str, float] = {}  # what fitting reported before any step: nothing

    @property
    def fitted(self) -> bool:
        return self.steps_taken > 0

    def step(self, indices: np.ndarray, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One optimizer step of the head on the batch ``indices`` (corpus indices of the draw)."""
        rows = torch.as_tensor([self.rows[int(i)] for i in indices], device=self.embeddings.device)
        logits = self.model.head(self.model.dropout(self.embeddings[rows]))
        loss = F.cross_entropy(logits.float(), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(list(self.model.head.parameters()), self.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.steps_taken += 1
        return loss, {"ce": loss}


def fit_logistic_head(
    head: nn.Linear, embeddings: torch.Tensor, labels: torch.Tensor, key: str
) -> tuple["LogisticRegression", torch.Tensor]:
    """Fit scikit-learn's logistic regression (L2, C=1, lbfgs) on ``embeddings`` and copy it into
    ``head``; the regression and the head's logits on ``embeddings``. ``key`` names the setting that
    asked for it in the error a draw without every class gets.

    A binary regression's one weight vector ``w`` becomes the rows ``-w/2`` and ``w/2``, whose
    softmax is the regression's sigmoid: the head's probabilities are the regression's.
    """
    from sklearn.linear_model import LogisticRegression

    x = embeddings.detach().float().cpu().numpy()
    y = labels.cpu().numpy()
    classes = head.out_features
    if not np.array_equal(np.unique(y), np.arange(classes)):
        raise DataError(
            f"{key}: the training draw has classes {sorted(set(y.tolist()))} of {classes}; a logistic head needs every class"
        )
    regression = LogisticRegression(max_iter=1000).fit(x, y)
    weight, bias = regression.coef_, regression.intercept_
    if classes == 2:
        weight, bias = np.concatenate([-weight / 2, weight / 2]), np.concatenate([-bias / 2, bias / 2])
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(weight, dtype=head.weight.dtype))
        head.bias.copy_(torch.as_tensor(bias, dtype=head.bias.dtype))
        logits = head(embeddings.to(head.weight.dtype))
    return regression, logits


class LogisticHeadFit:
    """``head.fit=logistic``: scikit-learn's logistic regression (L2, C=1, lbfgs) on the frozen
    embeddings of the training draw, as SetFit fits its head, copied into the model's linear head so
    that head and mixed inference, saved models and the retrain all use it as any head
    (:func:`fit_logistic_head`).
    """

    takes_steps = False

    def __init__(
        self,
        model: "EncoderClassifier",
        embeddings: torch.Tensor,
        indices: np.ndarray,
        labels: torch.Tensor,
        cfg: "RunConfig",
        steps: int,
    ):
        regression, logits = fit_logistic_head(model.head, embeddings, labels, "head.fit=logistic")
        self.regression = regression
        # the regression's cross-entropy on the training draw: stage 2's loss part
        self.fit_parts = {"ce": float(F.cross_entropy(logits.float(), labels.to(logits.device)))}

    @property
    def fitted(self) -> bool:
        return True

    def step(self, indices: np.ndarray, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise RuntimeError("a logistic head takes no optimizer steps; StagePlan gives stage 1 the whole run")


HeadFit = LinearHeadFit | LogisticHeadFit
HEAD_FITS: dict[str, type[LinearHeadFit] | type[LogisticHeadFit]] = {
    "linear": LinearHeadFit,
    "logistic": LogisticHeadFit,
}
