"""Adversarial views: the perturbation's size, its effect on a fixed model, and training with it."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from tunedml.adversarial import Adversary, build_adversary, perturbed
from tunedml.config import AdversarialConfig, build_config
from tunedml.data import Draw, load_corpus, tokenize
from tunedml.model import build_model, load_tokenizer
from tunedml.train import Trainer, draw_for


@pytest.fixture(scope="module")
def tokens(data_dir, tiny_roberta):
    return tokenize(load_corpus("sst2", data_dir), load_tokenizer(tiny_roberta), max_length=48)


@pytest.fixture(scope="module")
def batch(tokens):
    """16 SST-2 training sentences of different lengths (so the batch has padding)."""
    import numpy as np

    return next(tokens.train_batches(np.arange(16), 16, np.random.default_rng(0)))


@pytest.fixture(scope="module")
def fixed_model(tiny_roberta):
    """The tiny RoBERTa with a seeded head, in eval mode: no dropout, the same outputs every call."""
    torch.manual_seed(0)
    return build_model(tiny_roberta, 2, "mean", 0.1).eval()


def config(tiny_roberta, data_dir, *sets: str):
    return build_config(
        sets=[
            f"model.name={tiny_roberta}",
            f"data.data_dir={data_dir}",
            "data.k=8",
            "train.epochs=2",
            "train.batch_size=8",
            "train.lr=1e-3",
            "train.threads=2",
            *sets,
        ]
    )


def trainer_for(cfg, tokens) -> Trainer:
    d = draw_for(cfg, tokens)
    return Trainer(cfg, tokens, Draw(d.train, d.dev, d.test[:200]))


def norms(delta: torch.Tensor) -> torch.Tensor:
    return delta.flatten(1).norm(dim=1)


def ce(model, batch, delta: torch.Tensor | None = None) -> float:
    with torch.no_grad(), perturbed(model, delta if delta is not None else torch.zeros(())):
        out = model(batch["input_ids"], batch["attention_mask"])
    return float(F.cross_entropy(out.logits, batch["labels"]))


# ---------------------------------------------------------------- the perturbation


@pytest.mark.parametrize("epsilon", [0.3, 2.0])
def test_fgm_perturbation_has_norm_epsilon_per_example_and_spares_padding(fixed_model, batch, epsilon):
    _, delta = Adversary("fgm", epsilon).perturb(
        fixed_model, batch["input_ids"], batch["attention_mask"], batch["labels"]
    )
    assert delta.shape == (*batch["input_ids"].shape, fixed_model.hidden_size)
    assert torch.allclose(norms(delta), torch.full((16,), epsilon), rtol=1e-5)
    padding = batch["attention_mask"] == 0
    assert padding.any() and float(delta[padding].abs().max()) == 0.0


def test_pgd_stays_in_the_epsilon_ball(fixed_model, batch):
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    _, small_steps = Adversary("pgd", 1.0, alpha=0.2, steps=3).perturb(fixed_model, ids, mask, labels)
    assert float(norms(small_steps).max()) <= 0.6 + 1e-5  # three steps of 0.2 cannot leave a ball of 0.6
    _, large_steps = Adversary("pgd", 1.0, alpha=2.0, steps=3).perturb(fixed_model, ids, mask, labels)
    assert torch.allclose(norms(large_steps), torch.ones(16), rtol=1e-5)  # every step ends on the boundary


@pytest.mark.parametrize("mode", ["fgm", "pgd"])
def test_the_adversarial_view_raises_the_cce_of_a_fixed_model(fixed_model, batch, mode):
    adversary = Adversary(mode, 1.0, alpha=0.5, steps=3)
    _, delta = adversary.perturb(fixed_model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    random = torch.randn(delta.shape, generator=torch.Generator().manual_seed(0))
    random = random * batch["attention_mask"].unsqueeze(-1)
    random = random / norms(random).view(-1, 1, 1)  # the same norm, a random direction
    clean = ce(fixed_model, batch)
    assert ce(fixed_model, batch, delta) > ce(fixed_model, batch, random) > 0
    assert ce(fixed_model, batch, delta) > clean


def test_the_clean_outputs_are_the_model_outputs(fixed_model, batch):
    # the zero perturbation hooked into the clean pass must not change it
    clean, _ = Adversary("fgm", 1.0).perturb(fixed_model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    with torch.no_grad():
        plain = fixed_model(batch["input_ids"], batch["attention_mask"])
    assert torch.equal(clean.logits.detach(), plain.logits) and torch.equal(clean.pooled.detach(), plain.pooled)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_views_work_under_bf16_autocast_and_with_cls_pooling(tiny_roberta, batch, pooling):
    torch.manual_seed(0)
    model = build_model(tiny_roberta, 2, pooling, 0.1).eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        clean, adv = Adversary("fgm", 1.0).views(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    assert adv.logits.shape == clean.logits.shape == (16, 2)
    assert torch.isfinite(adv.logits.float()).all() and not torch.equal(adv.logits, clean.logits)


def test_mode_none_builds_no_adversary():
    assert build_adversary(AdversarialConfig()) is None
    adversary = build_adversary(AdversarialConfig(mode="pgd", epsilon=0.5, alpha=0.1, steps=4, weight=0.3))
    assert (adversary.mode, adversary.epsilon, adversary.alpha, adversary.steps, adversary.weight) == (
        "pgd",
        0.5,
        0.1,
        4,
        0.3,
    )
    assert build_adversary(AdversarialConfig(mode="fgm", steps=4)).steps == 1


# ---------------------------------------------------------------- training with adversarial views


@pytest.mark.parametrize(
    "sets",
    [
        ["adversarial.mode=fgm"],
        ["adversarial.mode=pgd", "adversarial.steps=2", "model.pooling=cls"],
        ["adversarial.mode=fgm", "model.token_mode=true"],
    ],
)
def test_training_reports_the_adversarial_cce_and_feeds_the_views_to_the_dml_loss(tiny_roberta, data_dir, tokens, sets):
    cfg = config(tiny_roberta, data_dir, "loss.name=supcon", *sets)
    trainer = trainer_for(cfg, tokens)
    seen: list[tuple[int, int]] = []
    trainer.loss.dml.register_forward_hook(lambda module, args, out: seen.append((len(args[0]), len(args[1]))))
    result = trainer.fit(evaluate_test=False)
    for epoch in result.history:
        assert set(epoch.loss_parts) == {"ce", "adv_ce", "dml"}
        assert all(math.isfinite(v) for v in epoch.loss_parts.values())
        parts = epoch.loss_parts
        assert epoch.train_loss == pytest.approx(parts["ce"] + parts["adv_ce"] + parts["dml"], rel=1e-5)
    if not cfg.model.token_mode:  # clean and adversarial views: twice the batch, with their labels
        assert {n for n, _ in seen} == {16} and all(n == m for n, m in seen)


def test_adversarial_training_reproduces_and_differs_from_plain_training(tiny_roberta, data_dir, tokens):
    plain = trainer_for(config(tiny_roberta, data_dir), tokens).fit(evaluate_test=False)
    cfg = config(tiny_roberta, data_dir, "adversarial.mode=fgm", "adversarial.weight=0.5")
    a, b = trainer_for(cfg, tokens).fit(evaluate_test=False), trainer_for(cfg, tokens).fit(evaluate_test=False)
    assert [e.loss_parts for e in a.history] == [e.loss_parts for e in b.history]
    first = a.history[0]
    assert first.train_loss == pytest.approx(first.loss_parts["ce"] + 0.5 * first.loss_parts["adv_ce"], rel=1e-5)
    assert [e.loss_parts["ce"] for e in a.history] != [e.loss_parts["ce"] for e in plain.history]


# Compared in this process, not against numbers recorded on another machine (another CPU rounds
# float reductions in another order): with mode none the adversarial keys do nothing at all, not
# a random draw, not a term, so a run with them set trains bit for bit as one without them.
@pytest.mark.parametrize("name, sets", [("cce", []), ("supcon", ["loss.name=supcon"])])
def test_mode_none_trains_as_if_adversarial_views_did_not_exist(tiny_roberta, data_dir, tokens, name, sets):
    cfg = config(tiny_roberta, data_dir, "train.epochs=3", "adversarial.mode=none", *sets)
    result = trainer_for(cfg, tokens).fit(evaluate_test=False)
    assert len(result.history) == 3 and all(math.isfinite(e.train_loss) for e in result.history)
    assert not any(k.startswith("adv") for e in result.history for k in e.loss_parts)
    keyed = config(
        tiny_roberta,
        data_dir,
        "train.epochs=3",
        "adversarial.mode=none",
        "adversarial.epsilon=0.5",
        "adversarial.weight=2.0",
        "adversarial.steps=3",
        *sets,
    )
    other = trainer_for(keyed, tokens).fit(evaluate_test=False)
    assert [(e.train_loss, e.loss_parts, e.dev) for e in other.history] == [
        (e.train_loss, e.loss_parts, e.dev) for e in result.history
    ]
    fgm = trainer_for(config(tiny_roberta, data_dir, "train.epochs=3", "adversarial.mode=fgm", *sets), tokens)
    assert [e.train_loss for e in fgm.fit(evaluate_test=False).history] != [e.train_loss for e in result.history]
