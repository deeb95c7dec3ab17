"""Inference by head, proxies, class centers or a mix, and the reported metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tunedml.data import load_corpus, tokenize
from tunedml.evaluate import Outputs, class_centers, forward_all, predict, proxy_scores, scores
from tunedml.losses import LOSSES, NO_DML, build_loss
from tunedml.model import build_model, load_tokenizer

DIM = 6


def near(rows: torch.Tensor, noise: float = 0.05, seed: int = 0) -> torch.Tensor:
    """Points close to ``rows``, each repeated three times."""
    g = torch.Generator().manual_seed(seed)
    rows = rows.repeat_interleave(3, dim=0)
    return rows + noise * torch.randn(rows.shape, generator=g)


def basis(*axes: int) -> torch.Tensor:
    return torch.eye(DIM)[list(axes)]


def outputs(embeddings: torch.Tensor, labels, logits: torch.Tensor | None = None) -> Outputs:
    labels = np.asarray(labels)
    if logits is None:  # a head that always says class 0
        logits = torch.zeros(len(labels), int(labels.max()) + 1)
        logits[:, 0] = 5.0
    return Outputs(logits, embeddings, labels)


def set_proxies(loss, proxies: torch.Tensor) -> None:
    with torch.no_grad():
        loss.dml.proxies().copy_(proxies)  # a view: writes through transposed storage too


# ---------------------------------------------------------------- learned proxies


@pytest.mark.parametrize("name", ["proxy_anchor", "proxy_nca"])
def test_nearest_proxy_wins_for_similarity_and_distance_losses(name):
    """ProxyAnchor scores by cosine similarity, ProxyNCA by (negated) distance: both pick the nearest."""
    loss = build_loss(name, 1.0, 1.0, {}, num_classes=3, embedding_size=DIM)
    set_proxies(loss, basis(0, 1, 2))
    labels = np.repeat([0, 1, 2], 3)
    out = outputs(near(basis(0, 1, 2)), labels)
    assert predict("proxy", out, loss).tolist() == labels.tolist()
    assert predict("head", out, loss).tolist() == [0] * 9


@pytest.mark.parametrize("name", [n for n, s in LOSSES.items() if s.has_proxies and n != "soft_triple"])
def test_every_proxy_loss_picks_the_nearest_proxy(name):
    loss = build_loss(name, 1.0, 1.0, {}, num_classes=2, embedding_size=DIM)
    set_proxies(loss, basis(3, 4))
    out = outputs(near(basis(4, 3)), [1, 1, 1, 0, 0, 0])
    assert predict("proxy", out, loss).tolist() == [1, 1, 1, 0, 0, 0]


def test_soft_triple_scores_a_class_by_its_best_center():
    loss = build_loss("soft_triple", 1.0, 1.0, {"centers_per_class": 2}, num_classes=2, embedding_size=DIM)
    set_proxies(loss, basis(0, 1, 2, 3))  # class 0: axes 0 and 1; class 1: axes 2 and 3
    out = outputs(near(basis(1, 3, 0, 2)), np.repeat([0, 1, 0, 1], 3))
    assert predict("proxy", out, loss).tolist() == out.labels.tolist()
    scores_ = proxy_scores(loss, out.embeddings, None)
    assert scores_.shape == (12, 2)


# ---------------------------------------------------------------- class centers


def test_class_centers_are_mean_embeddings_per_class():
    embeddings = torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, 4.0], [2.0, 2.0]])
    centers = class_centers(outputs(embeddings, [0, 0, 1, 1]), num_classes=2)
    assert torch.allclose(centers, torch.tensor([[2.0, 1.0], [1.0, 3.0]]))


@pytest.mark.parametrize("name", ["supcon", "triplet_margin", NO_DML])
def test_losses_without_proxies_classify_by_class_centers(name):
    """supcon: cosine similarity; triplet_margin: L2 distance; plain CCE: cosine."""
    loss = build_loss(name, 1.0, 1.0, {}, num_classes=3, embedding_size=DIM)
    train = outputs(near(basis(2, 0, 5), seed=1), np.repeat([0, 1, 2], 3))
    centers = class_centers(train, 3)
    test = outputs(near(basis(5, 2, 0), seed=2), np.repeat([2, 0, 1], 3))
    assert predict("proxy", test, loss, centers).tolist() == test.labels.tolist()
    with pytest.raises(ValueError, match="needs class centers"):
        predict("proxy", test, loss)


# ---------------------------------------------------------------- mixed


def test_mixed_mode_weights_head_and_proxy_probabilities():
    """Head: P = (0.6, 0.4) for every example. Proxies (cosine, scale 1): softmax(1, 0) = (0.731, 0.269).

    Example near class 1: mix 0.5 gives (0.434, 0.566) -> 1; mix 0.9 gives (0.567, 0.433) -> 0.
    """
    loss = build_loss(NO_DML, 1.0, 0.0, {}, num_classes=2, embedding_size=DIM)
    centers = basis(0, 1)
    logits = torch.log(torch.tensor([[0.6, 0.4], [0.6, 0.4]]))
    out = outputs(basis(0, 1), [0, 1], logits)

    def mixed(weight):
        return predict("mixed", out, loss, centers, mix_weight=weight, proxy_scale=1.0).tolist()

    assert mixed(0.5) == [0, 1]
    assert mixed(0.9) == [0, 0]
    assert mixed(1.0) == predict("head", out, loss).tolist() == [0, 0]
    assert mixed(0.0) == predict("proxy", out, loss, centers).tolist() == [0, 1]


# ---------------------------------------------------------------- metrics


def test_scores_accuracy_and_macro_f1_by_hand():
    predictions = np.array([0, 0, 1, 1, 2, 0])
    labels = np.array([0, 1, 1, 1, 2, 2])
    # F1 per class: 0 -> 2*1/(2+2+0) = 0.5; 1 -> 2*2/(4+0+1) = 0.8; 2 -> 2*1/(2+0+1) = 2/3
    s = scores(predictions, labels, num_classes=3)
    assert s["accuracy"] == pytest.approx(4 / 6)
    assert s["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert scores(predictions, labels, num_classes=4)["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 4)


def test_scores_of_perfect_and_constant_predictions():
    labels = np.array([0, 1, 0, 1])
    assert scores(labels, labels, 2) == {"accuracy": 1.0, "macro_f1": 1.0, "collapsed": 0.0}
    # always 0: class 0 F1 = 2*2/(4+2) = 2/3, class 1 F1 = 0
    s = scores(np.zeros(4, dtype=int), labels, 2)
    assert s["accuracy"] == 0.5 and s["macro_f1"] == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    "predictions, labels, collapsed",
    [
        ([1, 1, 1, 1, 1, 1], [0, 1, 0, 1, 2, 1], 1.0),  # one class predicted, three present
        ([0, 0, 0, 0], [0, 1, 1, 1], 1.0),  # even when the one class is the minority
        ([0, 1, 1, 1], [0, 1, 1, 1], 0.0),
        ([0, 2, 2, 2], [1, 1, 1, 1], 0.0),  # two classes predicted: wrong, not collapsed
        ([1, 1, 1], [1, 1, 1], 0.0),  # a one-class split cannot show a collapse
    ],
)
def test_collapsed_flags_predictions_that_fell_to_one_class(predictions, labels, collapsed):
    s = scores(np.array(predictions), np.array(labels), 3)
    assert s["collapsed"] == collapsed


# ---------------------------------------------------------------- forward_all


def test_forward_all_returns_results_in_the_order_asked(data_dir, tiny_roberta):
    tokens = tokenize(load_corpus("sst2", data_dir), load_tokenizer(tiny_roberta), max_length=48)
    torch.manual_seed(0)
    model = build_model(tiny_roberta, num_classes=2)
    indices = np.random.default_rng(0).choice(len(tokens.input_ids), size=40, replace=False)
    out = forward_all(model, tokens, indices, batch_size=16, device=torch.device("cpu"))
    assert model.training  # the train/eval mode is restored
    assert out.labels.tolist() == tokens.corpus.labels[indices].tolist()
    model.eval()
    with torch.no_grad():
        for row in (0, 17, 39):  # one example alone, without padding
            alone = model(**{k: v for k, v in tokens.batch([indices[row]]).items() if k != "labels"})
            assert torch.allclose(out.embeddings[row], alone.pooled[0], atol=1e-5)
            assert torch.allclose(out.logits[row], alone.logits[0], atol=1e-5)
