"""The results table and its plots: from hand-made comparisons, from real retrains on two datasets,
and `tunedml search` -> `tunedml retrain` -> `tunedml report` end to end through MLflow."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tunedml.errors import ConfigError
from tunedml.report import markdown, plot_embeddings, rows, write_report
from tunedml.retrain import (
    Candidate, Comparison, ConfigResult, DrawResult, RetrainOptions, Snapshot, apply_overrides, cce_defaults,
    compare, retrain,
)
from tunedml.train import prepare_tokens

SPACES = os.path.join(os.path.dirname(__file__), "..", "search_spaces")


def hand_made(dataset: str, best: list[float], baseline: list[float], loss: str = "proxy_anchor") -> Comparison:
    """A comparison with given per-draw test accuracies (macro-F1 = accuracy), no training."""
    def result(role: str, scores: list[float], name: str) -> ConfigResult:
        draws = [DrawResult(i, 1000 + i, 1000 + i, None, {"accuracy": s, "macro_f1": s}, None, 1.0)
                 for i, s in enumerate(scores)]
        return ConfigResult(Candidate(role, {"loss.name": name, "data.dataset": dataset}, "test"), draws)

    return compare(dataset, ["negative", "positive"], "kshot k=16", result("best", best, loss),
                   result("baseline", baseline, "none"), RetrainOptions())


def opens_as_image(path) -> tuple[int, int]:
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG"
        return img.size


# ----------------------------------------------------------------- the table

def test_rows_are_percent_and_the_difference_is_paired():
    c = hand_made("sst2", [0.80, 0.82, 0.84], [0.78, 0.80, 0.82])
    [r] = rows([c])
    assert (r.dataset, r.draws, r.best_loss, r.baseline_loss) == ("sst2", 3, "proxy_anchor", "none")
    assert (r.best_mean, r.best_std) == pytest.approx((82.0, 2.0))
    assert (r.baseline_mean, r.baseline_std) == pytest.approx((80.0, 2.0))
    # every draw is exactly 2 points better: the paired interval collapses although the stds overlap
    assert (r.diff_mean, r.diff_low, r.diff_high) == pytest.approx((2.0, 2.0, 2.0))
    assert r.significant


def test_markdown_has_one_row_per_dataset():
    table = markdown([hand_made("sst2", [0.80, 0.82], [0.78, 0.84]), hand_made("mr", [0.7, 0.7], [0.7, 0.7], "supcon")])
    lines = table.splitlines()
    assert lines[2] == "| Dataset | Protocol | Draws | CCE baseline | Best configuration | Loss | Δ (pp) |"
    assert lines[4] == "| sst2 | kshot k=16 | 2 | 81.0 ± 4.2 | 81.0 ± 1.4 | proxy_anchor | +0.0 [-2.0, +2.0] |"
    assert lines[5] == "| mr | kshot k=16 | 2 | 70.0 ± 0.0 | 70.0 ± 0.0 | supcon | +0.0 [+0.0, +0.0] |"
    assert len(lines) == 6


def test_unknown_metric_is_a_config_error():
    with pytest.raises(ConfigError, match="did you mean 'accuracy'"):
        rows([hand_made("sst2", [0.8], [0.7])], "acuracy")


def test_tsne_projection_of_a_small_snapshot(tmp_path):
    rng = np.random.default_rng(0)
    c = hand_made("trec", [0.5], [0.4])
    labels = rng.integers(0, 2, 60)
    emb = rng.normal(size=(60, 8)) + 3 * labels[:, None]
    snap = Snapshot(emb, labels, np.array([[0.0] * 8, [3.0] * 8]), np.array([0, 1]), "class centers")
    c.snapshots = {"best": snap, "baseline": snap}
    width, height = opens_as_image(plot_embeddings(c, tmp_path / "tsne.png", "tsne"))
    assert width > height > 100
    with pytest.raises(ConfigError, match="unknown projection 'umap'"):
        plot_embeddings(c, tmp_path / "x.png", "umap")


# ----------------------------------------------------------------- from real retrains

@pytest.fixture(scope="module")
def comparisons(tiny_roberta, data_dir) -> list[Comparison]:
    out = []
    for dataset, loss in (("sst2", "proxy_anchor"), ("trec", "soft_triple")):
        overrides = {"model.name": tiny_roberta, "data.data_dir": data_dir, "data.dataset": dataset, "data.k": 2,
                     "data.max_length": 32, "train.epochs": 1, "train.threads": 1}
        best = Candidate("best", apply_overrides({"loss.name": loss, "loss.centers_per_class": 2} if loss == "soft_triple"
                                                 else {"loss.name": loss}, overrides, "test"), "test")
        tokens = prepare_tokens(best.run_config)
        out.append(retrain(tokens, best, cce_defaults(overrides), RetrainOptions(seeds=2, parallel=1)))
    return out


def test_report_files_from_real_retrains(comparisons, tmp_path):
    files = write_report(comparisons, tmp_path / "report")
    assert sorted(f.name for f in files) == ["diff.png", "embeddings_sst2.png", "embeddings_trec.png",
                                             "results.csv", "results.md"]
    table = [line for line in (tmp_path / "report" / "results.md").read_text().splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0] for line in table[1:]] == ["| sst2", "| trec"]
    for c, line in zip(comparisons, table[1:]):
        s = c.best.summary()["accuracy"]
        assert f"| {100 * s['mean']:.1f} ± {100 * s['std']:.1f} | {c.best.candidate.loss} |" in line
    with open(tmp_path / "report" / "results.csv") as f:
        records = list(csv.DictReader(f))
    assert [(r["dataset"], r["metric"]) for r in records] == [("sst2", "accuracy"), ("trec", "accuracy"),
                                                               ("sst2", "macro_f1"), ("trec", "macro_f1")]
    assert float(records[1]["diff_pp"]) == pytest.approx(comparisons[1].differences["accuracy"].mean, abs=1e-3)
    for name in ("diff.png", "embeddings_sst2.png", "embeddings_trec.png"):
        width, height = opens_as_image(tmp_path / "report" / name)
        assert width > 300 and height > 100
    trec = comparisons[1].snapshots["best"]
    assert trec.prototype_kind == "proxies" and trec.prototypes.shape[0] == 6 * 2  # 2 SoftTriple centers per class


# ----------------------------------------------------------------- search -> retrain -> report

def tunedml(*args: str, cwd: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-m", "tunedml.cli", *args], capture_output=True, text=True, env=env,
                         timeout=900, cwd=cwd)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


@pytest.mark.slow
def test_search_then_retrain_then_report(tmp_path, tiny_roberta, data_dir):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = ["--dataset", "trec", "--data-dir", data_dir, "--model", tiny_roberta, "--set", "data.k=2",
              "--set", "data.max_length=32", "--tracking-uri", uri]
    search = ["search", "--trials", "1", "--scheduler", "none", "--storage", str(tmp_path / "ray"), *common]
    tunedml(*search, "--space", os.path.join(SPACES, "cce.yaml"), cwd=str(tmp_path))
    tunedml(*search, "--space", os.path.join(SPACES, "dml.yaml"), "--set", "train.epochs=1", cwd=str(tmp_path))

    run = tunedml("retrain", *common, "--seeds", "2", "--set", "train.epochs=1", "--parallel", "1", "--json",
                  cwd=str(tmp_path))
    out = json.loads(run.stdout)
    assert "(space dml)" in out["best"]["source"] and "(space cce)" in out["baseline"]["source"]
    assert [d["data_seed"] for d in out["best"]["draws"]] == [d["data_seed"] for d in out["baseline"]["draws"]]

    report = tmp_path / "report"
    run = tunedml("report", "--out", str(report), "--tracking-uri", uri, cwd=str(tmp_path))
    rows_ = [line for line in run.stdout.splitlines() if line.startswith("| trec |")]
    assert len(rows_) == 1 and f"| {out['best']['loss']} |" in rows_[0]
    for name in ("diff.png", "embeddings_trec.png"):
        opens_as_image(report / name)
    assert (report / "results.csv").read_text().count("\ntrec,") == 2

    client = MlflowClient(uri)
    [logged] = client.search_runs([client.get_experiment_by_name("tunedml/report").experiment_id])
    assert {f.path for f in client.list_artifacts(logged.info.run_id)} == \
        {"results.md", "results.csv", "diff.png", "embeddings_trec.png"}
    assert logged.data.tags["tunedml.final_runs"] == out["mlflow"]["runs"]["best"]


@pytest.mark.slow  # a new MLflow store and the report's imports in a subprocess: ~15 s
def test_report_without_final_runs_is_one_line_and_exit_code_2(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-m", "tunedml.cli", "report", "--tracking-uri", str(tmp_path / "m.db"),
                          "--out", str(tmp_path / "report")], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 2 and run.stderr.count("\n") == 1
    assert "no final evaluation recorded" in run.stderr and not (tmp_path / "report").exists()
