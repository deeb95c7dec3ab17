"""The training loop on real SST-2 draws: history, reproducibility, failures and the real MiniLM."""

from __future__ import annotations

import itertools
import json
import math
import time

import numpy as np
import pytest
import torch

from tunedml.config import build_config
from tunedml.data import Draw, load_corpus, tokenize
from tunedml.errors import ConfigError, DataError, NonFiniteLossError
from tunedml.evaluate import class_centers
from tunedml.model import load_tokenizer
from tunedml.sampling import has_positive_pair, without_positive
from tunedml.train import FitResult, Trainer, draw_for, pick_device, run_training


@pytest.fixture(scope="module")
def tokens(data_dir, tiny_roberta):
    return tokenize(load_corpus("sst2", data_dir), load_tokenizer(tiny_roberta), max_length=48)


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


def small_draw(cfg, tokens) -> Draw:
    """The configured kshot draw with the test set cut to 200 examples."""
    d = draw_for(cfg, tokens)
    return Draw(d.train, d.dev, d.test[:200])


def fit(cfg, tokens, **kwargs) -> FitResult:
    return Trainer(cfg, tokens, small_draw(cfg, tokens)).fit(**kwargs)


def in_unit_interval(metrics: dict[str, float]) -> bool:
    return set(metrics) == {"accuracy", "macro_f1", "collapsed"} and all(0.0 <= v <= 1.0 for v in metrics.values())


# ---------------------------------------------------------------- a run


def test_fit_records_one_result_per_epoch(tiny_roberta, data_dir, tokens):
    cfg = config(tiny_roberta, data_dir, "train.epochs=3", "loss.name=supcon")
    seen = []
    result = fit(cfg, tokens, callback=seen.append)
    steps = [e.step for e in result.history]
    assert steps == [2, 4, 6] and [e.epoch for e in result.history] == [1, 2, 3]  # k=8, batch 8: 2 steps a pass
    assert seen == result.history
    for e in result.history:
        assert math.isfinite(e.train_loss) and set(e.loss_parts) == {"ce", "dml"}
        assert in_unit_interval(e.dev) and e.seconds > 0
    assert result.dev == result.history[-1].dev and result.final_step == 6
    assert in_unit_interval(result.test)


def test_fit_without_test(tiny_roberta, data_dir, tokens):
    cfg = config(tiny_roberta, data_dir, "train.epochs=1")
    trainer = Trainer(cfg, tokens, small_draw(cfg, tokens))
    result = trainer.fit(evaluate_test=False)
    assert result.test is None and in_unit_interval(result.dev)
    assert result.dev == trainer.evaluate(trainer.draw.dev)  # the final model's dev score, unchanged since


def test_training_lowers_the_loss_on_its_own_examples(tiny_roberta, data_dir, tokens):
    cfg = config(tiny_roberta, data_dir, "train.epochs=8", "model.dropout=0", "train.warmup_ratio=0")
    history = fit(cfg, tokens).history
    assert history[-1].train_loss < history[0].train_loss


def test_same_seed_same_run(tiny_roberta, data_dir, tokens):
    cfg = config(tiny_roberta, data_dir, "loss.name=proxy_anchor")
    a, b = fit(cfg, tokens), fit(cfg, tokens)
    assert [e.train_loss for e in a.history] == [e.train_loss for e in b.history]
    assert [e.loss_parts for e in a.history] == [e.loss_parts for e in b.history]
    assert [e.dev for e in a.history] == [e.dev for e in b.history]
    assert a.test == b.test


def test_another_seed_another_run(tiny_roberta, data_dir, tokens):
    a = fit(config(tiny_roberta, data_dir, "train.epochs=1"), tokens)
    b = fit(config(tiny_roberta, data_dir, "train.epochs=1", "train.seed=1"), tokens)
    assert a.history[0].train_loss != b.history[0].train_loss


