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
from tunedml.report import comparison_lines, markdown, plot_embeddings, rows, write_report
from tunedml.retrain import (
    Candidate,
    Comparison,
    ConfigResult,
    DrawResult,
    RetrainOptions,
    Snapshot,
    apply_overrides,
    cce_defaults,
    compare,
    retrain,
)
from tunedml.train import prepare_tokens

SPACES = os.path.join(os.path.dirname(__file__), "..", "search_spaces")


def hand_made(
    dataset: str,
    best: list[float],
    baseline: list[float],
    loss: str = "proxy_anchor",
    options: RetrainOptions | None = None,
    untuned: bool = False,
    trials: tuple = (None, None),
    collapsed: tuple = ((), ()),
    selection: tuple = (None, None),
    rescored: tuple = (None, None),
) -> Comparison:
    """A comparison with given per-draw test accuracies (macro-F1 = accuracy), no training;
    ``trials``/``collapsed``: (baseline, best) search budgets and indices of collapsed draws."""

    def result(role: str, scores: list[float], name: str, side: int) -> ConfigResult:
        draws = [
            DrawResult(
                i,
                1000 + i,
                1000 + i,
                None,
                {"accuracy": s, "macro_f1": s, "collapsed": float(i in collapsed[side])},
                None,
                1.0,
            )
            for i, s in enumerate(scores)
        ]
        candidate = Candidate(
            role,
            {"loss.name": name, "data.dataset": dataset},
            "test",
            untuned=untuned and role == "baseline",
            trials=trials[side],
            selection_score=selection[side],
            rescored=rescored[side],
        )
        return ConfigResult(candidate, draws)

    return compare(
        dataset,
        ["negative", "positive"],
        "kshot k=16",
        result("best", best, loss, 1),
        result("baseline", baseline, "none", 0),
        options or RetrainOptions(),
    )


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
    assert lines[2] == (
        "| Dataset | Protocol | Draws | CCE baseline | Best configuration | Loss | Worst draw | "
        "Collapsed | Trials | Δ (pp) | p (t / Wilcoxon) |"
    )
    # two draws: scores and spread, but no interval, no p-value and no star
    assert lines[4] == (
        "| sst2 | kshot k=16 | 2 | 81.0 ± 4.2 | 81.0 ± 1.4 | proxy_anchor | 78.0 / 80.0 | 0 / 0 | – / – | "
        "+0.0 (no interval: 2 draws) | – / – |"
    )
    assert lines[5] == (
        "| mr | kshot k=16 | 2 | 70.0 ± 0.0 | 70.0 ± 0.0 | supcon | 70.0 / 70.0 | 0 / 0 | – / – | "
        "+0.0 (no interval: 2 draws) | – / – |"
    )
    assert lines[6] == ""  # the first table ends; the optimism table follows
    optimism = [ln for ln in lines[7:] if ln.startswith("| sst2") or ln.startswith("| mr")]
    assert optimism == [
        "| sst2 | CCE | none | – | – | 81.0 | – |",
        "| sst2 | best | proxy_anchor | – | – | 81.0 | – |",
        "| mr | CCE | none | – | – | 70.0 | – |",
        "| mr | best | supcon | – | – | 70.0 | – |",
    ]


def test_the_optimism_table_shows_selection_rescored_and_test_side_by_side():
    c = hand_made("sst2", [0.70, 0.72], [0.66, 0.68], selection=(0.80, 0.90), rescored=(None, (0.78, 0.02, 3)))
    lines = markdown([c]).splitlines()
    assert "| sst2 | CCE | none | 80.0 | – | 67.0 | +13.0 |" in lines
    assert "| sst2 | best | proxy_anchor | 90.0 | 78.0 ± 2.0 | 71.0 | +19.0 |" in lines
    assert c.best.optimism() == pytest.approx(19.0) and c.baseline.optimism() == pytest.approx(13.0)
    text = "\n".join(comparison_lines(c))
    assert "best: dev at selection 90.0, re-scored 78.0 ± 2.0 (3 draws), test 71.0: optimism +19.0 pp" in text


def test_the_caption_names_the_interval_method():
    t = markdown([hand_made("sst2", [0.80, 0.83, 0.79], [0.78, 0.80, 0.80])])
    assert "95% paired Student t interval" in t.splitlines()[0] and "Wilcoxon" in t.splitlines()[0]
    boot = markdown(
        [hand_made("sst2", [0.80, 0.83, 0.79], [0.78, 0.80, 0.80], options=RetrainOptions(interval="bootstrap"))]
    )
    assert "percentile-bootstrap interval" in boot.splitlines()[0] and "Student t" not in boot.splitlines()[0]


