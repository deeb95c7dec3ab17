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
from tunedml.errors import ConfigError
from tunedml.retrain import (
    FRESH_OFFSET, Candidate, Comparison, RetrainOptions, align_baseline, apply_overrides, bootstrap_interval,
    candidate_from_file, cce_defaults, draw_configs, load_model, paired_differences, retrain, save_model,
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


def test_paired_differences_are_percentage_points():
    assert paired_differences([0.8, 0.9], [0.7, 0.9]).tolist() == pytest.approx([10.0, 0.0])
    with pytest.raises(ValueError, match="same draws"):
        paired_differences([0.8, 0.9], [0.7])


# ----------------------------------------------------------------- the draws and the baseline

def test_kshot_draws_are_fresh_and_seeded():
    cfgs = draw_configs(build_config(sets=["data.seed=3", "train.seed=5"]), 3)
    assert [(c.data.seed, c.train.seed) for c in cfgs] == [(3 + FRESH_OFFSET + i, 5 + FRESH_OFFSET + i) for i in range(3)]


def test_kfold_draws_cover_every_fold_per_seed():
    cfgs = draw_configs(build_config(sets=["data.protocol=kfold", "data.folds=3"]), 2)
    assert [(c.data.fold, c.data.seed) for c in cfgs] == [(f, FRESH_OFFSET + s) for s in range(2) for f in range(3)]
    assert len(draw_configs(build_config(sets=["data.protocol=kfold", "data.folds=4"]), None)) == 4


def test_baseline_takes_the_data_encoder_and_seeds_of_the_best_config():
    best = Candidate("best", build_config(sets=["loss.name=proxy_anchor", "data.k=8", "data.seed=4", "model.name=x",
                                                "train.seed=2", "train.lr=5e-4"]).to_flat(), "test")
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
    for options in (RetrainOptions(seeds=0), RetrainOptions(parallel=0), RetrainOptions(bootstrap=5)):
        with pytest.raises(ConfigError):
            options.validate()


# ----------------------------------------------------------------- retraining on real draws

def small(tiny_roberta: str, data_dir: str, **extra) -> dict:
    return {"model.name": tiny_roberta, "data.data_dir": data_dir, "data.dataset": "sst2", "data.k": 4,
            "data.max_length": 32, "train.epochs": 2, "train.lr": 1e-3, "train.threads": 1, **extra}


@pytest.fixture(scope="module")
def pair(tiny_roberta, data_dir):
    overrides = small(tiny_roberta, data_dir)
    best = Candidate("best", apply_overrides({"loss.name": "proxy_anchor", "inference.mode": "mixed"}, overrides,
                                             "test"), "test")
    return best, cce_defaults(overrides)


@pytest.fixture(scope="module")
def tokens(pair):
    return prepare_tokens(pair[0].run_config)


@pytest.fixture(scope="module")
def compared(pair, tokens) -> Comparison:
    seen = []
    comparison = retrain(tokens, *pair, RetrainOptions(seeds=2, parallel=1, keep_model=True),
                         on_draw=lambda job, result: seen.append((job.role, result.index)))
    comparison.seen = seen
    return comparison


def test_both_configurations_train_on_the_same_draws(compared, tokens):
    assert sorted(compared.seen) == [("baseline", 0), ("baseline", 1), ("best", 0), ("best", 1)]
    for role in ("best", "baseline"):
        result = compared.result(role)
        assert [d.index for d in result.draws] == [0, 1]
        assert all(d.ok and 0 <= d.test["accuracy"] <= 1 and set(d.test) == {"accuracy", "macro_f1"}
                   for d in result.draws)
    for b, c in zip(compared.best.draws, compared.baseline.draws):
        assert (b.data_seed, b.train_seed) == (c.data_seed, c.train_seed) == (FRESH_OFFSET + b.index,) * 2
    draws = [[make_draw(tokens.corpus, "kshot", k=4, seed=d.data_seed).train for d in r.draws]
             for r in (compared.best, compared.baseline)]
    assert all(np.array_equal(a, b) for a, b in zip(*draws))
    assert not np.array_equal(draws[0][0], draws[0][1])  # another draw per index
    assert compared.best.candidate.loss == "proxy_anchor" and compared.baseline.candidate.loss == "none"


def test_the_paired_interval_comes_from_those_draws(compared):
    assert compared.paired == [0, 1]
    for metric in ("accuracy", "macro_f1"):
        d = [100 * (b.test[metric] - c.test[metric]) for b, c in zip(compared.best.draws, compared.baseline.draws)]
        assert compared.differences[metric] == bootstrap_interval(d)
        summary = compared.best.summary()[metric]
        assert summary["mean"] == pytest.approx(np.mean([x.test[metric] for x in compared.best.draws]))
        assert summary["std"] == pytest.approx(np.std([x.test[metric] for x in compared.best.draws], ddof=1))


@pytest.mark.parametrize("sets", [{"inference.mode": "proxy"}, {"loss.name": "soft_triple", "inference.mode": "mixed",
                                                                  "loss.centers_per_class": 2}])
def test_a_draw_scores_as_the_trainer_does(tiny_roberta, data_dir, tokens, sets):
    from tunedml.config import from_flat
    from tunedml.retrain import train_draw
    from tunedml.train import Trainer, draw_for

    cfg = from_flat(apply_overrides(sets, small(tiny_roberta, data_dir, **{"train.epochs": 1}), "test"))
    result, snapshot = train_draw(cfg, tokens, 0)
    assert result.test == Trainer(cfg, tokens, draw_for(cfg, tokens)).fit(evaluate_test=True).test
    assert snapshot.prototype_kind == ("proxies" if "loss.name" in sets else "class centers")


def test_the_comparison_survives_json(compared):
    again = Comparison.from_dict(json.loads(json.dumps(compared.to_dict())))
    assert again.to_dict() == compared.to_dict()


def test_snapshots_hold_test_embeddings_and_prototypes(compared, tokens):
    top = max(compared.best.draws, key=lambda d: (d.test["accuracy"], d.test["macro_f1"], -d.index))
    assert compared.best_draw == top.index
    best, base = compared.snapshots["best"], compared.snapshots["baseline"]
    n_test = len(tokens.corpus.test_idx)
    assert best.embeddings.shape == base.embeddings.shape == (n_test, 32)
    assert best.prototype_kind == "proxies" and best.prototypes.shape == (2, 32)
    assert base.prototype_kind == "class centers" and base.prototype_labels.tolist() == [0, 1]
    assert best.state is not None and base.state is None


def test_saved_model_predicts_what_was_scored(compared, tokens, tmp_path):
    draw = next(d for d in compared.best.draws if d.index == compared.best_draw)
    folder = save_model(tmp_path / "model", compared.best.candidate, compared.snapshots["best"],
                        compared.label_names, draw)
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
        parallel = retrain(tokens, *pair, RetrainOptions(seeds=2, parallel=2, cpus_per_draw=1))
    finally:
        if started:
            ray.shutdown()
    for role in ("best", "baseline"):
        assert [d.test for d in parallel.result(role).draws] == [d.test for d in compared.result(role).draws]
    assert parallel.differences == compared.differences


# ----------------------------------------------------------------- `tunedml retrain`

def tunedml(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "tunedml.cli", *args], capture_output=True, text=True, env=env,
                          timeout=600, cwd=cwd)