@pytest.mark.parametrize(
    "loss, mode", [("proxy_nca", "proxy"), ("supcon", "proxy"), ("none", "proxy"), ("proxy_anchor", "mixed")]
)
def test_inference_modes_score_dev_and_test(tiny_roberta, data_dir, tokens, loss, mode):
    """Each mode's test accuracy is what its rule gives on the final model's outputs, computed here
    apart: the head's argmax, the nearest proxy (or class center of the training draw) by cosine,
    or the mean of the head's and the scaled cosines' softmax."""
    cfg = config(tiny_roberta, data_dir, "train.epochs=1", f"loss.name={loss}", f"inference.mode={mode}")
    trainer = Trainer(cfg, tokens, small_draw(cfg, tokens))
    result = trainer.fit()
    assert in_unit_interval(result.dev) and in_unit_interval(result.test)
    out = trainer.outputs(trainer.draw.test)
    learned = trainer.loss.dml.proxies() if trainer.loss.dml is not None else None
    if learned is not None:
        targets = learned.detach().cpu()
    else:
        train = trainer.outputs(trainer.draw.train)
        targets = class_centers(train, tokens.corpus.num_classes)
    cosine = torch.nn.functional.normalize(out.embeddings, dim=1) @ torch.nn.functional.normalize(targets, dim=1).t()
    if mode == "proxy":
        predicted = cosine.argmax(1)
    else:
        w, scale = cfg.inference.mix_weight, cfg.inference.proxy_scale
        predicted = (w * out.logits.softmax(1) + (1 - w) * (scale * cosine).softmax(1)).argmax(1)
    expected = float((predicted.numpy() == out.labels).mean())
    assert abs(result.test["accuracy"] - expected) <= 1 / len(out.labels) + 1e-9  # a near-tie may fall either way


def test_run_training_reads_draws_and_trains(tiny_roberta, data_dir):
    cfg = config(tiny_roberta, data_dir, "train.epochs=1", "data.dataset=trec", "data.k=4", "data.max_length=32")
    result = run_training(cfg, evaluate_test=False)
    assert len(result.history) == 1 and in_unit_interval(result.dev)
    # trec has 6 classes; k=4 per class, batch 8: 24 examples are 3 steps a pass
    assert result.final_step == 3 and result.history[0].step == 3 and result.test is None


def test_adamw_takes_the_fused_kernel_where_the_device_has_one_and_foreach_elsewhere(
    tiny_roberta, data_dir, tokens, monkeypatch
):
    import tunedml.train as train
    from tunedml.train import adamw_impl

    cfg = config(tiny_roberta, data_dir, "train.epochs=1")
    fused = Trainer(cfg, tokens, draw_for(cfg, tokens))
    assert fused.optimizer.defaults["fused"] is True and not fused.optimizer.defaults["foreach"]
    fused.fit(evaluate_test=False)
    monkeypatch.setattr(train, "ADAMW_IMPL", {"foreach": True})
    foreach = Trainer(cfg, tokens, draw_for(cfg, tokens))
    assert foreach.optimizer.defaults["foreach"] is True and not foreach.optimizer.defaults["fused"]
    foreach.fit(evaluate_test=False)
    start = dict(Trainer(cfg, tokens, draw_for(cfg, tokens)).model.named_parameters())
    same_update = 0
    for (name, a), (_, b) in zip(fused.model.named_parameters(), foreach.model.named_parameters()):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), name  # the same AdamW step, up to rounding
        same_update += not torch.equal(a, start[name])
    assert same_update > 30  # and it did train: the encoder's tensors moved from their initial values
    monkeypatch.setattr(train, "ADAMW_IMPL", {"fused": True})
    assert adamw_impl([torch.nn.Parameter(torch.empty(2, device="meta"))]) == {"foreach": True}