def test_a_significant_row_shows_interval_star_and_p_values():
    from tunedml.retrain import paired_p_values, t_interval

    c = hand_made("sst2", [0.82, 0.85, 0.83, 0.86, 0.84], [0.78, 0.80, 0.80, 0.81, 0.79])
    d = [4.0, 5.0, 3.0, 5.0, 5.0]
    ci, (p_t, p_w) = t_interval(d), paired_p_values(d)
    row = markdown([c]).splitlines()[4]
    assert (round(ci.low, 1), round(ci.high, 1), round(p_t, 4), round(p_w, 3)) == (3.3, 5.5, 0.0004, 0.062)
    assert "| +4.4 [+3.3, +5.5] * | 4e-04 / 0.062 |" in row


def test_untuned_baseline_and_different_budgets_are_marked():
    c = hand_made("sst2", [0.80, 0.83, 0.79], [0.78, 0.80, 0.80], untuned=True, trials=(None, 40))
    text = markdown([c])
    assert "| 80.7 ± 2.1 | proxy_anchor |" in text and "| 79.3 ± 1.2 † |" in text
    assert "† untuned baseline: CCE at default settings" in text and "‡" not in text
    differ = markdown([hand_made("sst2", [0.80, 0.83, 0.79], [0.78, 0.80, 0.80], trials=(20, 40))])
    assert "| 20 / 40 ‡ |" in differ and "‡ the two searches had different budgets" in differ
    same = markdown([hand_made("sst2", [0.80, 0.83, 0.79], [0.78, 0.80, 0.80], trials=(40, 40))])
    assert "| 40 / 40 |" in same and "‡" not in same and "†" not in same


def test_spread_worst_draw_and_collapsed_draws_in_table_and_csv(tmp_path):
    from tunedml.report import write_csv

    c = hand_made("mpqa", [0.78, 0.81, 0.75], [0.78, 0.519, 0.75], collapsed=((1,), ()))
    assert "| 51.9 / 75.0 | 1 / 0 |" in markdown([c])
    with open(write_csv([c], tmp_path / "r.csv")) as f:
        record = next(csv.DictReader(f))
    assert (record["baseline_worst"], record["baseline_collapsed"], record["best_collapsed"]) == ("51.9", "1", "0")
    assert float(record["baseline_std"]) == pytest.approx(100 * np.std([0.78, 0.519, 0.75], ddof=1), abs=1e-3)
    assert record["interval"] == "t" and float(record["p_t"]) > 0 and record["significant"] == "False"


def test_an_older_comparison_file_still_reads():
    old = hand_made("sst2", [0.80, 0.83, 0.79], [0.78, 0.80, 0.80]).to_dict()
    for side in ("best", "baseline"):
        for key in ("untuned", "trials", "collapsed"):
            del old[side][key]
    old["baseline"]["source"] = "CCE defaults"
    old["differences_pp"] = {
        m: {k: v for k, v in i.items() if k in ("mean", "low", "high", "confidence")}
        for m, i in old["differences_pp"].items()
    }
    again = Comparison.from_dict(old)
    assert again.differences["accuracy"].method == "bootstrap" and again.baseline.candidate.untuned
    assert "percentile-bootstrap" in markdown([again]).splitlines()[0]


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
        overrides = {
            "model.name": tiny_roberta,
            "data.data_dir": data_dir,
            "data.dataset": dataset,
            "data.k": 2,
            "data.max_length": 32,
            "train.epochs": 1,
            "train.threads": 1,
        }
        best = Candidate(
            "best",
            apply_overrides(
                {"loss.name": loss, "loss.centers_per_class": 2} if loss == "soft_triple" else {"loss.name": loss},
                overrides,
                "test",
            ),
            "test",
        )
        tokens = prepare_tokens(best.run_config)
        out.append(retrain(tokens, best, cce_defaults(overrides), RetrainOptions(seeds=2, concurrency=1)))
    return out


