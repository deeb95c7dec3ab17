"""The loss registry and the combined objective: CCE plus one or more DML losses, weighted.

Every metric-learning loss comes from pytorch-metric-learning; this module only records, per loss,
the hyperparameters worth searching with their valid ranges and where its learnable proxies live.
The registry feeds the CLI listing, config and search-space validation and the model builder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners
from torch import nn
from torch.nn import functional as F

from .errors import ConfigError, did_you_mean, unknown_choice
from .hparams import Applies
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


def _proxy(
    name: str, cls: type, *hps: H, attr: str = "proxies", transposed: bool = False, summary: str = ""
) -> LossSpec:
    return LossSpec(name, cls, hps, proxies=attr, proxies_transposed=transposed, summary=summary)


LOSSES: dict[str, LossSpec] = {
    spec.name: spec
    for spec in [
        _proxy(
            "proxy_anchor",
            pml_losses.ProxyAnchorLoss,
            H("margin", float, 0.1, 0.0, 1.0),
            H("alpha", float, 32.0, 1.0, 128.0),
            summary="Proxy Anchor (Kim et al. 2020)",
        ),
        _proxy(
            "proxy_nca",
            pml_losses.ProxyNCALoss,
            H("softmax_scale", float, 1.0, 0.01, 100.0),
            summary="ProxyNCA (Movshovitz-Attias et al. 2017)",
        ),
        _proxy(
            "soft_triple",
            pml_losses.SoftTripleLoss,
            H("centers_per_class", int, 10, 1, 50),
            H("la", float, 20.0, 1.0, 100.0),
            H("gamma", float, 0.1, 0.01, 1.0),
            H("margin", float, 0.01, 0.0, 1.0),
            attr="fc",
            transposed=True,
            summary="SoftTriple (Qian et al. 2019); with CCE it is TripleEntropy",
        ),
        _proxy(
            "normalized_softmax",
            pml_losses.NormalizedSoftmaxLoss,
            H("temperature", float, 0.05, 0.001, 1.0),
            attr="W",
            transposed=True,
            summary="NormalizedSoftmax (Zhai & Wu 2018)",
        ),
        _proxy(
            "arcface",
            pml_losses.ArcFaceLoss,
            H("margin", float, 28.6, 0.0, 90.0, help="degrees"),
            H("scale", float, 64.0, 1.0, 128.0),
            attr="W",
            transposed=True,
            summary="ArcFace (Deng et al. 2019)",
        ),
        _proxy(
            "cosface",
            pml_losses.CosFaceLoss,
            H("margin", float, 0.35, 0.0, 1.0),
            H("scale", float, 64.0, 1.0, 128.0),
            attr="W",
            transposed=True,
            summary="CosFace (Wang et al. 2018)",
        ),
        LossSpec(
            "supcon",
            pml_losses.SupConLoss,
            (H("temperature", float, 0.1, 0.01, 1.0),),
            summary="Supervised contrastive (Khosla et al. 2020)",
        ),
        LossSpec(
            "ntxent",
            pml_losses.NTXentLoss,
            (H("temperature", float, 0.07, 0.01, 1.0),),
            summary="NT-Xent with same-label positives",
        ),
        LossSpec(
            "triplet_margin",
            pml_losses.TripletMarginLoss,
            (H("margin", float, 0.05, 0.0, 2.0), _MINER),
            summary="Triplet margin, optional miner",
        ),
        LossSpec(
            "contrastive",
            pml_losses.ContrastiveLoss,
            (H("pos_margin", float, 0.0, 0.0, 1.0), H("neg_margin", float, 1.0, 0.0, 2.0), _MINER),
            summary="Contrastive (Hadsell et al. 2006)",
        ),
        LossSpec(
            "multi_similarity",
            pml_losses.MultiSimilarityLoss,
            (
                H("alpha", float, 2.0, 0.1, 50.0),
                H("beta", float, 50.0, 1.0, 100.0),
                H("base", float, 0.5, 0.0, 1.0),
                _MINER,
            ),
            summary="Multi-Similarity (Wang et al. 2019)",
        ),
    ]
}

LOSS_NAMES: tuple[str, ...] = (NO_DML, *LOSSES)
SET_SEP = "+"  # loss.name=proxy_anchor+supcon: several DML losses on one encoder
WEIGHT = H(
    "weight",
    float,
    1.0,
    0.0,
    100.0,
    help="this DML loss's weight, relative: its term is dml_weight * weight * loss",
    applies=Applies(
        ("loss.weighting",),
        lambda weighting: weighting != "uncertainty",
        "only where the weights are not learned (loss.weighting linear or epo)",
    ),
)

WEIGHTINGS: dict[str, str] = {
    "linear": "fixed weighted sum: ce_weight*CCE + sum over losses of dml_weight*weight*loss (the default)",
    "uncertainty": "learned weights (Kendall et al. 2018): sum_i exp(-s_i)*L_i + s_i, the s_i trained at "
    "train.proxy_lr; the configured weights only switch terms on (> 0) or off (0)",
    "epo": "Exact Pareto Optimal descent (Mahapatra & Rajan 2020): the configured weights are the preference "
    "ray; one backward per term on the shared parameters",
}


def get_loss_spec(name: str) -> LossSpec | None:
    """The spec for ``name``; None for plain CCE; ConfigError naming the choices otherwise."""
    if name == NO_DML:
        return None
    if name not in LOSSES:
        raise ConfigError("loss.name: " + unknown_choice("loss", name, LOSS_NAMES))
    return LOSSES[name]


def loss_set(name: str) -> tuple[str, ...]:
    """The DML losses ``loss.name`` names, in its order: () for plain CCE; ConfigError (without a
    source prefix) for an unknown loss, a loss named twice or ``none`` inside a set."""
    if name == NO_DML:
        return ()
    names = tuple(n.strip() for n in str(name).split(SET_SEP))
    if len(names) == 1 and names[0] not in LOSSES:
        raise ConfigError(unknown_choice("loss", name, LOSS_NAMES))
    for n in names:
        if n == NO_DML:
            raise ConfigError(f"{name!r}: none cannot join a set of losses (CCE is always there: loss.ce_weight)")
        if n not in LOSSES:
            raise ConfigError(f"unknown loss {n!r} in {name!r}{did_you_mean(n, LOSSES)}; valid: {', '.join(LOSSES)}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"{', '.join(repeated)} appears twice in {name!r}; name each loss once")
    return names


class LossName(H):
    """``loss.name``: a registered loss, ``none``, or several DML losses joined by ``+``."""

    def describe(self) -> str:
        return f"one of {', '.join(LOSS_NAMES)}, or DML losses joined by {SET_SEP} (e.g. proxy_anchor{SET_SEP}supcon)"

    def check(self, value: Any, key: str, source: str = "config") -> None:
        try:
            loss_set(value)
        except ConfigError as e:
            raise ConfigError(f"{source}: {key}: {e}") from None


def learns_parameters(name: str, weighting: str = "linear") -> bool:
    """Whether the loss learns parameters of its own (proxies, uncertainty weights), trained at
    train.proxy_lr: only then does that rate change the run."""
    try:
        names = loss_set(name)
    except ConfigError:
        return False
    return weighting == "uncertainty" or any(LOSSES[n].has_proxies for n in names)


def split_params(names: tuple[str, ...], params: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    """``LossConfig.params`` (``margin`` for a single loss, ``proxy_anchor.margin`` in a set, and
    ``<loss>.weight``) as per-loss hyperparameters and per-loss weights."""
    per_loss: dict[str, dict[str, Any]] = {n: {} for n in names}
    weights = {n: 1.0 for n in names}
    for key, value in params.items():
        owner, dot, param = key.partition(".")
        if not dot:
            owner, param = names[0], key
        if param == WEIGHT.name:
            weights[owner] = value
        else:
            per_loss[owner][param] = value
    return per_loss, weights


class CombinedLoss(nn.Module):
    """CCE plus one or more DML losses, combined by ``weighting`` (see :data:`WEIGHTINGS`).

    Returns the total and its parts: ``ce``, optional ``adv_ce`` (adversarial views' CCE, see
    :mod:`tunedml.adversarial`, added as ``adv_weight * adv_ce`` to the CCE term), ``dml`` for a
    single DML loss or ``dml_<loss>`` for each loss of a set, and ``weight_<term>`` for the weights
    in effect where they are not the configured ones (uncertainty, epo). A term whose weight is 0 is
    left out. ``dml`` (the attribute) is the loss that proxy and mixed inference use: the first one
    with proxies, else the first.
    """

    def __init__(
        self,
        ce_weight: float,
        dml_weight: float,
        dml: DMLLoss | dict[str, DMLLoss] | None,
        weights: dict[str, float] | None = None,
        weighting: str = "linear",
    ):
        super().__init__()
        if weighting not in WEIGHTINGS:
            raise ConfigError("loss.weighting: " + unknown_choice("weighting", weighting, WEIGHTINGS))
        losses = dml if isinstance(dml, dict) else ({dml.spec.name: dml} if dml is not None else {})
        self.ce_weight, self.dml_weight, self.weighting = ce_weight, dml_weight, weighting
        self.terms = nn.ModuleDict(losses)
        self.term_weights = {n: dml_weight * (weights or {}).get(n, 1.0) for n in losses}
        self.labels = {n: "dml" if len(losses) == 1 else f"dml_{n}" for n in losses}
        active = (["ce"] if ce_weight > 0 else []) + [self.labels[n] for n, w in self.term_weights.items() if w > 0]
        self.active = active  # the terms combined, in order
        if weighting != "linear" and len(active) < 2:
            raise ConfigError(
                f"loss.weighting={weighting} combines several terms, but only "
                f"{', '.join(active) or 'none'} has a weight > 0; add a DML loss or use linear"
            )
        # uncertainty: s_i = log(sigma_i^2), one per term, learned with the loss's parameters
        self.log_vars = nn.Parameter(torch.zeros(len(active))) if weighting == "uncertainty" else None
        self._last_terms: list[torch.Tensor] = []

    @property
    def dml(self) -> DMLLoss | None:
        """The DML loss inference uses: the first with proxies, else the first (None for plain CCE)."""
        losses = list(self.terms.values())
        return next((d for d in losses if d.spec.has_proxies), losses[0] if losses else None)

    def preference(self) -> list[float]:
        """The configured weight of each active term: the linear weights, EPO's preference ray."""
        by_label = {"ce": self.ce_weight, **{self.labels[n]: w for n, w in self.term_weights.items()}}
        return [by_label[label] for label in self.active]

    def forward(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        embeddings: torch.Tensor,
        embedding_labels: torch.Tensor,
        adv_logits: torch.Tensor | None = None,
        adv_weight: float = 0.0,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts: dict[str, torch.Tensor] = {}
        terms: list[torch.Tensor] = []  # each active term, unweighted
        total = logits.new_zeros(())
        if self.ce_weight > 0:
            parts["ce"] = F.cross_entropy(logits.float(), labels)
            total = total + self.ce_weight * parts["ce"]
            term = parts["ce"]
            if adv_logits is not None and adv_weight > 0:
                parts["adv_ce"] = F.cross_entropy(adv_logits.float(), labels)
                total = total + self.ce_weight * adv_weight * parts["adv_ce"]
                term = term + adv_weight * parts["adv_ce"]
            terms.append(term)
        for name, loss in self.terms.items():
            weight = self.term_weights[name]
            if weight > 0:
                label = self.labels[name]
                parts[label] = loss(embeddings.float(), embedding_labels)
                total = total + weight * parts[label]
                terms.append(parts[label])
        if self.weighting == "uncertainty":
            precision = torch.exp(-self.log_vars)
            total = (precision * torch.stack(terms)).sum() + self.log_vars.sum()
            parts.update({f"weight_{label}": precision[i].detach() for i, label in enumerate(self.active)})
        self._last_terms = terms if self.weighting == "epo" else []
        return total, parts

    def backward(self, total: torch.Tensor, parts: dict[str, torch.Tensor], shared: list[torch.nn.Parameter]) -> None:
        """Back-propagate one step's loss. ``shared`` are the encoder's and head's parameters.

        linear and uncertainty: ``total.backward()``. epo: one backward per term, EPO's weights
        from the terms' gradients on ``shared``, then every parameter's gradient is that of
        ``sum_j alpha_j term_j``; ``parts`` gets ``weight_<term>`` (alpha).
        """
        if self.weighting != "epo":
            total.backward()
            return
        from .epo import epo_weights

        terms, self._last_terms = self._last_terms, []
        own = [p for p in self.parameters() if p.requires_grad]
        params = [*shared, *own]
        grads = [
            torch.autograd.grad(term, params, retain_graph=i < len(terms) - 1, allow_unused=True)
            for i, term in enumerate(terms)
        ]
        gram = torch.zeros(len(terms), len(terms), dtype=torch.float64)
        for k in range(len(shared)):
            present = [(i, g[k].double()) for i, g in enumerate(grads) if g[k] is not None]
            for i, gi in present:
                for j, gj in present:
                    gram[i, j] += (gi * gj).sum()
        losses = [float(t.detach()) for t in terms]
        alpha = epo_weights(np.array(losses), gram.numpy(), np.array(self.preference()))
        for k, p in enumerate(params):
            combined = [float(alpha[i]) * g[k] for i, g in enumerate(grads) if g[k] is not None]
            if combined:
                grad = torch.stack(combined).sum(0)
                p.grad = grad if p.grad is None else p.grad + grad
        parts.update({f"weight_{label}": torch.tensor(float(alpha[i])) for i, label in enumerate(self.active)})


def build_loss(
    name: str,
    ce_weight: float,
    dml_weight: float,
    params: dict[str, Any],
    num_classes: int,
    embedding_size: int,
    weighting: str = "linear",
) -> CombinedLoss:
    """The configured objective; ``params`` as in ``LossConfig.params`` (see :func:`split_params`)."""
    names = loss_set(name)
    per_loss, weights = split_params(names, params)
    dml = {n: LOSSES[n].build(num_classes, embedding_size, per_loss[n]) for n in names}
    if not dml and ce_weight <= 0:
        raise ConfigError("loss.ce_weight must be > 0 when loss.name is 'none' (nothing would be trained)")
    return CombinedLoss(ce_weight, dml_weight, dml or None, weights, weighting)
