"""Adversarial views: each example again, with its word embeddings pushed up the CCE gradient.

As in supervised contrastive adversarial learning (SCAL) and FreeLB-style fine-tuning, the
perturbation lives in embedding space, where it cannot flip a sentence's meaning the way a word
edit can. ``fgm`` takes one step of L2 norm ``epsilon``; ``pgd`` takes ``steps`` steps of norm
``alpha``, each projected back into the ball of radius ``epsilon``. Norms are per example, over its
real tokens; padding is never perturbed.

The perturbation is added by a forward hook on the encoder's word-embedding module
(``get_input_embeddings()``), so any Hugging Face encoder (BERT, MiniLM, RoBERTa, ...) keeps its
own position ids, token types and embedding layer norm, and CLS and mean pooling work unchanged.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch.nn import functional as F

from .config import AdversarialConfig
from .model import EncoderClassifier, EncoderOutput


@contextmanager
def perturbed(model: EncoderClassifier, delta: torch.Tensor) -> Iterator[None]:
    """Within the block, ``delta`` (batch, seq, hidden) is added to the word embeddings."""
    embeddings = model.encoder.get_input_embeddings()
    handle = embeddings.register_forward_hook(lambda module, args, output: output + delta.to(output.dtype))
    try:
        yield
    finally:
        handle.remove()


def _unit(grad: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``grad`` on the real tokens, scaled to L2 norm 1 per example."""
    grad = grad.float() * mask.unsqueeze(-1)
    norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
    return grad / norm.view(-1, 1, 1)


def _project(delta: torch.Tensor, radius: float) -> torch.Tensor:
    """Scale each example's perturbation back into the L2 ball of ``radius``."""
    norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
    return delta * (radius / norm).clamp(max=1.0).view(-1, 1, 1)


class Adversary:
    """Makes the adversarial view of a batch for the model as it is at this step."""

    def __init__(self, mode: str, epsilon: float, alpha: float = 0.5, steps: int = 1, weight: float = 1.0):
        if mode not in ("fgm", "pgd"):
            raise ValueError(f"adversarial mode {mode!r}: expected fgm or pgd")
        self.mode, self.epsilon, self.alpha, self.weight = mode, epsilon, alpha, weight
        self.steps = steps if mode == "pgd" else 1

    def _ce_gradient(
        self,
        model: EncoderClassifier,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        delta: torch.Tensor,
        retain_graph: bool,
    ) -> tuple[EncoderOutput, torch.Tensor]:
        """The outputs with ``delta`` added, and the gradient of their CCE with respect to ``delta``."""
        delta = delta.detach().requires_grad_(True)
        with perturbed(model, delta):
            out = model(input_ids, attention_mask)
        ce = F.cross_entropy(out.logits.float(), labels)
        (grad,) = torch.autograd.grad(ce, delta, retain_graph=retain_graph)
        return out, grad

    def perturb(
        self, model: EncoderClassifier, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
    ) -> tuple[EncoderOutput, torch.Tensor]:
        """The clean outputs (still differentiable: they carry the training loss) and the perturbation.

        The clean forward pass runs with a zero perturbation hooked in, so its graph also gives the
        first gradient: ``fgm`` costs one extra backward to the embeddings and one extra forward.
        """
        hidden = model.encoder.get_input_embeddings().embedding_dim
        mask = attention_mask.float()
        delta = torch.zeros(*input_ids.shape, hidden, device=input_ids.device)
        clean, grad = self._ce_gradient(model, input_ids, attention_mask, labels, delta, retain_graph=True)
        if self.mode == "fgm":
            return clean, (self.epsilon * _unit(grad, mask)).detach()
        for step in range(self.steps):
            if step:
                _, grad = self._ce_gradient(model, input_ids, attention_mask, labels, delta, retain_graph=False)
            delta = _project(delta + self.alpha * _unit(grad, mask), self.epsilon)
        return clean, delta.detach()

    def views(
        self, model: EncoderClassifier, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
    ) -> tuple[EncoderOutput, EncoderOutput]:
        """The clean outputs and the adversarial view's outputs, both differentiable."""
        clean, delta = self.perturb(model, input_ids, attention_mask, labels)
        with perturbed(model, delta):
            adversarial = model(input_ids, attention_mask)
        return clean, adversarial


def build_adversary(cfg: AdversarialConfig) -> Adversary | None:
    """None for ``mode=none``: training then takes exactly the path it takes without this module."""
    if cfg.mode == "none":
        return None
    return Adversary(cfg.mode, cfg.epsilon, cfg.alpha, cfg.steps, cfg.weight)
