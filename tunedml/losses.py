"""The loss registry and the combined objective ``ce_weight * CCE + dml_weight * DML``.

Every metric-learning loss comes from pytorch-metric-learning; this module only records, per loss,
the hyperparameters worth searching with their valid ranges and where its learnable proxies live.
The registry feeds the CLI listing, config and search-space validation and the model builder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners
from torch import nn
from torch.nn import functional as F

from .errors import ConfigError, unknown_choice
from .hparams import Hyperparameter as H

NO_DML = "none"  # loss.name for plain cross-entropy

MINERS: dict[str, Any] = {
    "none": None,
    "multi_similarity": lambda: pml_miners.MultiSimilarityMiner(epsilon=0.1),
    "triplet_semihard": lambda: pml_miners.TripletMarginMiner(margin=0.2, type_of_triplets="semihard"),
    "batch_hard": lambda: pml_miners.BatchHardMiner(),
}
_MINER = H("miner", str, "none", choices=tuple(MINERS), help="pytorch-metric-learning miner for pair-based losses")


@dataclass(frozen=True)
class LossSpec:
    """A registered metric-learning loss.

    ``proxies`` names the learnable tensor holding class proxies (or SoftTriple's centers);
    ``proxies_transposed`` is true where pytorch-metric-learning stores them as (embedding, classes).
    Losses without proxies classify by class centers of the training embeddings instead.
    """

    name: str
    cls: type[nn.Module]
    hyperparameters: tuple[H, ...] = ()
    proxies: str | None = None
    proxies_transposed: bool = False
    summary: str = ""
    params_by_name: dict[str, H] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "params_by_name", {h.name: h for h in self.hyperparameters})

    @property
    def has_proxies(self) -> bool:
        return self.proxies is not None

    def defaults(self) -> dict[str, Any]:
        return {h.name: h.default for h in self.hyperparameters}

    def build(self, num_classes: int, embedding_size: int, params: dict[str, Any]) -> "DMLLoss":
        kwargs = {**self.defaults(), **params}
        miner_name = kwargs.pop("miner", "none")
        if self.has_proxies:
            kwargs.update(num_classes=num_classes, embedding_size=embedding_size)
        miner = MINERS[miner_name]() if MINERS.get(miner_name) else None
        return DMLLoss(self, self.cls(**kwargs), miner, num_classes)


class DMLLoss(nn.Module):
    """A pytorch-metric-learning loss plus what inference needs: its proxies and their geometry."""

    def __init__(self, spec: LossSpec, loss: nn.Module, miner: nn.Module | None, num_classes: int):
        super().__init__()
        self.spec, self.loss, self.miner, self.num_classes = spec, loss, miner, num_classes

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.miner is not None:
            return self.loss(embeddings, labels, self.miner(embeddings, labels))
        return self.loss(embeddings, labels)

    def proxies(self) -> torch.Tensor | None:
        """Proxies as (num_classes * per_class, embedding), class-major; None if the loss has none."""
        if not self.spec.has_proxies:
            return None
        weight = getattr(self.loss, self.spec.proxies)
        return weight.t() if self.spec.proxies_transposed else weight

    def class_scores(self, embeddings: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        """(N, num_classes) scores, higher = closer, in the loss's own distance.

        Similarity-based losses (cosine, dot product) score by similarity, distance-based ones
        (ProxyNCA, Contrastive, Triplet) by negative distance; several prototypes per class
        (SoftTriple) score by the best one.
        """
        distance = self.loss.distance
        sim = distance(embeddings.float(), prototypes.float())
        if not distance.is_inverted:
            sim = -sim
        return sim.view(len(embeddings), self.num_classes, -1).amax(dim=2)


def _proxy(name: str, cls: type, *hps: H, attr: str = "proxies", transposed: bool = False, summary: str = "") -> LossSpec:
    return LossSpec(name, cls, hps, proxies=attr, proxies_transposed=transposed, summary=summary)


LOSSES: dict[str, LossSpec] = {
    spec.name: spec
    for spec in [
        _proxy("proxy_anchor", pml_losses.ProxyAnchorLoss,
               H("margin", float, 0.1, 0.0, 1.0), H("alpha", float, 32.0, 1.0, 128.0, log=True),
               summary="Proxy Anchor (Kim et al. 2020)"),
        _proxy("proxy_nca", pml_losses.ProxyNCALoss,
               H("softmax_scale", float, 1.0, 0.01, 100.0, log=True), summary="ProxyNCA (Movshovitz-Attias et al. 2017)"),
        _proxy("soft_triple", pml_losses.SoftTripleLoss,
               H("centers_per_class", int, 10, 1, 50), H("la", float, 20.0, 1.0, 100.0, log=True),
               H("gamma", float, 0.1, 0.01, 1.0, log=True), H("margin", float, 0.01, 0.0, 1.0),
               attr="fc", transposed=True, summary="SoftTriple (Qian et al. 2019); with CCE it is TripleEntropy"),
        _proxy("normalized_softmax", pml_losses.NormalizedSoftmaxLoss,
               H("temperature", float, 0.05, 0.001, 1.0, log=True), attr="W", transposed=True,
               summary="NormalizedSoftmax (Zhai & Wu 2018)"),
        _proxy("arcface", pml_losses.ArcFaceLoss,
               H("margin", float, 28.6, 0.0, 90.0, help="degrees"), H("scale", float, 64.0, 1.0, 128.0, log=True),
               attr="W", transposed=True, summary="ArcFace (Deng et al. 2019)"),
        _proxy("cosface", pml_losses.CosFaceLoss,
               H("margin", float, 0.35, 0.0, 1.0), H("scale", float, 64.0, 1.0, 128.0, log=True),
               attr="W", transposed=True, summary="CosFace (Wang et al. 2018)"),
        LossSpec("supcon", pml_losses.SupConLoss, (H("temperature", float, 0.1, 0.01, 1.0, log=True),),
                 summary="Supervised contrastive (Khosla et al. 2020)"),
        LossSpec("ntxent", pml_losses.NTXentLoss, (H("temperature", float, 0.07, 0.01, 1.0, log=True),),
                 summary="NT-Xent with same-label positives"),
        LossSpec("triplet_margin", pml_losses.TripletMarginLoss,
                 (H("margin", float, 0.05, 0.0, 2.0), _MINER), summary="Triplet margin, optional miner"),
        LossSpec("contrastive", pml_losses.ContrastiveLoss,
                 (H("pos_margin", float, 0.0, 0.0, 1.0), H("neg_margin", float, 1.0, 0.0, 2.0), _MINER),
                 summary="Contrastive (Hadsell et al. 2006)"),
        LossSpec("multi_similarity", pml_losses.MultiSimilarityLoss,
                 (H("alpha", float, 2.0, 0.1, 50.0, log=True), H("beta", float, 50.0, 1.0, 100.0, log=True),
                  H("base", float, 0.5, 0.0, 1.0), _MINER),
                 summary="Multi-Similarity (Wang et al. 2019)"),
    ]
}

LOSS_NAMES: tuple[str, ...] = (NO_DML, *LOSSES)


def get_loss_spec(name: str) -> LossSpec | None:
    """The spec for ``name``; None for plain CCE; ConfigError naming the choices otherwise."""
    if name == NO_DML:
        return None
    if name not in LOSSES:
        raise ConfigError("loss.name: " + unknown_choice("loss", name, LOSS_NAMES))
    return LOSSES[name]


def learns_parameters(name: str) -> bool:
    """Whether training ``loss.name`` learns parameters of the loss's own (proxies): only then does
    train.proxy_lr change the run."""
    spec = get_loss_spec(name) if name in LOSS_NAMES else None
    return spec is not None and spec.has_proxies


class CombinedLoss(nn.Module):
    """``ce_weight * CCE(logits) + dml_weight * DML(embeddings)``; returns the total and its parts.

    ``adv_logits`` (adversarial views of the batch, see :mod:`tunedml.adversarial`) add
    ``adv_weight * CCE(adv_logits)`` to the CCE term, reported as the part ``adv_ce``.
    """

    def __init__(self, ce_weight: float, dml_weight: float, dml: DMLLoss | None):
        super().__init__()
        self.ce_weight, self.dml_weight, self.dml = ce_weight, dml_weight, dml

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, embeddings: torch.Tensor,
                embedding_labels: torch.Tensor, adv_logits: torch.Tensor | None = None,
                adv_weight: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts: dict[str, torch.Tensor] = {}
        total = logits.new_zeros(())
        if self.ce_weight > 0:
            parts["ce"] = F.cross_entropy(logits.float(), labels)
            total = total + self.ce_weight * parts["ce"]
            if adv_logits is not None and adv_weight > 0:
                parts["adv_ce"] = F.cross_entropy(adv_logits.float(), labels)
                total = total + self.ce_weight * adv_weight * parts["adv_ce"]
        if self.dml is not None and self.dml_weight > 0:
            parts["dml"] = self.dml(embeddings.float(), embedding_labels)
            total = total + self.dml_weight * parts["dml"]
        return total, parts

    def backward(self, total: torch.Tensor, parts: dict[str, torch.Tensor],
                 shared: list[torch.nn.Parameter]) -> None:
        """Back-propagate one step's loss. ``shared`` are the encoder's and head's parameters:
        weightings that need each term's gradient on them (EPO) use it; a fixed sum does not."""
        total.backward()


def build_loss(name: str, ce_weight: float, dml_weight: float, params: dict[str, Any],
               num_classes: int, embedding_size: int) -> CombinedLoss:
    spec = get_loss_spec(name)
    dml = spec.build(num_classes, embedding_size, params) if spec else None
    if dml is None and ce_weight <= 0:
        raise ConfigError("loss.ce_weight must be > 0 when loss.name is 'none' (nothing would be trained)")
    return CombinedLoss(ce_weight, dml_weight, dml)
