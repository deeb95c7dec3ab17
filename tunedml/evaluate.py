"""Inference (head, proxy, mixed) and the metrics reported on dev and test."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from .data import TokenizedCorpus
from .losses import CombinedLoss
from .model import EncoderClassifier


@dataclass
class Outputs:
    """Head logits and sentence embeddings of some examples, in the order they were asked for."""

    logits: torch.Tensor
    embeddings: torch.Tensor
    labels: np.ndarray


def autocast_for(device: torch.device, bf16: bool):
    return torch.autocast("cuda", dtype=torch.bfloat16) if bf16 and device.type == "cuda" else nullcontext()


@torch.inference_mode()
def forward_all(
    model: EncoderClassifier,
    tokens: TokenizedCorpus,
    indices: np.ndarray,
    batch_size: int,
    device: torch.device,
    bf16: bool = True,
) -> Outputs:
    """Run the model over ``indices`` in length-sorted batches; results in the original order."""
    was_training = model.training
    model.eval()
    logits = torch.empty(len(indices), model.head.out_features)
    embeddings = torch.empty(len(indices), model.hidden_size)
    for pos, batch in tokens.eval_batches(indices, batch_size):
        with autocast_for(device, bf16):
            out = model(batch["input_ids"].to(device), batch["attention_mask"].to(device))
        logits[pos] = out.logits.float().cpu()
        embeddings[pos] = out.pooled.float().cpu()
    model.train(was_training)
    return Outputs(logits, embeddings, tokens.corpus.labels[indices])


def class_centers(outputs: Outputs, num_classes: int) -> torch.Tensor:
    """Mean training embedding per class: the 'proxies' of losses that learn none."""
    labels = torch.from_numpy(outputs.labels)
    return torch.stack([outputs.embeddings[labels == c].mean(0) for c in range(num_classes)])


def proxy_scores(loss: CombinedLoss, embeddings: torch.Tensor, centers: torch.Tensor | None) -> torch.Tensor:
    """(N, classes) scores against the loss's proxies, or against class centers when it has none."""
    dml = loss.dml
    proxies = dml.proxies() if dml is not None else None
    if proxies is not None:
        return dml.class_scores(embeddings, proxies.detach().cpu())
    if centers is None:
        raise ValueError("proxy inference without learned proxies needs class centers of the training data")
    if dml is not None:
        return dml.class_scores(embeddings, centers)
    return F.normalize(embeddings, dim=1) @ F.normalize(centers, dim=1).t()


def predict(
    mode: str,
    outputs: Outputs,
    loss: CombinedLoss,
    centers: torch.Tensor | None = None,
    mix_weight: float = 0.5,
    proxy_scale: float = 16.0,
) -> np.ndarray:
    """Predicted class ids under ``mode``: head argmax, nearest proxy, or a mix of both probabilities."""
    if mode == "head":
        return outputs.logits.argmax(1).numpy()
    scores = proxy_scores(loss, outputs.embeddings, centers)
    if mode == "proxy":
        return scores.argmax(1).numpy()
    probs = mix_weight * outputs.logits.softmax(1) + (1 - mix_weight) * (proxy_scale * scores).softmax(1)
    return probs.argmax(1).numpy()


def scores(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, float]:
    """Accuracy, macro-F1 (classes absent from both predictions and labels count as F1 = 0) and
    ``collapsed``: 1.0 when every prediction is one class while the labels have several, the
    signature of a few-shot run that fell apart (accuracy alone hides it on a skewed split)."""
    accuracy = float((predictions == labels).mean()) if len(labels) else float("nan")
    f1s = []
    for c in range(num_classes):
        tp = np.sum((predictions == c) & (labels == c))
        fp = np.sum((predictions == c) & (labels != c))
        fn = np.sum((predictions != c) & (labels == c))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    collapsed = len(np.unique(predictions)) == 1 and len(np.unique(labels)) > 1
    return {"accuracy": accuracy, "macro_f1": float(np.mean(f1s)), "collapsed": float(collapsed)}
