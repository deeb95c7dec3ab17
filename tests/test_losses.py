"""The loss registry and the combined objective, trained for real on a tiny RoBERTa."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from tunedml.config import build_config
from tunedml.data import Draw, load_corpus, tokenize
from tunedml.errors import ConfigError
from tunedml.losses import LOSS_NAMES, LOSSES, NO_DML, WEIGHTINGS, CombinedLoss, build_loss, get_loss_spec
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
    cfg = build_config(
        sets=[
            f"model.name={tiny_roberta}",
            "train.epochs=1",
            "train.batch_size=8",
            "train.warmup_ratio=0",
            "train.threads=2",
            *sets,
        ]
    )
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
    loss_fn = build_loss(
        name, ce_weight=0.0, dml_weight=1.0, params={}, num_classes=2, embedding_size=model.hidden_size
    )
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
    t.loss.terms["supcon"] = Spy()
    t.train_epoch()
    batch = tokens.batch(small_draw.train)
    lengths = batch["attention_mask"].sum(1)
    assert seen["embeddings"].shape == (int(lengths.sum()), t.model.hidden_size)
    assert sorted(seen["labels"].tolist()) == sorted(np.repeat(batch["labels"].numpy(), lengths.numpy()).tolist())


# ---------------------------------------------------------------- single-loss configs: a set of one is the loss itself


# Compared in this process, never against numbers recorded on another machine: thread counts and
# CPUs change the order of float reductions, so only runs made here side by side may be equal bit
# for bit. A loss set whose other member weighs 0 must train exactly as the single loss does (the
# zero-weight member is left out before it is built, so it takes no randomness and no step).
def _two_epochs(tiny_roberta, tokens, *sets: str):
    labels = tokens.corpus.labels
    train = np.concatenate([np.flatnonzero(labels == c)[:4] for c in (0, 1)])
    dev = np.concatenate([np.flatnonzero(labels == c)[4:12] for c in (0, 1)])
    cfg = build_config(
        sets=[
            f"model.name={tiny_roberta}",
            "train.epochs=2",
            "train.batch_size=4",
            "train.warmup_ratio=0",
            "train.threads=2",
            *sets,
        ]
    )
    t = Trainer(cfg, tokens, Draw(train, dev, dev))
    before = sum(float(p.detach().double().sum()) for p in t.model.parameters())
    history = [(e.train_loss, e.loss_parts) for e in t.checkpoints()]
    model = [p.detach().clone() for p in t.model.parameters()]
    return before, history, model, [p.detach().clone() for p in t.loss.parameters()]


def _same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("name", ["none", "proxy_anchor", "supcon", "soft_triple"])
def test_single_loss_runs_are_repeatable_and_a_zero_weight_partner_changes_nothing(name, tiny_roberta, tokens):
    mode = "inference.mode=" + ("head" if name == "none" else "mixed")
    before, history, model, loss_params = _two_epochs(tiny_roberta, tokens, f"loss.name={name}", mode)
    assert len(history) == 2 and all(np.isfinite(loss) for loss, _ in history)
    assert set(history[0][1]) == ({"ce"} if name == "none" else {"ce", "dml"})
    after = sum(float(p.double().sum()) for p in model)
    assert after != before  # it trained
    again = _two_epochs(tiny_roberta, tokens, f"loss.name={name}", mode)
    assert again[1] == history and _same(again[2], model) and _same(again[3], loss_params)  # bit for bit
    if name == "none":
        return
    partner = "ntxent" if name == "supcon" else "supcon"
    paired = _two_epochs(tiny_roberta, tokens, f"loss.name={name}+{partner}", f"loss.{partner}.weight=0", mode)
    assert [loss for loss, _ in paired[1]] == [loss for loss, _ in history]
    assert [parts[f"dml_{name}"] for _, parts in paired[1]] == [parts["dml"] for _, parts in history]
    assert _same(paired[2], model) and _same(paired[3], loss_params)


def test_linear_single_loss_total_is_exactly_the_weighted_sum(toy):
    logits, embeddings, labels = toy
    loss = build_loss("supcon", 0.3, 0.7, {}, 2, 4)
    total, parts = loss(logits, labels, embeddings, labels)
    expected = logits.new_zeros(()) + 0.3 * F.cross_entropy(logits, labels) + 0.7 * loss.dml(embeddings, labels)
    assert torch.equal(total, expected)


# ---------------------------------------------------------------- several DML losses


def test_a_set_of_losses_adds_a_weighted_term_per_loss(toy):
    logits, embeddings, labels = toy
    loss = build_loss(
        "proxy_anchor+supcon",
        0.5,
        2.0,
        {"proxy_anchor.margin": 0.2, "supcon.temperature": 0.3, "supcon.weight": 0.25},
        2,
        4,
    )
    assert list(loss.terms) == ["proxy_anchor", "supcon"]
    assert loss.terms["proxy_anchor"].loss.margin == 0.2 and loss.terms["supcon"].loss.temperature == 0.3
    total, parts = loss(logits, labels, embeddings, labels)
    assert set(parts) == {"ce", "dml_proxy_anchor", "dml_supcon"}
    assert torch.allclose(total, 0.5 * parts["ce"] + 2.0 * parts["dml_proxy_anchor"] + 0.5 * parts["dml_supcon"])
    assert loss.preference() == [0.5, 2.0, 0.5]


def test_a_zero_weight_leaves_its_loss_out(toy):
    logits, embeddings, labels = toy
    _, parts = build_loss("proxy_anchor+supcon", 1.0, 1.0, {"supcon.weight": 0.0}, 2, 4)(
        logits, labels, embeddings, labels
    )
    assert set(parts) == {"ce", "dml_proxy_anchor"}


def test_inference_uses_the_first_loss_with_proxies():
    assert build_loss("supcon+soft_triple+proxy_anchor", 1.0, 1.0, {}, 2, 4).dml.spec.name == "soft_triple"
    assert build_loss("supcon+ntxent", 1.0, 1.0, {}, 2, 4).dml.spec.name == "supcon"  # class centers, supcon's distance


def test_every_loss_of_a_set_trains_and_its_proxies_are_in_the_proxies_group(tiny_roberta, tokens, small_draw):
    t = trainer(tiny_roberta, tokens, small_draw, "loss.name=proxy_anchor+soft_triple+supcon", "train.proxy_lr=0.05")
    proxies = [t.loss.terms[n].proxies() for n in ("proxy_anchor", "soft_triple")]
    before = [p.detach().clone() for p in proxies]
    group = t.optimizer.param_groups[-1]
    assert group["lr"] == 0.05 and {p.data_ptr() for p in group["params"]} == {
        p.data_ptr() for p in t.loss.parameters()
    }
    loss, parts = t.train_epoch()
    assert set(parts) == {"ce", "dml_proxy_anchor", "dml_soft_triple", "dml_supcon"}
    assert loss == pytest.approx(sum(parts.values()), rel=1e-5)
    assert all(not torch.allclose(p, b) for p, b in zip(proxies, before))


# ---------------------------------------------------------------- uncertainty weighting


def test_uncertainty_weights_receive_gradients_and_move(tiny_roberta, tokens, small_draw):
    t = trainer(
        tiny_roberta,
        tokens,
        small_draw,
        "loss.name=proxy_anchor+supcon",
        "loss.weighting=uncertainty",
        "train.epochs=3",
    )
    s = t.loss.log_vars
    assert torch.equal(s, torch.zeros(3)) and any(s is p for p in t.optimizer.param_groups[-1]["params"])
    history = []
    for _ in range(3):
        _, parts = t.train_epoch()
        assert s.grad is not None and (s.grad != 0).all()
        history.append(s.detach().clone())
    assert (history[-1] != 0).all() and not torch.equal(history[0], history[-1])
    # the weights in effect are reported: exp(-s), the mean over the epoch's steps (one step here)
    assert parts["weight_ce"] == pytest.approx(float(torch.exp(-history[1][0])), rel=1e-5)
    assert {"weight_ce", "weight_dml_proxy_anchor", "weight_dml_supcon"} <= set(parts)


def test_uncertainty_total_is_the_kendall_objective(toy):
    logits, embeddings, labels = toy
    loss = build_loss("supcon", 1.0, 1.0, {}, 2, 4, weighting="uncertainty")
    with torch.no_grad():
        loss.log_vars.copy_(torch.tensor([0.5, -1.0]))
    total, parts = loss(logits, labels, embeddings, labels)
    expected = np.exp(-0.5) * parts["ce"] + 0.5 + np.exp(1.0) * parts["dml"] - 1.0
    assert float(total.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)


# ---------------------------------------------------------------- EPO weighting


def test_epo_backward_gives_the_gradient_of_the_alpha_weighted_terms(tiny_roberta, tokens, small_draw):
    t = trainer(
        tiny_roberta,
        tokens,
        small_draw,
        "loss.name=proxy_anchor+supcon",
        "loss.weighting=epo",
        "loss.proxy_anchor.weight=0.1",
    )
    batch = tokens.batch(small_draw.train)

    def forward():
        torch.manual_seed(1)  # the same dropout both times
        out = t.model(batch["input_ids"], batch["attention_mask"])
        return t.loss(out.logits, batch["labels"], out.pooled, batch["labels"])

    total, parts = forward()
    t.loss.backward(total, parts, t.shared_parameters)
    alpha = [float(parts[f"weight_{label}"]) for label in ("ce", "dml_proxy_anchor", "dml_supcon")]
    assert min(alpha) >= 0 and sum(alpha) == pytest.approx(1.0)
    params = [*t.shared_parameters, *t.loss.parameters()]
    epo_grads = [None if p.grad is None else p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    _, parts = forward()
    (alpha[0] * parts["ce"] + alpha[1] * parts["dml_proxy_anchor"] + alpha[2] * parts["dml_supcon"]).backward()
    assert any(g is not None and g.any() for g in epo_grads)
    for p, g in zip(params, epo_grads):
        zeros = torch.zeros_like(p)
        assert torch.allclose(zeros if g is None else g, zeros if p.grad is None else p.grad, rtol=1e-4, atol=1e-7)


def test_epo_trains_and_reports_its_weights(tiny_roberta, tokens, small_draw):
    t = trainer(tiny_roberta, tokens, small_draw, "loss.name=supcon", "loss.weighting=epo")
    before = t.model.encoder.embeddings.word_embeddings.weight.detach().clone()
    loss, parts = t.train_epoch()
    assert np.isfinite(loss) and set(parts) == {"ce", "dml", "weight_ce", "weight_dml"}
    assert parts["weight_ce"] + parts["weight_dml"] == pytest.approx(1.0)
    assert not torch.equal(t.model.encoder.embeddings.word_embeddings.weight, before)


@pytest.mark.parametrize(
    "name, ce, weighting", [("none", 1.0, "epo"), ("supcon", 0.0, "epo"), ("none", 1.0, "uncertainty")]
)
def test_a_weighting_of_one_term_is_refused(name, ce, weighting):
    with pytest.raises(ConfigError, match=f"loss.weighting={weighting} combines several terms"):
        build_loss(name, ce, 1.0, {}, 2, 4, weighting=weighting)


def test_tunedml_losses_lists_the_weighting_methods(capsys):
    from tunedml.cli import main

    assert main(["losses"]) == 0
    out = capsys.readouterr().out
    for name in WEIGHTINGS:
        assert f"loss.weighting={name}" in out
    assert "proxy_anchor+supcon" in out