def test_timing_records_where_a_run_spends_its_time_only_when_asked(tiny_roberta, data_dir, tmp_path, monkeypatch):
    from tunedml import timing

    cfg = config(tiny_roberta, data_dir, "data.max_length=32")  # 2 epochs of 2 steps, dev after each
    run_training(cfg)
    assert not list(tmp_path.iterdir())  # off by default: nothing written anywhere we look
    path = tmp_path / "timing.jsonl"
    monkeypatch.setenv(timing.ENV, str(path))
    start = time.perf_counter()
    result = run_training(cfg)
    wall = time.perf_counter() - start
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    # tokenization, then one line per dev evaluation, then the test evaluation
    assert len(result.history) == 2 and len(lines) == 1 + len(result.history) + 1
    assert set(lines[0]["seconds"]) == {"tokenize"} and set(lines[-1]["seconds"]) == {"test"}
    seconds = timing.read(str(path))
    assert set(seconds) == set(timing.PHASES)
    for phase in ("tokenize", "setup", "batches", "forward_backward", "optimizer", "evaluation", "test"):
        assert seconds[phase] > 0, phase
    assert sum(seconds.values()) <= wall  # parts of the run's wall time, none counted twice


def history(result: FitResult) -> list[tuple]:
    return [(e.step, e.train_loss, e.loss_parts, e.dev) for e in result.history]


def test_trainers_in_lockstep_give_what_each_gives_alone(tiny_roberta, data_dir, tokens):
    # search.py's --repeats steps one trainer per repeat evaluation by evaluation; dropout and the proxies'
    # initialisation draw from torch's generator, which each trainer must keep to itself
    configs = [
        config(
            tiny_roberta, data_dir, "loss.name=proxy_anchor", "model.dropout=0.3", f"data.seed={r}", f"train.seed={r}"
        )
        for r in range(2)
    ]
    alone = [fit(c, tokens) for c in configs]
    trainers = [Trainer(c, tokens, small_draw(c, tokens)) for c in configs]
    steps = list(zip(*(t.checkpoints() for t in trainers)))  # as search.trainable steps them
    for r, trainer in enumerate(trainers):
        assert history(FitResult(history=[step[r] for step in steps])) == history(alone[r])
        assert trainer.evaluate(trainer.draw.test) == alone[r].test


def test_a_trainer_leaves_the_global_random_state_alone(tiny_roberta, data_dir, tokens):
    cfg = config(tiny_roberta, data_dir, "train.epochs=1", "loss.name=proxy_anchor")
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    Trainer(cfg, tokens, small_draw(cfg, tokens)).fit(evaluate_test=False)
    assert torch.equal(torch.rand(3), expected)


# ---------------------------------------------------------------- batches: the default path, m per class


def test_the_default_run_takes_the_batches_and_steps_it_took_before(tiny_roberta, data_dir, tokens):
    # data.sampler=random with train.schedule=joint must not move any recorded result: its batches are
    # TokenizedCorpus.train_batches' with the same generator, each stepped by the joint loss
    cfg = config(tiny_roberta, data_dir, "loss.name=proxy_anchor", "model.dropout=0.3")
    assert (cfg.data.sampler, cfg.train.schedule) == ("random", "joint")
    trainer = Trainer(cfg, tokens, small_draw(cfg, tokens))
    loss, parts = trainer.train_steps(5)  # 2.5 passes of 2 steps
    reference = Trainer(cfg, tokens, small_draw(cfg, tokens))
    rng = np.random.default_rng(cfg.train.seed)
    passes = itertools.chain.from_iterable(tokens.train_batches(reference.draw.train, 8, rng) for _ in range(3))
    sums, seen = {"total": 0.0}, 0
    with reference.own_rng():
        reference.model.train()
        for batch in itertools.islice(passes, 5):
            reference.step += 1
            step_loss, step_parts = reference._step(batch)
            for k, v in {"total": step_loss, **step_parts}.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(batch["labels"])
            seen += len(batch["labels"])
    assert loss == sums.pop("total") / seen and parts == {k: v / seen for k, v in sums.items()}
    for name, module in (("model", trainer.model), ("loss", trainer.loss)):
        other = dict((("model", reference.model), ("loss", reference.loss)))[name].state_dict()
        assert all(torch.equal(v, other[k]) for k, v in module.state_dict().items()), name