def test_report_files_from_real_retrains(comparisons, tmp_path):
    files = write_report(comparisons, tmp_path / "report")
    assert sorted(f.name for f in files) == [
        "diff.png",
        "embeddings_sst2.png",
        "embeddings_trec.png",
        "results.csv",
        "results.md",
    ]
    lines = (tmp_path / "report" / "results.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| Dataset | Protocol"))
    table = [lines[start]] + lines[start + 2 : lines.index("", start)]  # the first table: header, rows
    assert [line.split(" | ")[0] for line in table[1:]] == ["| sst2", "| trec"]
    for c, line in zip(comparisons, table[1:]):
        s = c.best.summary()["accuracy"]
        assert f"| {100 * s['mean']:.1f} ± {100 * s['std']:.1f} | {c.best.candidate.loss} |" in line
    with open(tmp_path / "report" / "results.csv") as f:
        records = list(csv.DictReader(f))
    assert [(r["dataset"], r["metric"]) for r in records] == [
        ("sst2", "accuracy"),
        ("trec", "accuracy"),
        ("sst2", "macro_f1"),
        ("trec", "macro_f1"),
    ]
    assert float(records[1]["diff_pp"]) == pytest.approx(comparisons[1].differences["accuracy"].mean, abs=1e-3)
    for name in ("diff.png", "embeddings_sst2.png", "embeddings_trec.png"):
        width, height = opens_as_image(tmp_path / "report" / name)
        assert width > 300 and height > 100
    trec = comparisons[1].snapshots["best"]
    assert trec.prototype_kind == "proxies" and trec.prototypes.shape[0] == 6 * 2  # 2 SoftTriple centers per class


# ----------------------------------------------------------------- search -> retrain -> report


def tunedml(*args: str, cwd: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "tunedml.cli", *args], capture_output=True, text=True, env=env, timeout=900, cwd=cwd
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return run


@pytest.mark.slow
def test_search_then_retrain_then_report(tmp_path, tiny_roberta, data_dir):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = [
        "--data-dir",
        data_dir,
        "--model",
        tiny_roberta,
        "--set",
        "data.k=2",
        "--set",
        "data.max_length=32",
        "--tracking-uri",
        uri,
    ]
    search = [
        "search",
        "--datasets",
        "trec",
        "--trials",
        "1",
        "--scheduler",
        "none",
        "--storage",
        str(tmp_path / "ray"),
        *common,
    ]
    tunedml(*search, "--space", os.path.join(SPACES, "cce.yaml"), cwd=str(tmp_path))
    tunedml(*search, "--space", os.path.join(SPACES, "dml.yaml"), "--set", "train.epochs=1", cwd=str(tmp_path))

    run = tunedml(
        "retrain",
        "--dataset",
        "trec",
        *common,
        "--seeds",
        "2",
        "--set",
        "train.epochs=1",
        "--concurrency",
        "1",
        "--json",
        cwd=str(tmp_path),
    )
    out = json.loads(run.stdout)
    assert "(space dml)" in out["best"]["source"] and "(space cce)" in out["baseline"]["source"]
    assert [d["data_seed"] for d in out["best"]["draws"]] == [d["data_seed"] for d in out["baseline"]["draws"]]

    report = tmp_path / "report"
    run = tunedml("report", "--out", str(report), "--tracking-uri", uri, cwd=str(tmp_path))
    lines = [line for line in run.stdout.splitlines() if line.startswith("| trec |")]
    rows_ = [line for line in lines if "| kshot k=" in line]  # the results table; the optimism table follows
    assert len(rows_) == 1 and f"| {out['best']['loss']} |" in rows_[0]
    assert [line.split("|")[2].strip() for line in lines if line not in rows_] == ["CCE", "best"]
    for name in ("diff.png", "embeddings_trec.png"):
        opens_as_image(report / name)
    assert (report / "results.csv").read_text().count("\ntrec,") == 2

    client = MlflowClient(uri)
    [logged] = client.search_runs([client.get_experiment_by_name("tunedml/report").experiment_id])
    assert {f.path for f in client.list_artifacts(logged.info.run_id)} == {
        "results.md",
        "results.csv",
        "diff.png",
        "embeddings_trec.png",
    }
    assert logged.data.tags["tunedml.final_runs"] == out["mlflow"]["runs"]["best"]


@pytest.mark.slow  # a new MLflow store and the report's imports in a subprocess: ~15 s
def test_report_without_final_runs_is_one_line_and_exit_code_2(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    from mlflow import MlflowClient

    MlflowClient(f"sqlite:///{tmp_path / 'm.db'}").search_experiments()  # a store exists, with no final run in it
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "tunedml.cli",
            "report",
            "--tracking-uri",
            str(tmp_path / "m.db"),
            "--out",
            str(tmp_path / "report"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 2 and run.stderr.count("\n") == 1
    assert "no final evaluation recorded" in run.stderr and not (tmp_path / "report").exists()