@pytest.mark.slow  # a whole retrain through the CLI, MLflow and a saved model: ~15 s
def test_retrain_from_files_records_final_runs_and_a_loadable_model(tmp_path, tiny_roberta, data_dir):
    from mlflow import MlflowClient

    from tunedml.retrain import Selection, select
    from tunedml.tracking import final_comparisons

    best_yaml = tmp_path / "best.yaml"
    best_yaml.write_text("loss:\n  name: proxy_anchor\n  margin: 0.2\ninference:\n  mode: proxy\ntrain:\n  lr: 0.001\n")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = tunedml("retrain", "--dataset", "trec", "--data-dir", data_dir, "--model", tiny_roberta,
                  "--config", str(best_yaml), "--baseline", os.path.join(SPACES, "cce.yaml"), "--seeds", "2",
                  "--parallel", "1", "--set", "data.k=2", "--set", "train.epochs=1", "--set", "data.max_length=32",
                  "--tracking-uri", uri, "--save-model", str(tmp_path / "model"), "--json")
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert [line.split("  ")[0] for line in run.stderr.splitlines() if line.startswith("draw ")] == \
        ["draw 1/4", "draw 2/4", "draw 3/4", "draw 4/4"]
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
    assert sorted((m.step, m.value) for m in history) == [(d["index"], d["test"]["accuracy"]) for d in out["best"]["draws"]]
    assert best_run.data.metrics["diff_accuracy_pp"] == pytest.approx(out["differences_pp"]["accuracy"]["mean"])
    assert {f.path for f in client.list_artifacts(runs["best"])} >= {"comparison.json", "config.yaml", "embeddings.npz", "model"}

    [recorded] = final_comparisons(uri, ["trec"])
    assert recorded.run_id == runs["best"] and recorded.to_dict()["differences_pp"] == out["differences_pp"]
    assert set(recorded.snapshots) == {"best", "baseline"}

    model = load_model(out["model"])
    assert model.cfg.inference.mode == "proxy" and model.label_names == ["DESC", "ENTY", "ABBR", "HUM", "LOC", "NUM"]
    assert set(model.predict(["Who wrote Hamlet?", "How far is the moon?"])) <= set(model.label_names)

    best, baseline = select(Selection(run_id=runs["best"], baseline=runs["baseline"], tracking_uri=uri))
    assert best.config == out["best"]["config"] and baseline.config == out["baseline"]["config"]


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> str:
    """One MLflow database with nothing recorded, shared (creating one takes a while)."""
    return str(tmp_path_factory.mktemp("empty-store") / "mlflow.db")


@pytest.mark.parametrize("args, message", [
    (["--dataset", "sst-2"], "unknown dataset 'sst-2' (did you mean 'sst2'?)"),
    (["--set", "train.lrr=0.1"], "unknown key 'train.lrr' (did you mean 'train.lr'?)"),
    (["--dataset", "sst2", "--run-id", "0123456789abcdef"], "run '0123456789abcdef' not found at sqlite:///"),
    (["--dataset", "sst2"], "no search over a DML space recorded for dataset 'sst2'"),
    (["--run-id", "x", "--config", "best.yaml"], "--run-id and --config both name the configuration"),
    (["--seeds", "0"], "--seeds must be >= 1"),
    (["--config", os.path.join(SPACES, "dml.yaml")], "is a search space; --config takes a run config"),
])
def test_retrain_bad_input_is_one_line_and_exit_code_2_before_training(tmp_path, empty_store, args, message):
    run = tunedml("retrain", "--tracking-uri", empty_store, *args, cwd=str(tmp_path))
    assert run.returncode == 2, run.stderr
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("tunedml retrain: error: ")
    assert message in run.stderr
    assert "Traceback" not in run.stderr and "draw" not in run.stderr and run.stdout == ""