def test_m_per_class_batches_give_every_class_positives(tiny_roberta, data_dir):
    trec = tokenize(load_corpus("trec", data_dir), load_tokenizer(tiny_roberta), max_length=32)
    cfg = config(
        tiny_roberta,
        data_dir,
        "data.dataset=trec",
        "data.k=4",
        "train.batch_size=12",
        "data.sampler=m_per_class",
        "data.m_per_class=2",
        "loss.name=supcon",
    )  # 24 examples: 2 steps a pass, 2 passes
    trainer = Trainer(cfg, trec, small_draw(cfg, trec))
    with trainer.own_rng():
        batches = [next(trainer._batches) for _ in range(6)]
    for batch in batches:  # 12 = 2 examples of each of the 6 classes
        assert np.bincount(trec.corpus.labels[batch], minlength=6).tolist() == [2] * 6
    results = list(Trainer(cfg, trec, small_draw(cfg, trec)).checkpoints())
    assert [(r.batches_without_positives, r.examples_without_positive) for r in results] == [(0, 0), (0, 0)]


def test_each_evaluation_counts_the_batches_without_a_positive_pair(tiny_roberta, data_dir):
    trec = tokenize(load_corpus("trec", data_dir), load_tokenizer(tiny_roberta), max_length=32)
    cfg = config(
        tiny_roberta,
        data_dir,
        "data.dataset=trec",
        "data.k=2",
        "train.batch_size=3",
        "loss.name=supcon",
        "train.epochs=3",
    )  # 12 examples: 4 steps a pass, dev after each
    trainer = Trainer(cfg, trec, small_draw(cfg, trec))
    counted = [(r.batches_without_positives, r.examples_without_positive) for r in trainer.checkpoints()]
    replay = trainer.sampler(np.random.default_rng(cfg.train.seed))  # the same random batches again
    labels = [[trec.corpus.labels[next(replay)] for _ in range(4)] for _ in range(3)]
    expected = [
        (sum(not has_positive_pair(b) for b in evaluation), sum(without_positive(b) for b in evaluation))
        for evaluation in labels
    ]
    assert counted == expected and sum(c[0] for c in counted) > 0, "pick settings where random batches miss positives"


def test_batches_a_draw_cannot_give_are_refused_before_the_model_loads(tiny_roberta, data_dir, tokens):
    cfg = config(tiny_roberta, data_dir, "data.sampler=m_per_class", "train.batch_size=16", "data.m_per_class=4")
    with pytest.raises(DataError, match="needs 4 classes per batch, but the draw has 2"):
        Trainer(cfg, tokens, small_draw(cfg, tokens))


# ---------------------------------------------------------------- stability: collapse, best epoch, layers


def test_a_run_predicting_one_class_is_flagged_collapsed(tiny_roberta, data_dir, tokens):
    cfg = config(tiny_roberta, data_dir, "train.epochs=1")
    trainer = Trainer(cfg, tokens, small_draw(cfg, tokens))
    with torch.no_grad():  # a head that always says class 1
        trainer.model.head.weight.zero_()
        trainer.model.head.bias.copy_(torch.tensor([0.0, 5.0]))
    dev = trainer.evaluate(trainer.draw.dev)
    assert dev["collapsed"] == 1.0 and dev["accuracy"] == 0.5
    centers = class_centers(trainer.outputs(trainer.draw.dev), 2)
    with torch.no_grad():  # a head that picks the nearest dev class center predicts both classes
        trainer.model.head.weight.copy_(centers)
        trainer.model.head.bias.copy_(-0.5 * (centers**2).sum(1))
    assert trainer.evaluate(trainer.draw.dev)["collapsed"] == 0.0


