"""Two-stage runs on real draws with the tiny model: where the stages lie, a frozen encoder in
stage 2, the linear and the logistic head, inference modes on top of them, and where a joint run's head
starts (head.init)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tunedml.config import build_config
from tunedml.data import Draw, load_corpus, tokenize
from tunedml.errors import ConfigError
from tunedml.model import load_tokenizer
from tunedml.stages import ENCODER, HEAD, LogisticHeadFit, StagePlan
from tunedml.train import Trainer, draw_for


@pytest.fixture(scope="module")
def tokens(data_dir, tiny_roberta):
    return tokenize(load_corpus("sst2", data_dir), load_tokenizer(tiny_roberta), max_length=48)


def config(tiny_roberta, data_dir, *sets: str):
    return build_config(
        sets=[
            f"model.name={tiny_roberta}",
            f"data.data_dir={data_dir}",
            "data.k=8",
            "train.steps=6",
            "train.eval_every=2",
            "train.batch_size=8",
            "train.lr=1e-3",
            "train.threads=2",
            "loss.name=proxy_anchor",
            "train.schedule=two_stage",
            *sets,
        ]
    )


def trainer_for(cfg, tokens) -> Trainer:
    d = draw_for(cfg, tokens)
    return Trainer(cfg, tokens, Draw(d.train, d.dev, d.test[:200]))


def state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- where the stages lie


@pytest.mark.parametrize(
    "sets, total, encoder",
    [
        (["train.schedule=joint"], 10, 10),
        ([], 10, 5),
        (["train.stage1_fraction=0.95"], 4, 3),  # stage 2 keeps a step
        (["train.stage1_fraction=0.05"], 4, 1),  # stage 1 keeps a step
        (["head.fit=logistic", "train.stage1_fraction=0.3"], 10, 10),  # fitted after a stage 1 as long as the run
    ],
)
def test_stage_plan(sets, total, encoder):
    cfg = build_config(sets=["loss.name=supcon", "train.schedule=two_stage", *sets])
    plan = StagePlan.for_run(cfg, total)
    assert (plan.encoder_steps, plan.head_steps, plan.two_stage) == (
        encoder,
        total - encoder,
        cfg.train.schedule == "two_stage",
    )


def test_dev_is_evaluated_where_stage_1_hands_the_encoder_over(tiny_roberta, data_dir, tokens):
    trainer = trainer_for(config(tiny_roberta, data_dir, "train.eval_every=4"), tokens)
    assert trainer.evaluation_steps() == [3, 4, 6]
    assert [(r.step, r.stage) for r in trainer.checkpoints()] == [(3, ENCODER), (4, HEAD), (6, HEAD)]


def test_a_linear_head_stage_needs_a_step_of_its_own():
    cfg = build_config(sets=["loss.name=supcon", "train.schedule=two_stage", "train.epochs=1"])
    with pytest.raises(ConfigError, match="needs a step for each stage; the run has 1"):
        StagePlan.for_run(cfg, 1)


# ---------------------------------------------------------------- the linear head


def test_stage_2_trains_the_head_on_a_frozen_encoder(tiny_roberta, data_dir, tokens):
    trainer = trainer_for(config(tiny_roberta, data_dir), tokens)  # 6 steps: 3 encoder, 3 head
    results, at_boundary = [], None
    for result in trainer.checkpoints():
        results.append(result)
        if result.step == trainer.plan.encoder_steps:
            at_boundary = state(trainer.model.encoder), state(trainer.loss), state(trainer.model.head)
    assert [(r.step, r.stage) for r in results] == [(2, ENCODER), (3, ENCODER), (4, HEAD), (6, HEAD)]
    assert [set(r.loss_parts) for r in results] == [{"dml"}, {"dml"}, {"ce"}, {"ce"}]  # DML alone, then CCE alone
    encoder, proxies, head = at_boundary
    assert same(state(trainer.model.encoder), encoder) and same(state(trainer.loss), proxies)
    assert not same(state(trainer.model.head), head)
    assert not any(p.requires_grad for p in trainer.model.encoder.parameters())


def test_stage_1_moves_the_encoder_and_the_proxies_but_not_the_head(tiny_roberta, data_dir, tokens):
    trainer = trainer_for(config(tiny_roberta, data_dir), tokens)
    encoder, proxies, head = state(trainer.model.encoder), state(trainer.loss), state(trainer.model.head)
    trainer.train_steps(trainer.plan.encoder_steps)
    assert trainer.stage == ENCODER
    assert not same(state(trainer.model.encoder), encoder) and not same(state(trainer.loss), proxies)
    assert same(state(trainer.model.head), head)  # no CCE in stage 1: the head waits for stage 2


def test_proxy_inference_scores_stage_1s_encoder_and_stage_2_changes_nothing_it_uses(tiny_roberta, data_dir, tokens):
    for loss in ("proxy_anchor", "supcon"):  # learned proxies; class centers
        trainer = trainer_for(config(tiny_roberta, data_dir, f"loss.name={loss}", "inference.mode=proxy"), tokens)
        results = list(trainer.checkpoints())
        boundary = next(r for r in results if r.step == trainer.plan.encoder_steps)
        assert boundary.stage == ENCODER and results[-1].stage == HEAD
        assert results[-1].dev == boundary.dev  # the frozen encoder and proxies score dev as they did


def test_stage_1_dev_is_scored_by_proxies_while_the_head_is_untrained(tiny_roberta, data_dir, tokens):
    trainer = trainer_for(config(tiny_roberta, data_dir, "loss.name=supcon"), tokens)  # inference.mode=head
    first = next(trainer.checkpoints())
    assert first.stage == ENCODER and first.dev == trainer.evaluate(trainer.draw.dev, mode="proxy")
    assert trainer.evaluate(trainer.draw.dev) == trainer.evaluate(trainer.draw.dev, mode="head")


def test_restore_best_chooses_among_evaluations_with_a_trained_head(tiny_roberta, data_dir, tokens):
    trainer = trainer_for(config(tiny_roberta, data_dir, "train.restore_best=true", "inference.mode=mixed"), tokens)
    result = trainer.fit(evaluate_test=False)
    assert trainer.best[0].stage == HEAD and result.final_step in (4, 6)


# ---------------------------------------------------------------- the logistic head


def test_a_logistic_head_is_the_regression_as_a_linear_head(tiny_roberta, data_dir, tokens):
    trainer = trainer_for(config(tiny_roberta, data_dir, "loss.name=supcon", "head.fit=logistic"), tokens)
    results = list(trainer.checkpoints())
    assert [(r.step, r.stage) for r in results] == [(2, ENCODER), (4, ENCODER), (6, HEAD)]  # no steps of its own
    assert set(results[-1].loss_parts) == {"dml", "ce"}  # the last steps' DML and the regression's cross-entropy
    fit = trainer.head_fit
    assert isinstance(fit, LogisticHeadFit)
    out = trainer.outputs(trainer.draw.dev)
    probs = out.logits.softmax(1).numpy()
    assert np.allclose(probs, fit.regression.predict_proba(out.embeddings.numpy()), atol=1e-5)
    assert np.array_equal(out.logits.argmax(1).numpy(), fit.regression.predict(out.embeddings.numpy()))


@pytest.mark.parametrize("classes", [2, 4])
def test_the_logistic_heads_probabilities_are_the_regressions(classes):
    generator = np.random.default_rng(0)
    labels = np.repeat(np.arange(classes), 12)
    x = generator.normal(size=(len(labels), 8)) + labels[:, None]
    model = nn.Module()
    model.head = nn.Linear(8, classes)
    cfg = build_config()
    fit = LogisticHeadFit(
        model, torch.tensor(x, dtype=torch.float32), np.arange(len(labels)), torch.tensor(labels), cfg, 0
    )
    with torch.no_grad():
        probs = model.head(torch.tensor(x, dtype=torch.float32)).softmax(1).numpy()
    assert np.allclose(probs, fit.regression.predict_proba(x), atol=1e-5)
    assert fit.fit_parts["ce"] > 0


def test_a_logistic_head_leaves_the_encoder_as_stage_1_left_it(tiny_roberta, data_dir, tokens):
    trainer = trainer_for(config(tiny_roberta, data_dir, "head.fit=logistic"), tokens)
    trainer.train_steps(trainer.total_steps)
    encoder, proxies = state(trainer.model.encoder), state(trainer.loss)
    trainer._start_head()
    assert same(state(trainer.model.encoder), encoder) and same(state(trainer.loss), proxies)


# ---------------------------------------------------------------- where a joint run's head starts


def joint(tiny_roberta, data_dir, *sets: str):
    return config(tiny_roberta, data_dir, "train.schedule=joint", "loss.name=none", *sets)


def test_a_probed_head_starts_as_the_regression_on_the_pretrained_encoder(tiny_roberta, data_dir, tokens):
    from sklearn.linear_model import LogisticRegression

    probed = trainer_for(joint(tiny_roberta, data_dir, "head.init=probe"), tokens)
    plain = trainer_for(joint(tiny_roberta, data_dir, "head.init=random"), tokens)
    assert same(state(probed.model.encoder), state(plain.model.encoder))  # the probe only sets the head
    assert not same(state(probed.model.head), state(plain.model.head))
    train = probed.outputs(probed.draw.train)  # the encoder as pre-trained: no step taken yet
    regression = LogisticRegression(max_iter=1000).fit(train.embeddings.numpy(), train.labels)
    dev = probed.outputs(probed.draw.dev)
    assert np.allclose(dev.logits.softmax(1).numpy(), regression.predict_proba(dev.embeddings.numpy()), atol=1e-5)
    assert probed.step == 0
    probed.fit(evaluate_test=False)  # and fine-tuning goes on from there
    assert probed.step == probed.total_steps


def test_a_two_stage_run_leaves_its_head_to_stage_2(tiny_roberta, data_dir, tokens):
    """head.init is a joint run's: a two-stage run's head is fitted after stage 1, whatever it started as."""
    probed = trainer_for(config(tiny_roberta, data_dir, "head.init=probe"), tokens)
    plain = trainer_for(config(tiny_roberta, data_dir, "head.init=random"), tokens)
    assert same(state(probed.model), state(plain.model))
