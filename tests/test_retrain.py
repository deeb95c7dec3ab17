"""Final evaluation: the paired statistics, the shared draws, retraining on real SST-2 draws, saved
models, and `tunedml retrain` from MLflow records or files."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tunedml.config import build_config
from tunedml.data import draw as make_draw
from tunedml.data import load_corpus
from tunedml.errors import ConfigError
from tunedml.retrain import (
    FRESH_OFFSET,
    Candidate,
    Comparison,
    ConfigResult,
    DrawResult,
    RetrainOptions,
    align_baseline,
    apply_overrides,
    bootstrap_interval,
    candidate_from_file,
    cce_defaults,
    compare,
    draw_configs,
    load_model,
    paired_differences,
    paired_p_values,
    retrain,
    save_model,
    t_interval,
)
from tunedml.train import prepare_tokens

SPACES = os.path.join(os.path.dirname(__file__), "..", "search_spaces")


# ----------------------------------------------------------------- statistics


def test_equal_differences_collapse_the_interval():
    ci = bootstrap_interval([1.5, 1.5, 1.5, 1.5])
    assert (ci.mean, ci.low, ci.high) == (1.5, 1.5, 1.5)


def test_one_draw_collapses_the_interval():
    ci = bootstrap_interval([-2.0])
    assert (ci.mean, ci.low, ci.high) == (-2.0, -2.0, -2.0)


def test_two_values_hand_computed():
    # resampled means of [0, 1] are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4: the 2.5% and 97.5%
    # percentiles are the extremes
    ci = bootstrap_interval([0.0, 1.0], resamples=10_000, seed=3)
    assert (ci.mean, ci.low, ci.high) == (0.5, 0.0, 1.0)


def test_interval_matches_the_exact_bootstrap_distribution():
    values = np.array([-1.0, 0.5, 2.0, 4.0])
    exact = np.array([values[list(idx)].mean() for idx in itertools.product(range(4), repeat=4)])
    low, high = np.quantile(exact, [0.025, 0.975])
    ci = bootstrap_interval(values, resamples=20_000, seed=0)
    assert ci.mean == pytest.approx(1.375)
    assert ci.low == pytest.approx(low, abs=0.2) and ci.high == pytest.approx(high, abs=0.2)
    assert ci.low < ci.mean < ci.high


def test_interval_is_seeded():
    values = [0.3, -1.2, 2.5, 0.9, 1.1]
    assert bootstrap_interval(values, seed=7) == bootstrap_interval(values, seed=7)
    narrower = bootstrap_interval(values, confidence=0.5)
    wider = bootstrap_interval(values, confidence=0.99)
    assert wider.low <= narrower.low <= narrower.high <= wider.high


def test_t_interval_hand_computed():
    values = [-1.0, 0.5, 2.0, 4.0]
    mean = 1.375
    sd = (sum((v - mean) ** 2 for v in values) / 3) ** 0.5
    half = 3.182446305284263 * sd / 4**0.5  # t quantile 0.975 with 3 degrees of freedom, from the tables
    ci = t_interval(values)
    assert (ci.mean, ci.method, ci.n) == (mean, "t", 4)
    assert ci.low == pytest.approx(mean - half, abs=1e-12) and ci.high == pytest.approx(mean + half, abs=1e-12)
    assert t_interval(values, confidence=0.5).high < ci.high


def test_t_interval_is_wider_than_the_bootstrap_at_five_draws():
    values = [0.3, -1.2, 2.5, 0.9, 1.1]
    t, boot = t_interval(values), bootstrap_interval(values)
    assert t.low < boot.low and t.high > boot.high


def test_p_values_are_the_paired_t_test_and_wilcoxon_of_scipy():
    from scipy import stats

    best, base = np.array([0.81, 0.84, 0.79, 0.86, 0.80]), np.array([0.78, 0.80, 0.80, 0.81, 0.76])
    p_t, p_w = paired_p_values(paired_differences(best, base))
    assert p_t == pytest.approx(stats.ttest_rel(best, base).pvalue)
    assert p_w == pytest.approx(stats.wilcoxon(best - base).pvalue)
    assert paired_p_values([0.0, 0.0, 0.0]) == (1.0, 1.0)


def result_of(role: str, test: list[float], dev: list[float] | None = None) -> ConfigResult:
    dev = dev or test
    draws = [
        DrawResult(i, 1000 + i, 1000 + i, None, {"accuracy": t, "macro_f1": t}, {"accuracy": d, "macro_f1": d}, 1.0)
        for i, (t, d) in enumerate(zip(test, dev))
    ]
    return ConfigResult(Candidate(role, {"loss.name": "none"}, "test"), draws)


def test_fewer_than_three_paired_draws_give_no_interval_and_no_p_value():
    c = compare(
        "sst2",
        ["n", "p"],
        "kshot k=16",
        result_of("best", [0.8, 0.9]),
        result_of("baseline", [0.7, 0.7]),
        RetrainOptions(),
    )
    d = c.differences["accuracy"]
    assert d.mean == pytest.approx(15.0) and (d.low, d.high, d.p_t, d.p_wilcoxon) == (None, None, None, None)
    assert not d.exists and not d.significant
    one = compare(
        "sst2", ["n", "p"], "kshot k=16", result_of("best", [0.8]), result_of("baseline", [0.7]), RetrainOptions()
    )
    assert not one.differences["accuracy"].exists and not one.differences["accuracy"].significant


def test_the_default_interval_is_t_and_the_bootstrap_stays_an_option():
    best, base = result_of("best", [0.80, 0.83, 0.79, 0.86]), result_of("baseline", [0.78, 0.80, 0.80, 0.81])
    d = paired_differences(best.scores("accuracy"), base.scores("accuracy"))
    t = compare("sst2", ["n", "p"], "kshot k=16", best, base, RetrainOptions()).differences["accuracy"]
    assert (t.mean, t.low, t.high) == (t_interval(d).mean, t_interval(d).low, t_interval(d).high)
    assert (t.p_t, t.p_wilcoxon) == paired_p_values(d)
    boot = compare("sst2", ["n", "p"], "kshot k=16", best, base, RetrainOptions(interval="bootstrap")).differences[
        "accuracy"
    ]
    assert boot.method == "bootstrap" and (boot.low, boot.high) == (
        bootstrap_interval(d).low,
        bootstrap_interval(d).high,
    )
    with pytest.raises(ConfigError, match="unknown interval 'z'"):
        RetrainOptions(interval="z").validate()


def test_the_saved_and_plotted_draw_is_chosen_on_dev_never_on_test():
    best = result_of("best", test=[0.95, 0.60, 0.70, 0.60], dev=[0.50, 0.75, 0.75, 0.70])
    assert best.top_draw() == 1  # draw 0 has the best test score; draws 1 and 2 tie on dev: the lower index
    c = compare("sst2", ["n", "p"], "kshot k=16", best, result_of("baseline", [0.6] * 4), RetrainOptions())
    assert c.best_draw == 1


def test_paired_differences_are_percentage_points():
    assert paired_differences([0.8, 0.9], [0.7, 0.9]).tolist() == pytest.approx([10.0, 0.0])
    with pytest.raises(ValueError, match="same draws"):
        paired_differences([0.8, 0.9], [0.7])


# ----------------------------------------------------------------- the draws and the baseline


def test_kshot_draws_are_fresh_and_seeded():
    cfgs = draw_configs(build_config(sets=["data.seed=3", "train.seed=5"]), 3)
    assert [(c.data.seed, c.train.seed) for c in cfgs] == [
        (3 + FRESH_OFFSET + i, 5 + FRESH_OFFSET + i) for i in range(3)
    ]


def test_kfold_draws_cover_every_fold_per_seed():
    cfgs = draw_configs(build_config(sets=["data.protocol=kfold", "data.folds=3"]), 2)
    assert [c.data.fold for c in cfgs] == [0, 1, 2, 0, 1, 2]
    assert len(draw_configs(build_config(sets=["data.protocol=kfold", "data.folds=4"]), None)) == 4


def test_every_kfold_draw_is_an_independent_training(data_dir):
    """The paired statistics treat draws as independent trainings: no two folds may share a model.

    (Until the honest-kfold fix every fold of one seed trained on the same sample with the same
    seed: one model per side scored on five test folds, its test-fold noise taken for training variance.)
    """
    cfg = build_config(
        sets=[
            "data.protocol=kfold",
            "data.folds=5",
            "data.sample_size=16",
            "data.dataset=mr",
            f"data.data_dir={data_dir}",
        ]
    )
    cfgs = draw_configs(cfg, None)
    assert len({(c.data.seed, c.train.seed) for c in cfgs}) == len(cfgs) == 5
    corpus = load_corpus("mr", data_dir)
    samples = [make_draw(corpus, "kfold", sample_size=16, folds=5, fold=c.data.fold, seed=c.data.seed) for c in cfgs]
    assert len({tuple(sorted(d.train)) for d in samples}) == 5  # five different training samples
    assert len({tuple(sorted(d.test)) for d in samples}) == 5  # each scored on its own test fold
    for d in samples:  # still never trained on any test fold
        assert not set(d.train) & set().union(*(set(e.test) for e in samples))


def test_baseline_takes_the_data_encoder_and_seeds_of_the_best_config():
    best = Candidate(
        "best",
        build_config(
            sets=["loss.name=proxy_anchor", "data.k=8", "data.seed=4", "model.name=x", "train.seed=2", "train.lr=5e-4"]
        ).to_flat(),
        "test",
    )
    base = align_baseline(best, cce_defaults({"data.k": 32, "train.epochs": 3}))
    assert (base.config["data.k"], base.config["data.seed"], base.config["model.name"]) == (8, 4, "x")
    assert (base.config["train.seed"], base.config["train.epochs"], base.config["train.lr"]) == (2, 3, 1e-4)
    assert base.loss == "none"
    pairs = zip(draw_configs(best.run_config, 2), draw_configs(base.run_config, 2))
    assert all(a.data == b.data and a.train.seed == b.train.seed for a, b in pairs)


def test_space_file_as_baseline_uses_recorded_values_for_searched_keys():
    cce = os.path.join(SPACES, "cce.yaml")
    plain = candidate_from_file("baseline", cce, {})
    assert plain.loss == "none" and plain.config["train.lr"] == 1e-4 and "at defaults" in plain.source
    recorded = {**plain.config, "train.lr": 1.5e-4, "train.epochs": 7}
    tuned = candidate_from_file("baseline", cce, {"train.epochs": 2}, recorded, "MLflow run abc")
    assert tuned.config["train.lr"] == 1.5e-4 and tuned.config["train.epochs"] == 2
    assert "from MLflow run abc" in tuned.source


def test_a_space_that_searches_the_loss_is_no_baseline():
    with pytest.raises(ConfigError, match="loss.name is searched"):
        candidate_from_file("baseline", os.path.join(SPACES, "dml.yaml"), {})


def test_bad_options_are_config_errors():
    for options in (RetrainOptions(seeds=0), RetrainOptions(concurrency=0), RetrainOptions(bootstrap=5)):
        with pytest.raises(ConfigError):
            options.validate()


# ----------------------------------------------------------------- retraining on real draws


def small(tiny_roberta: str, data_dir: str, **extra) -> dict:
    return {
        "model.name": tiny_roberta,
        "data.data_dir": data_dir,
        "data.dataset": "sst2",
        "data.k": 4,
        "data.max_length": 32,
        "train.epochs": 2,
        "train.lr": 1e-3,
        "train.threads": 1,
        **extra,
    }


@pytest.fixture(scope="module")
def pair(tiny_roberta, data_dir):
    overrides = small(tiny_roberta, data_dir)
    best = Candidate(
        "best", apply_overrides({"loss.name": "proxy_anchor", "inference.mode": "mixed"}, overrides, "test"), "test"
    )
    return best, cce_defaults(overrides)


@pytest.fixture(scope="module")
def tokens(pair):
    return prepare_tokens(pair[0].run_config)


@pytest.fixture(scope="module")
def compared(pair, tokens) -> Comparison:
    seen = []
    comparison = retrain(
        tokens,
        *pair,
        RetrainOptions(seeds=2, concurrency=1, keep_model=True),
        on_draw=lambda job, result: seen.append((job.role, result.index)),
    )
    comparison.seen = seen
    return comparison


def test_both_configurations_train_on_the_same_draws(compared, tokens):
    assert sorted(compared.seen) == [("baseline", 0), ("baseline", 1), ("best", 0), ("best", 1)]
    for role in ("best", "baseline"):
        result = compared.result(role)
        assert [d.index for d in result.draws] == [0, 1]
        assert all(
            d.ok and 0 <= d.test["accuracy"] <= 1 and set(d.test) == {"accuracy", "macro_f1", "collapsed"}
            for d in result.draws
        )
    for b, c in zip(compared.best.draws, compared.baseline.draws):
        assert (b.data_seed, b.train_seed) == (c.data_seed, c.train_seed) == (FRESH_OFFSET + b.index,) * 2
    draws = [
        [make_draw(tokens.corpus, "kshot", k=4, seed=d.data_seed).train for d in r.draws]
        for r in (compared.best, compared.baseline)
    ]
    assert all(np.array_equal(a, b) for a, b in zip(*draws))
    assert not np.array_equal(draws[0][0], draws[0][1])  # another draw per index
    assert compared.best.candidate.loss == "proxy_anchor" and compared.baseline.candidate.loss == "none"


def test_the_paired_interval_comes_from_those_draws(compared):
    assert compared.paired == [0, 1]
    for metric in ("accuracy", "macro_f1"):
        d = [100 * (b.test[metric] - c.test[metric]) for b, c in zip(compared.best.draws, compared.baseline.draws)]
        assert compared.differences[metric].mean == pytest.approx(np.mean(d))
        assert not compared.differences[metric].exists  # two paired draws: no interval
        summary = compared.best.summary()[metric]
        assert summary["mean"] == pytest.approx(np.mean([x.test[metric] for x in compared.best.draws]))
        assert summary["std"] == pytest.approx(np.std([x.test[metric] for x in compared.best.draws], ddof=1))


@pytest.mark.parametrize(
    "sets",
    [{"inference.mode": "proxy"}, {"loss.name": "soft_triple", "inference.mode": "mixed", "loss.centers_per_class": 2}],
)
def test_a_draw_scores_as_the_trainer_does(tiny_roberta, data_dir, tokens, sets):
    from tunedml.config import from_flat
    from tunedml.retrain import train_draw
    from tunedml.train import Trainer, draw_for

    cfg = from_flat(apply_overrides(sets, small(tiny_roberta, data_dir, **{"train.epochs": 1}), "test"))
    result, snapshot = train_draw(cfg, tokens, 0)
    assert result.test == Trainer(cfg, tokens, draw_for(cfg, tokens)).fit(evaluate_test=True).test
    assert snapshot.prototype_kind == ("proxies" if "loss.name" in sets else "class centers")


def test_a_two_stage_draw_on_batches_per_class_scores_and_saves_as_the_trainer_does(
    tiny_roberta, data_dir, tokens, tmp_path
):
    from tunedml.config import from_flat
    from tunedml.retrain import train_draw
    from tunedml.train import Trainer, draw_for

    sets = {
        "loss.name": "supcon+ntxent",
        "loss.weighting": "uncertainty",
        "train.schedule": "two_stage",
        "head.fit": "logistic",
        "data.sampler": "m_per_class",
        "train.batch_size": 8,
    }  # k=4: 4 of each class
    flat = apply_overrides(sets, small(tiny_roberta, data_dir), "test")
    cfg = from_flat(flat)
    result, snapshot = train_draw(cfg, tokens, 0, keep_state=True)
    assert result.test == Trainer(cfg, tokens, draw_for(cfg, tokens)).fit(evaluate_test=True).test
    candidate = Candidate("best", flat, "test")
    model = load_model(save_model(tmp_path / "model", candidate, snapshot, tokens.corpus.label_names, result))
    test = tokens.corpus.test_idx
    predicted = model.predict([tokens.corpus.texts[i] for i in test])
    accuracy = np.mean(np.array([model.label_names.index(p) for p in predicted]) == tokens.corpus.labels[test])
    assert accuracy == pytest.approx(result.test["accuracy"], abs=1e-9)  # the logistic head, saved as the linear head


def test_the_comparison_survives_json(compared):
    again = Comparison.from_dict(json.loads(json.dumps(compared.to_dict())))
    assert again.to_dict() == compared.to_dict()


def test_snapshots_hold_test_embeddings_and_prototypes(compared, tokens):
    top = max(compared.best.draws, key=lambda d: (d.dev["accuracy"], -d.index))
    assert compared.best_draw == top.index
    best, base = compared.snapshots["best"], compared.snapshots["baseline"]
    n_test = len(tokens.corpus.test_idx)
    assert best.embeddings.shape == base.embeddings.shape == (n_test, 32)
    assert best.prototype_kind == "proxies" and best.prototypes.shape == (2, 32)
    assert base.prototype_kind == "class centers" and base.prototype_labels.tolist() == [0, 1]
    assert best.state is not None and base.state is None


def test_saved_model_predicts_what_was_scored(compared, tokens, tmp_path):
    draw = next(d for d in compared.best.draws if d.index == compared.best_draw)
    folder = save_model(
        tmp_path / "model", compared.best.candidate, compared.snapshots["best"], compared.label_names, draw
    )
    model = load_model(folder)
    test = tokens.corpus.test_idx
    texts = [tokens.corpus.texts[i] for i in test]
    predicted = model.predict(texts)
    assert set(predicted) <= {"negative", "positive"}
    accuracy = np.mean(np.array([model.label_names.index(p) for p in predicted]) == tokens.corpus.labels[test])
    assert accuracy == pytest.approx(draw.test["accuracy"], abs=1e-9)


@pytest.mark.slow  # starts Ray
def test_ray_tasks_give_the_same_draws_as_one_process(pair, tokens, compared):
    import ray

    from tunedml.search import init_ray

    started = not ray.is_initialized()
    init_ray(None, False)
    try:
        assert ray.cluster_resources().get("CPU", 0) >= 2, "this test needs two CPUs for two draws at a time"
        parallel = retrain(tokens, *pair, RetrainOptions(seeds=2, concurrency=2, cpus_per_draw=1))
    finally:
        if started:
            ray.shutdown()
    for role in ("best", "baseline"):
        assert [d.test for d in parallel.result(role).draws] == [d.test for d in compared.result(role).draws]
    assert parallel.differences == compared.differences


# ----------------------------------------------------------------- `tunedml retrain`


def tunedml(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "tunedml.cli", *args], capture_output=True, text=True, env=env, timeout=600, cwd=cwd
    )


@pytest.mark.slow  # a whole retrain through the CLI, MLflow and a saved model: ~15 s
def test_retrain_from_files_records_final_runs_and_a_loadable_model(tmp_path, tiny_roberta, data_dir):
    from mlflow import MlflowClient

    from tunedml.retrain import Selection, select
    from tunedml.tracking import final_comparisons

    best_yaml = tmp_path / "best.yaml"
    best_yaml.write_text("loss:\n  name: proxy_anchor\n  margin: 0.2\ninference:\n  mode: proxy\ntrain:\n  lr: 0.001\n")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = tunedml(
        "retrain",
        "--dataset",
        "trec",
        "--data-dir",
        data_dir,
        "--model",
        tiny_roberta,
        "--config",
        str(best_yaml),
        "--baseline",
        os.path.join(SPACES, "cce.yaml"),
        "--seeds",
        "2",
        "--concurrency",
        "1",
        "--set",
        "data.k=2",
        "--set",
        "train.epochs=1",
        "--set",
        "data.max_length=32",
        "--tracking-uri",
        uri,
        "--save-model",
        str(tmp_path / "model"),
        "--json",
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert [line.split("  ")[0] for line in run.stderr.splitlines() if line.startswith("draw ")] == [
        "draw 1/4",
        "draw 2/4",
        "draw 3/4",
        "draw 4/4",
    ]
    seeds = {role: [d["data_seed"] for d in out[role]["draws"]] for role in ("best", "baseline")}
    assert seeds == {"best": [1000, 1001], "baseline": [1000, 1001]}
    assert (out["best"]["loss"], out["baseline"]["loss"]) == ("proxy_anchor", "none")
    assert out["baseline"]["config"]["train.epochs"] == 1 and out["baseline"]["config"]["data.k"] == 2
    assert "at defaults" in out["baseline"]["source"]

    client = MlflowClient(uri)
    runs = out["mlflow"]["runs"]
    best_run, base_run = client.get_run(runs["best"]), client.get_run(runs["baseline"])
    assert best_run.data.tags["tunedml.role"] == "final" and best_run.data.tags["tunedml.final_role"] == "best"
    assert best_run.data.tags["tunedml.baseline_run_id"] == runs["baseline"]
    assert best_run.data.params["loss.name"] == "proxy_anchor" and base_run.data.params["loss.name"] == "none"
    history = client.get_metric_history(runs["best"], "test_accuracy")
    assert sorted((m.step, m.value) for m in history) == [
        (d["index"], d["test"]["accuracy"]) for d in out["best"]["draws"]
    ]
    assert best_run.data.metrics["diff_accuracy_pp"] == pytest.approx(out["differences_pp"]["accuracy"]["mean"])
    assert {f.path for f in client.list_artifacts(runs["best"])} >= {
        "comparison.json",
        "config.yaml",
        "embeddings.npz",
        "model",
    }

    [recorded] = final_comparisons(uri, ["trec"])
    assert recorded.run_id == runs["best"] and recorded.to_dict()["differences_pp"] == out["differences_pp"]
    assert set(recorded.snapshots) == {"best", "baseline"}

    model = load_model(out["model"])
    assert model.cfg.inference.mode == "proxy" and model.label_names == ["DESC", "ENTY", "ABBR", "HUM", "LOC", "NUM"]
    assert set(model.predict(["Who wrote Hamlet?", "How far is the moon?"])) <= set(model.label_names)
    from tunedml.tracking import download_model

    fetched = load_model(download_model(uri, runs["best"], tmp_path / "fetched"))  # the copy the final run keeps
    texts = ["Who wrote Hamlet?", "How far is the moon?", "What is a quark?"]
    assert fetched.predict(texts) == model.predict(texts)

    best, baseline = select(Selection(run_id=runs["best"], baseline=runs["baseline"], tracking_uri=uri))
    assert best.config == out["best"]["config"] and baseline.config == out["baseline"]["config"]


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> str:
    """One MLflow database with nothing recorded, shared (creating one takes a while)."""
    return str(tmp_path_factory.mktemp("empty-store") / "mlflow.db")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "sst-2"], "unknown dataset 'sst-2' (did you mean 'sst2'?)"),
        (["--set", "train.lrr=0.1"], "unknown key 'train.lrr' (did you mean 'train.lr'?)"),
        (["--dataset", "sst2", "--run-id", "0123456789abcdef"], "run '0123456789abcdef' not found at sqlite:///"),
        (["--dataset", "sst2"], "no search over a DML space recorded for dataset 'sst2'"),
        (["--run-id", "x", "--config", "best.yaml"], "--run-id and --config both name the configuration"),
        (["--seeds", "0"], "--seeds must be >= 1"),
        (["--config", os.path.join(SPACES, "dml.yaml")], "is a search space; --config takes a run config"),
    ],
)
def test_retrain_bad_input_is_one_line_and_exit_code_2_before_training(tmp_path, empty_store, args, message):
    run = tunedml("retrain", "--tracking-uri", empty_store, *args, cwd=str(tmp_path))
    assert run.returncode == 2, run.stderr
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("tunedml retrain: error: ")
    assert message in run.stderr
    assert "Traceback" not in run.stderr and "draw" not in run.stderr and run.stdout == ""


# ----------------------------------------------------------------- the baseline is never silently untuned


def record_search(uri: str, dataset: str, space: str, config: dict, score: float, trials: int) -> str:
    """A finished search as `tunedml search` records it (parent run, best config, space file), written
    straight to a real store: what `retrain` reads, without a minute of Ray per search."""
    from mlflow import MlflowClient

    from tunedml.config import from_flat
    from tunedml.tracking.store import dataset_experiment

    client = MlflowClient(uri)
    experiment = dataset_experiment(client, uri, dataset)
    tags = {
        "tunedml.role": "search",
        "tunedml.dataset": dataset,
        "tunedml.space": space,
        "tunedml.trials_finished": str(trials - 1),
        "tunedml.trials_stopped_early": "1",
        "tunedml.trials_failed": "0",
    }
    run = client.create_run(experiment, run_name=f"{dataset}-{space}", tags=tags)
    client.log_param(run.info.run_id, "search.trials", trials)
    client.log_metric(run.info.run_id, "best_dev_accuracy", score)
    client.log_text(run.info.run_id, from_flat(config).to_yaml(), "best_config.yaml")
    with open(os.path.join(SPACES, f"{space}.yaml")) as f:
        client.log_text(run.info.run_id, f.read(), f"space/{space}.yaml")
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


@pytest.fixture(scope="module")
def dml_only_store(tmp_path_factory, tiny_roberta, data_dir) -> str:
    uri = f"sqlite:///{tmp_path_factory.mktemp('dml-only') / 'mlflow.db'}"
    record_search(
        uri,
        "sst2",
        "dml",
        apply_overrides(
            {"loss.name": "proxy_anchor"}, small(tiny_roberta, data_dir, **{"train.epochs": 1, "data.k": 2}), "test"
        ),
        0.6,
        trials=12,
    )
    return uri


def test_retrain_without_a_cce_search_stops_and_names_the_command(dml_only_store, tmp_path):
    run = tunedml("retrain", "--dataset", "sst2", "--tracking-uri", dml_only_store, cwd=str(tmp_path))
    assert run.returncode == 2 and run.stdout == "" and run.stderr.count("\n") == 1, run.stderr
    assert run.stderr.startswith("tunedml retrain: error: no CCE-only search recorded for dataset 'sst2'")
    assert "`tunedml search --datasets sst2 --space search_spaces/cce.yaml --trials 12`" in run.stderr
    assert "--baseline defaults" in run.stderr and "draw" not in run.stderr


def test_untuned_baseline_on_request_and_one_draw_gives_scores_without_interval(dml_only_store, tmp_path):
    run = tunedml(
        "retrain",
        "--dataset",
        "sst2",
        "--tracking-uri",
        dml_only_store,
        "--baseline",
        "defaults",
        "--seeds",
        "1",
        "--concurrency",
        "1",
        cwd=str(tmp_path),
    )
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert any(line.startswith("  CCE baseline (none, untuned)") for line in lines)
    assert any(line.startswith("  best (proxy_anchor, 12 trials)") for line in lines)
    assert "no interval and no p-values: 1 paired draws, 3 needed" in run.stdout
    assert "[" not in run.stdout and "*" not in run.stdout and "CI" not in run.stdout
    assert "note: the CCE baseline is untuned" in run.stdout

    from tunedml.tracking import final_comparisons

    [recorded] = final_comparisons(dml_only_store, ["sst2"])
    assert recorded.baseline.candidate.untuned and recorded.best.candidate.trials == 12
    assert not recorded.differences["accuracy"].exists


def test_both_searches_give_their_trial_counts(tmp_path, tiny_roberta, data_dir):
    from tunedml.retrain import Selection, select

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = small(tiny_roberta, data_dir)
    record_search(uri, "sst2", "dml", apply_overrides({"loss.name": "supcon"}, config, "test"), 0.7, trials=40)
    cce_run = record_search(
        uri, "sst2", "cce", apply_overrides({}, {**config, "train.lr": 2e-4}, "test"), 0.65, trials=20
    )
    best, baseline = select(Selection("sst2", tracking_uri=uri))
    assert (best.loss, best.trials, baseline.loss, baseline.trials) == ("supcon", 40, "none", 20)
    assert baseline.run_id == cce_run and not baseline.untuned and baseline.config["train.lr"] == 2e-4