def test_restore_best_ends_with_the_best_dev_epoch(tiny_roberta, data_dir, tokens):
    sets = ["train.epochs=6", "train.lr=3e-3", "train.warmup_ratio=0", "data.seed=3"]
    last = fit(config(tiny_roberta, data_dir, *sets), tokens)
    best = fit(config(tiny_roberta, data_dir, *sets, "train.restore_best=true"), tokens)
    assert history(best) == history(last)  # the stream of evaluations (the search's scheduler sees it) is unchanged
    key = [(e.dev["accuracy"], e.dev["macro_f1"]) for e in best.history]
    chosen = key.index(max(key)) + 1  # the first of the best
    assert key[chosen - 1] > key[-1], "pick settings whose last epoch is worse than the best, or this proves nothing"
    assert best.final_step == best.history[chosen - 1].step and best.dev == best.history[chosen - 1].dev
    assert best.dev["accuracy"] > last.dev["accuracy"] and best.test != last.test


def test_restored_weights_score_the_best_epochs_dev_again(tiny_roberta, data_dir, tokens):
    cfg = config(
        tiny_roberta,
        data_dir,
        "train.epochs=6",
        "train.lr=3e-3",
        "train.warmup_ratio=0",
        "data.seed=3",
        "train.restore_best=true",
    )
    trainer = Trainer(cfg, tokens, small_draw(cfg, tokens))
    result = trainer.fit(evaluate_test=False)
    chosen = next(e for e in result.history if e.step == result.final_step)
    assert trainer.evaluate(trainer.draw.dev) == result.dev == chosen.dev


def test_reinit_layers_redraws_only_the_top_layers(tiny_roberta, data_dir, tokens):
    from tunedml.model import build_model

    torch.manual_seed(0)
    pretrained = build_model(tiny_roberta, 2)
    cfg = config(tiny_roberta, data_dir, "model.reinit_layers=1")
    model = Trainer(cfg, tokens, small_draw(cfg, tokens)).model
    before, after = pretrained.encoder.encoder.layer, model.encoder.encoder.layer
    assert torch.equal(before[0].attention.self.query.weight, after[0].attention.self.query.weight)
    assert not torch.equal(before[1].attention.self.query.weight, after[1].attention.self.query.weight)
    assert (
        torch.equal(after[1].output.LayerNorm.weight, torch.ones(32))
        and float(after[1].output.dense.bias.detach().abs().max()) == 0
    )
    with pytest.raises(ConfigError, match=r"model.reinit_layers=3 but the encoder has 2 layers \(encoder.layer\)"):
        Trainer(config(tiny_roberta, data_dir, "model.reinit_layers=3"), tokens, small_draw(cfg, tokens))


def test_layer_decay_gives_lower_layers_lower_rates(tiny_roberta, data_dir, tokens):
    cfg = config(tiny_roberta, data_dir, "train.layer_decay=0.5", "train.lr=1e-3")
    trainer = Trainer(cfg, tokens, small_draw(cfg, tokens))
    rate = {id(p): g["initial_lr"] for g in trainer.optimizer.param_groups for p in g["params"]}
    model = trainer.model
    assert rate[id(model.head.weight)] == 1e-3
    assert rate[id(model.encoder.encoder.layer[1].output.dense.weight)] == 5e-4
    assert rate[id(model.encoder.encoder.layer[0].output.dense.weight)] == 2.5e-4
    assert rate[id(model.encoder.embeddings.word_embeddings.weight)] == 1.25e-4
    assert set(rate) == {id(p) for p in model.parameters()}
    decay = {id(p): g["weight_decay"] for g in trainer.optimizer.param_groups for p in g["params"]}
    assert decay[id(model.encoder.encoder.layer[0].output.LayerNorm.weight)] == 0.0
    assert decay[id(model.encoder.encoder.layer[0].output.dense.weight)] == cfg.train.weight_decay


