"""The loss registry and the combined objective, trained for real on a tiny RoBERTa."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from tunedml.config import build_config
from tunedml.data import Draw, load_corpus, tokenize
from tunedml.errors import ConfigError
from tunedml.losses import LOSS_NAMES, LOSSES, NO_DML, CombinedLoss, build_loss, get_loss_spec
from tunedml.model import build_model, load_tokenizer
from tunedml.train import Trainer

PROXY_LOSSES = [name for name, spec in LOSSES.items() if spec.has_proxies]


@pytest.fixture(scope="module")
def tokens(data_dir, tiny_roberta):
    return tokenize(load_corpus("sst2", data_dir), load_tokenizer(tiny_roberta), max_length=32)


@pytest.fixture(scope="module")
def small_draw(tokens) -> Draw:
    """Four examples per class: one optimizer step of 8."""
    labels = tokens.corpus.labels
    train = np.concatenate([np.flatnonzero(labels == c)[:4] for c in (0, 1)])
    return Draw(train, train, train)


def trainer(tiny_roberta, tokens, small_draw, *sets: str) -> Trainer:
    cfg = build_config(sets=[f"model.name={tiny_roberta}", "train.epochs=1", "train.batch_size=8",
                             "train.warmup_ratio=0", "train.threads=2", *sets])
    return Trainer(cfg, tokens, small_draw)


# ---------------------------------------------------------------- the registry

def test_registry_names_are_the_config_choices():
    assert LOSS_NAMES == (NO_DML, *LOSSES)
    assert get_loss_spec(NO_DML) is None
    with pytest.raises(ConfigError, match=r"unknown loss 'supcn' \(did you mean 'supcon'\?\)"):
        get_loss_spec("supcn")


@pytest.mark.parametrize("name", LOSSES)
def test_defaults_are_within_their_own_ranges(name):
    for hp in LOSSES[name].hyperparameters:
        assert hp.parse(hp.default, f"loss.{hp.name}") == hp.default


@pytest.mark.parametrize("name", LOSSES)
def test_proxies_are_class_major_rows_of_embedding_size(name):
    dml = build_loss(name, 1.0, 1.0, {}, num_classes=3, embedding_size=8).dml
    proxies = dml.proxies()
    if not LOSSES[name].has_proxies:
        assert proxies is None and not list(dml.parameters())
        return
    per_class = LOSSES[name].defaults().get("centers_per_class", 1)
    assert proxies.shape == (3 * per_class, 8)
    assert [p.data_ptr() for p in dml.parameters()] == [proxies.data_ptr()]  # the one learnable tensor


# ---------------------------------------------------------------- every loss trains

@pytest.mark.parametrize("name", LOSSES)
def test_every_loss_trains_a_step_with_its_defaults(name, tiny_roberta, tokens, small_draw):
    t = trainer(tiny_roberta, tokens, small_draw, f"loss.name={name}")
    encoder_before = t.model.encoder.embeddings.word_embeddings.weight.detach().clone()
    proxies = t.loss.dml.proxies()
    proxies_before = None if proxies is None else proxies.detach().clone()

    loss, parts = t.train_epoch()

    assert np.isfinite(loss) and set(parts) == {"ce", "dml"}
    assert loss == pytest.approx(parts["ce"] + parts["dml"], rel=1e-5)
    assert not torch.equal(t.model.encoder.embeddings.word_embeddings.weight, encoder_before)
    if LOSSES[name].has_proxies:
        grad = getattr(t.loss.dml.loss, LOSSES[name].proxies).grad
        assert grad is not None and grad.abs().sum() > 0
        assert not torch.allclose(t.loss.dml.proxies(), proxies_before)


@pytest.mark.parametrize("name", LOSSES)
def test_the_metric_learning_part_alone_reaches_the_encoder(name, tiny_roberta, tokens, small_draw):
    torch.manual_seed(0)
    model = build_model(tiny_roberta, num_classes=2)
    loss_fn = build_loss(name, ce_weight=0.0, dml_weight=1.0, params={}, num_classes=2,
                         embedding_size=model.hidden_size)
    batch = tokens.batch(small_draw.train)
    out = model(batch["input_ids"], batch["attention_mask"])
    total, parts = loss_fn(out.logits, batch["labels"], out.pooled, batch["labels"])
    assert set(parts) == {"dml"} and torch.isfinite(total) and total > 0
    total.backward()
    assert model.encoder.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    assert model.head.weight.grad is None  # no CCE: the head is not trained


def test_loss_hyperparameters_reach_the_pytorch_metric_learning_loss():
    dml = build_loss("soft_triple", 1.0, 1.0, {"centers_per_class": 3, "la": 5.0}, 4, 16).dml
    assert (dml.loss.centers_per_class, dml.loss.la) == (3, 5.0)
    assert dml.proxies().shape == (12, 16)
    dml = build_loss("triplet_margin", 1.0, 1.0, {"margin": 0.3, "miner": "batch_hard"}, 2, 16).dml
    assert dml.loss.margin == 0.3 and type(dml.miner).__name__ == "BatchHardMiner"


# ---------------------------------------------------------------- the combined objective

@pytest.fixture
def toy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 2, generator=g)
    embeddings = torch.randn(8, 4, generator=g)
    labels = torch.tensor([0, 1] * 4)
    return logits, embeddings, labels


def test_ce_only(toy):
    logits, embeddings, labels = toy
    loss = build_loss(NO_DML, 2.0, 1.0, {}, 2, 4)
    total, parts = loss(logits, labels, embeddings, labels)
    assert set(parts) == {"ce"}
    assert torch.allclose(parts["ce"], F.cross_entropy(logits, labels))
    assert torch.allclose(total, 2.0 * parts["ce"])


def test_dml_only(toy):
    logits, embeddings, labels = toy
    loss = build_loss("supcon", 0.0, 0.5, {}, 2, 4)
    total, parts = loss(logits, labels, embeddings, labels)
    assert set(parts) == {"dml"}
    assert torch.allclose(parts["dml"], loss.dml(embeddings, labels))
    assert torch.allclose(total, 0.5 * parts["dml"])


def test_ce_and_dml_are_weighted_and_summed(toy):
    logits, embeddings, labels = toy
    loss = build_loss("supcon", 0.3, 2.0, {"temperature": 0.5}, 2, 4)
    total, parts = loss(logits, labels, embeddings, labels)
    assert set(parts) == {"ce", "dml"}
    assert torch.allclose(total, 0.3 * F.cross_entropy(logits, labels) + 2.0 * parts["dml"])


def test_zero_dml_weight_leaves_the_dml_loss_out(toy):
    logits, embeddings, labels = toy
    _, parts = build_loss("proxy_anchor", 1.0, 0.0, {}, 2, 4)(logits, labels, embeddings, labels)
    assert set(parts) == {"ce"}


def test_plain_cce_needs_a_positive_ce_weight():
    with pytest.raises(ConfigError, match="loss.ce_weight must be > 0 when loss.name is 'none'"):
        build_loss(NO_DML, 0.0, 1.0, {}, 2, 4)
    with pytest.raises(ConfigError, match="loss.ce_weight must be > 0 when loss.name is 'none'"):
        build_config(sets=["loss.ce_weight=0"])
    assert isinstance(build_loss(NO_DML, 0.1, 0.0, {}, 2, 4), CombinedLoss)


# ---------------------------------------------------------------- token mode

@pytest.mark.parametrize("name", ["supcon", "proxy_anchor"])
def test_token_mode_trains_on_every_real_token(name, tiny_roberta, tokens, small_draw):
    loss, parts = trainer(tiny_roberta, tokens, small_draw, f"loss.name={name}", "model.token_mode=true").train_epoch()
    _, sentence_parts = trainer(tiny_roberta, tokens, small_draw, f"loss.name={name}").train_epoch()
    assert np.isfinite(loss)
    assert parts["ce"] == pytest.approx(sentence_parts["ce"], rel=1e-6)  # same seed, same head
    assert parts["dml"] != pytest.approx(sentence_parts["dml"], rel=1e-3)  # other embeddings


def test_token_mode_labels_follow_their_sentence(tiny_roberta, tokens, small_draw):
    """The DML loss sees one embedding per real token, labelled with its sentence's label."""
    seen = {}

    class Spy(torch.nn.Module):
        def forward(self, embeddings, labels):
            seen["embeddings"], seen["labels"] = embeddings, labels
            return embeddings.sum() * 0

    t = trainer(tiny_roberta, tokens, small_draw, "loss.name=supcon", "model.token_mode=true")
    t.loss.dml = Spy()
    t.train_epoch()
    batch = tokens.batch(small_draw.train)
    lengths = batch["attention_mask"].sum(1)
    assert seen["embeddings"].shape == (int(lengths.sum()), t.model.hidden_size)
    assert sorted(seen["labels"].tolist()) == sorted(np.repeat(batch["labels"].numpy(), lengths.numpy()).tolist())