# ---------------------------------------------------------------- failures


def test_nan_proxies_stop_training_with_the_step_and_loss_parts(tiny_roberta, data_dir, tokens):
    cfg = config(tiny_roberta, data_dir, "loss.name=proxy_anchor")
    trainer = Trainer(cfg, tokens, small_draw(cfg, tokens))
    trainer.train_epoch()
    with torch.no_grad():
        trainer.loss.dml.proxies().fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 3: ce=[\d.]+, dml=nan") as info:
        trainer.train_epoch()
    assert info.value.step == 3  # k=8, batch 8: 2 steps a pass, the third step is the first with NaN proxies
    assert set(info.value.parts) == {"ce", "dml"}
    assert math.isfinite(info.value.parts["ce"]) and math.isnan(info.value.parts["dml"])


def test_unknown_device_is_a_config_error():
    assert pick_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="train.device: unknown device 'tpu'; valid: auto, cpu, cuda, cuda:N"):
        pick_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_a_gpu_is_a_config_error():
    with pytest.raises(ConfigError, match="no CUDA device is available"):
        pick_device("cuda")


# ---------------------------------------------------------------- the optimizer


def test_proxies_have_their_own_learning_rate_and_no_decay(tiny_roberta, data_dir, tokens):
    cfg = config(
        tiny_roberta,
        data_dir,
        "loss.name=soft_triple",
        "train.proxy_lr=0.05",
        "train.lr=2e-5",
        "train.weight_decay=0.1",
    )
    trainer = Trainer(cfg, tokens, small_draw(cfg, tokens))
    proxies = trainer.loss.dml.loss.fc
    groups = trainer.optimizer.param_groups
    [proxy_group] = [g for g in groups if any(p is proxies for p in g["params"])]
    assert proxy_group["params"] == [proxies]
    assert proxy_group["initial_lr"] == 0.05 and proxy_group["weight_decay"] == 0.0
    model_groups = [g for g in groups if g is not proxy_group]
    assert {g["initial_lr"] for g in model_groups} == {2e-5}
    assert sorted(g["weight_decay"] for g in model_groups) == [0.0, 0.1]  # biases and norms: no decay
    optimized = {id(p) for g in model_groups for p in g["params"]}
    assert optimized == {id(p) for p in trainer.model.parameters()}


def test_huge_proxy_gradients_do_not_shrink_the_encoder_update(tiny_roberta, data_dir, tokens):
    cfg = config(tiny_roberta, data_dir, "loss.name=proxy_anchor", "train.max_grad_norm=1.0")
    trainer = Trainer(cfg, tokens, small_draw(cfg, tokens))
    generator = torch.Generator().manual_seed(0)
    for p in trainer.model.parameters():
        p.grad = torch.randn(p.shape, generator=generator)
    alone = [torch.nn.Parameter(p.detach().clone()) for p in trainer.model_parameters]
    for copy, p in zip(alone, trainer.model_parameters):
        copy.grad = p.grad.clone()
    torch.nn.utils.clip_grad_norm_(alone, 1.0)  # what clipping gives without any proxies
    proxies = trainer.loss.dml.proxies()
    proxies.grad = torch.full_like(proxies, 1e6)
    trainer.clip_gradients()
    for p, copy in zip(trainer.model_parameters, alone):
        assert torch.equal(p.grad, copy.grad)
    assert float(proxies.grad.norm()) == pytest.approx(1.0, rel=1e-4)  # clipped on their own


def test_compile_wraps_the_encoder_in_place(tiny_roberta, data_dir, tokens):
    """train.compile compiles the encoder's forward in place (lazily, at its first call): the module,
    its parameter names (layer decay, restore_best and saved models use them) and the head stay."""
    plain = Trainer(config(tiny_roberta, data_dir), tokens, small_draw(config(tiny_roberta, data_dir), tokens))
    cfg = config(tiny_roberta, data_dir, "train.compile=true")
    compiled = Trainer(cfg, tokens, small_draw(cfg, tokens))
    assert compiled.model.encoder._compiled_call_impl is not None and plain.model.encoder._compiled_call_impl is None
    assert [n for n, _ in compiled.model.named_parameters()] == [n for n, _ in plain.model.named_parameters()]


def test_plain_cce_has_no_proxy_group(tiny_roberta, data_dir, tokens):
    cfg = config(tiny_roberta, data_dir)
    trainer = Trainer(cfg, tokens, small_draw(cfg, tokens))
    assert len(trainer.optimizer.param_groups) == 2


# ---------------------------------------------------------------- the real model


@pytest.mark.slow  # the real MiniLM: ~10 s
def test_embedded_minilm_trains(data_dir):
    cfg = build_config(
        sets=[
            f"data.data_dir={data_dir}",
            "data.k=2",
            "data.max_length=64",
            "train.epochs=1",
            "train.batch_size=4",
            "train.threads=2",
            "loss.name=proxy_anchor",
        ]
    )
    assert cfg.model.name == "minilm"
    tokens = tokenize(load_corpus("sst2", data_dir), load_tokenizer("minilm"), cfg.data.max_length)
    d = draw_for(cfg, tokens)
    trainer = Trainer(cfg, tokens, Draw(d.train, d.dev, d.test[:32]))
    assert trainer.model.hidden_size == 384
    result = trainer.fit()
    assert len(result.history) == 1 and math.isfinite(result.history[0].train_loss)
    assert in_unit_interval(result.dev) and in_unit_interval(result.test)


@pytest.mark.slow  # the real MiniLM, 40 steps: ~30 s
def test_embedded_minilm_beats_the_majority_class_on_subj(data_dir):
    """A short real run learns: the pretrained encoder, fine-tuned on 16 examples per class, is well
    above the majority-class rate on SUBJ's test split (a margin of 10 points: draws vary by a few)."""
    cfg = build_config(
        sets=[
            f"data.data_dir={data_dir}",
            "data.dataset=subj",
            "data.k=16",
            "data.max_length=64",
            "train.steps=40",
            "train.eval_every=40",
            "train.batch_size=16",
            "train.lr=1e-4",
            "train.threads=2",
            "loss.name=supcon",
            "inference.mode=mixed",
        ]
    )
    tokens = tokenize(load_corpus("subj", data_dir), load_tokenizer("minilm"), cfg.data.max_length)
    d = draw_for(cfg, tokens)
    test = d.test[:: max(1, len(d.test) // 400)]  # spread over the split (it may be stored by class)
    result = Trainer(cfg, tokens, Draw(d.train, d.dev, test)).fit()
    labels = tokens.corpus.labels[test]
    majority = np.bincount(labels).max() / len(labels)
    assert result.test["accuracy"] >= majority + 0.10, (result.test, majority)
    assert not result.test["collapsed"]


def test_a_finished_trainer_is_freed_at_once(tiny_roberta, data_dir, tokens):
    """No reference cycle holds a trainer: a Ray worker reused for trial after trial (or a benchmark
    training run after run) frees each model when its trainer goes, not at some later garbage
    collection (a cycle's tensors are invisible to the collector's thresholds, and memory grew by
    gigabytes over a benchmark before)."""
    import gc
    import weakref

    cfg = config(tiny_roberta, data_dir, "train.epochs=1", "loss.name=proxy_anchor", "train.restore_best=true")
    trainer = Trainer(cfg, tokens, small_draw(cfg, tokens))
    trainer.fit(evaluate_test=False)
    gone = weakref.ref(trainer)
    gc.disable()
    try:
        del trainer
        assert gone() is None
    finally:
        gc.enable()
