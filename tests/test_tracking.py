"""MLflow tracking of searches, on real stores: a SQLite file and a real `mlflow server` on loopback.

Searches run through the `tunedml` command in this process (so they share one local Ray); `best`,
a wrong tracking URI and the server run as subprocesses, as a user runs them. The server is the one
`tunedml ui` starts (`mlflow server` on 127.0.0.1), so one server start covers both.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from mlflow import MlflowClient

from tunedml.cli import main
from tunedml.config import build_config, from_flat
from tunedml.errors import ConfigError, TrackingError
from tunedml.tracking import (
    BEST_CONFIG,
    PLOTS,
    UI_ENV,
    check_tracking,
    experiment_name,
    find_best,
    resolve_tracking_uri,
)

SPACES = {
    # head inference on a tiny random model: a coin toss on dev
    "head": """
loss.name:
  choice:
    none: {}
    proxy_anchor:
      loss.margin: {uniform: [0.0, 0.5]}
train.lr: {loguniform: [1.0e-4, 1.0e-3]}
train.epochs: 2
inference.mode: head
""",
    # nearest class center of the training embeddings: better than the coin toss on this draw
    "proxy": """
train.lr: {loguniform: [1.0e-5, 1.0e-4]}
train.epochs: 2
inference.mode: proxy
""",
    # every trial fails: run with a model whose every forward pass is NaN (the nan_model fixture)
    "broken": """
train.lr: {loguniform: [1.0e-4, 1.0e-3]}
train.epochs: 2
""",
}
STATUSES = {"FINISHED", "KILLED", "FAILED"}


# ----------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tunedml(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tunedml.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
        timeout=600,
    )


def in_process(*args: str) -> tuple[int, str]:
    """Run `tunedml` in this process; (exit code, stdout).

    Ray pickles the search's callbacks, and cloudpickle pickles sys.stderr only when it is the real
    one: pytest's capturing stand-in (held by the progress lines) is swapped out meanwhile; the
    output still reaches pytest through file descriptor 2.
    """
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(sys.__stderr__):
        code = main(list(args))
    return code, out.getvalue()


def wait_for_http(url: str, proc: subprocess.Popen, log: Path, limit_s: float = 180) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args[:4]} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        time.sleep(0.5)
    pytest.fail(f"{url} did not answer within {limit_s}s:\n{log.read_text()[-3000:]}")


def stop_group(proc: subprocess.Popen) -> None:
    """Stop a process started with start_new_session=True, and everything it started."""
    for sig, wait_s in ((signal.SIGINT, 30), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait_s)
            return


@contextlib.contextmanager
def started(cmd: list[str], folder: Path, health: str, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    log = folder / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=folder,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **UI_ENV, **(env or {})},
        )
    try:
        wait_for_http(health, proc, log)
        yield proc
    finally:
        stop_group(proc)


# ----------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def ray_local():
    import ray

    from tunedml.search import init_ray

    started_here = not ray.is_initialized()
    init_ray(None, False)
    yield
    if started_here:
        ray.shutdown()


@pytest.fixture(scope="module")
def spaces(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("spaces")
    for name, text in SPACES.items():
        (folder / f"{name}.yaml").write_text(text)
    return {name: str(folder / f"{name}.yaml") for name in SPACES}


@pytest.fixture(scope="module")
def run_search(ray_local, spaces, tiny_roberta, data_dir, tmp_path_factory):
    storage = tmp_path_factory.mktemp("results")

    def run(uri: str, space: str, trials: int, model: str | None = None, code: int = 0) -> dict[str, Any]:
        k = [] if "data.k" in SPACES[space] else ["--set", "data.k=4"]  # the command line would win
        exit_code, out = in_process(
            "search",
            "--datasets",
            "sst2",
            "--data-dir",
            data_dir,
            "--model",
            model or tiny_roberta,
            "--space",
            spaces[space],
            "--trials",
            str(trials),
            *k,
            "--scheduler",
            "none",
            "--storage",
            str(storage),
            "--tracking-uri",
            uri,
            "--json",
        )
        assert exit_code == code  # 1: the search ran and no trial produced a score
        return json.loads(out)

    return run


@pytest.fixture(scope="module")
def sqlite_uri(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def recorded(run_search, sqlite_uri, nan_model) -> dict[str, dict[str, Any]]:
    """Three searches of sst2 in one SQLite store: a coin toss, a better one, one where all fail."""
    return {
        "head": run_search(sqlite_uri, "head", 2),
        "proxy": run_search(sqlite_uri, "proxy", 2),
        "broken": run_search(sqlite_uri, "broken", 1, model=nan_model, code=1),
    }


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory) -> Iterator[tuple[str, subprocess.Popen]]:
    """`tunedml ui` on a store of its own: an `mlflow server` subprocess on a free loopback port."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "tunedml.cli",
        "ui",
        "--port",
        str(port),
        "--tracking-uri",
        f"sqlite:///{folder / 'server.db'}",
    ]
    with started(cmd, folder, f"http://127.0.0.1:{port}/health") as proc:
        yield f"http://127.0.0.1:{port}", proc
        proc.terminate()  # SIGTERM to `tunedml ui` alone takes its server along; the group is stopped anyway
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=60)


# ----------------------------------------------------------------- what a search records


def assert_search_recorded(uri: str, summary: dict[str, Any], space_file: str, trials: int) -> None:
    """The parent run, its nested trial runs and the outcome of a finished search are all there."""
    client = MlflowClient(uri)
    parent = client.get_run(summary["mlflow"]["run_id"])
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.name == experiment_name("sst2") == "tunedml/sst2"
    tags = parent.data.tags
    assert parent.info.status == "FINISHED"
    assert tags["tunedml.role"] == "search" and tags["tunedml.dataset"] == "sst2"
    assert tags["tunedml.space"] == Path(space_file).stem and tags["tunedml.space_file"] == space_file
    assert len(tags["tunedml.space_sha256"]) == 64 and tags["tunedml.protocol"] == "kshot" and tags["tunedml.k"] == "4"
    assert tags["tunedml.model"] == summary["best_config"]["model.name"]
    assert tags["tunedml.ray_address"] == "local" and tags["tunedml.version"]
    assert tags["tunedml.search"] == Path(summary["path"]).name == parent.info.run_name
    assert parent.data.params["search.trials"] == str(trials)
    if "loss.name" in summary["per_option"]:  # each loss's share of the search, as in the printed summary
        counts = {
            o: parent.data.metrics.get(f"per_option.loss.name.{o}.trials") for o in summary["per_option"]["loss.name"]
        }
        assert counts == {o: r["trials"] for o, r in summary["per_option"]["loss.name"].items()}
        assert sum(counts.values()) == trials

    children = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == summary["trials"] == trials
    for child in children:
        assert child.data.tags["tunedml.role"] == "trial" and child.data.tags["ray.node_id"]
        assert child.info.status in STATUSES
        params = child.data.params
        full = from_flat(params, source="child params").to_flat()
        assert set(params) == set(full) and params["train.epochs"] == "2" and params["data.k"] == "4"
        assert child.data.tags["tunedml.collapsed"] in ("true", "false")
        for key in ("dev_accuracy", "dev_macro_f1", "train_loss", "loss_ce"):
            history = client.get_metric_history(child.info.run_id, key)
            assert [m.step for m in history] == [1, 2], key
        if child.info.status == "KILLED":
            assert child.data.tags["tunedml.stopped_early"] == "true"

    best_child = next(c for c in children if c.data.tags["ray.trial_id"] == summary["best_trial"])
    assert tags["tunedml.best_run_id"] == best_child.info.run_id
    assert parent.data.metrics["best_score"] == summary["best_score"] == best_child.data.metrics["dev_accuracy"]
    assert parent.data.metrics["best_dev_macro_f1"] == best_child.data.metrics["dev_macro_f1"]
    searched = {k[len("best.") :]: v for k, v in parent.data.params.items() if k.startswith("best.")}
    assert searched and all(best_child.data.params[k] == v for k, v in searched.items())

    files = {f.path for f in client.list_artifacts(parent.info.run_id)}
    assert {BEST_CONFIG, "space", "plots"} <= files
    with tempfile.TemporaryDirectory() as tmp:
        local = client.download_artifacts(parent.info.run_id, BEST_CONFIG, tmp)
        assert build_config(local).to_flat() == summary["best_config"]
    assert [f.path for f in client.list_artifacts(parent.info.run_id, "space")] == [f"space/{Path(space_file).name}"]
    plot_files = [Path(f.path) for f in client.list_artifacts(parent.info.run_id, "plots")]
    assert {p.suffix for p in plot_files} == {".png"}  # images: they show in the UI without internet
    plots = {p.stem for p in plot_files}
    skipped = {name for name in PLOTS if f"plot {name} skipped" in tags.get("tunedml.notes", "")}
    assert "optimization_history" in plots and plots | skipped == set(PLOTS)


@pytest.mark.slow  # starts Ray
def test_search_on_sqlite_records_parent_trials_and_best(recorded, sqlite_uri, spaces):
    assert_search_recorded(sqlite_uri, recorded["head"], spaces["head"], trials=2)
    assert_search_recorded(sqlite_uri, recorded["proxy"], spaces["proxy"], trials=2)


@pytest.mark.slow  # starts Ray
def test_failed_trials_are_recorded_with_their_reason(recorded, sqlite_uri):
    client = MlflowClient(sqlite_uri)
    parent = client.get_run(recorded["broken"]["mlflow"]["run_id"])
    assert parent.info.status == "FAILED" and parent.data.tags["tunedml.error"] == "no trial produced a score"
    (child,) = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert child.info.status == "FAILED"
    assert "NonFiniteLossError" in child.data.tags["tunedml.error"]


@pytest.mark.slow  # starts Ray
def test_best_returns_the_better_search_and_its_config_trains(recorded, sqlite_uri, tmp_path):
    head, proxy = recorded["head"], recorded["proxy"]
    assert proxy["best_score"] > head["best_score"], "the fixture's two searches should differ"
    code, out = in_process("best", "--dataset", "sst2", "--json", "--tracking-uri", sqlite_uri)
    assert code == 0
    best = json.loads(out)
    assert best["run_id"] == proxy["mlflow"]["run_id"] and best["score"] == proxy["best_score"]
    assert best["space"] == "proxy" and best["objective"] == "dev_accuracy"
    assert best["config"] == proxy["best_config"]

    only_head = find_best(sqlite_uri, "sst2", space="search_spaces/head.yaml")
    assert only_head.run_id == head["mlflow"]["run_id"] and only_head.config == head["best_config"]

    # the printed YAML is a run config: training it reproduces the best trial's dev score
    run = tunedml("best", "--dataset", "sst2", "--tracking-uri", sqlite_uri)
    assert run.returncode == 0 and run.stderr == "", run.stderr
    text = run.stdout
    assert text.startswith("# best dev_accuracy") and proxy["mlflow"]["run_id"] in text.splitlines()[0]
    (tmp_path / "best.yaml").write_text(text)
    code, out = in_process("train", "--config", str(tmp_path / "best.yaml"), "--json")
    assert code == 0 and json.loads(out)["dev"]["accuracy"] == pytest.approx(proxy["best_score"])


@pytest.mark.slow  # starts Ray
def test_best_says_when_nothing_is_recorded(recorded, sqlite_uri, capsys):
    assert main(["best", "--dataset", "mr", "--tracking-uri", sqlite_uri]) == 2
    out, err = capsys.readouterr()
    assert (
        out == "" and err.startswith("tunedml best: error: no search recorded for dataset 'mr'") and sqlite_uri in err
    )
    with pytest.raises(TrackingError, match="no finished search recorded for dataset 'sst2' and space 'dml'"):
        find_best(sqlite_uri, "sst2", space="dml.yaml")


@pytest.mark.slow  # starts Ray
def test_searches_lists_every_recorded_search_with_its_state(recorded, sqlite_uri):
    code, out = in_process("searches", "--json", "--tracking-uri", sqlite_uri)
    assert code == 0
    by_run = {s["run_id"]: s for s in json.loads(out)["searches"]}
    for space, state in (("head", "FINISHED"), ("proxy", "FINISHED"), ("broken", "FAILED")):
        summary = recorded[space]
        found = by_run[summary["mlflow"]["run_id"]]
        assert (found["dataset"], found["space"], found["state"], found["name"]) == (
            "sst2",
            space,
            state,
            Path(summary["path"]).name,
        )
        assert found["trials"] == found["budget"] == summary["trials"]
        assert found["best_score"] == summary["best_score"] and found["objective"] == "dev_accuracy"
    code, out = in_process("searches", "--datasets", "sst2", "--tracking-uri", sqlite_uri)
    header, *rows = out.splitlines()
    assert code == 0 and header.split() == ["dataset", "search", "space", "trials", "best", "state", "run"]
    broken = next(r.split() for r in rows if r.split()[-1] == recorded["broken"]["mlflow"]["run_id"])
    assert broken[2:] == ["broken", "1/1", "-", "FAILED", recorded["broken"]["mlflow"]["run_id"]]
    head = next(r.split() for r in rows if r.split()[-1] == recorded["head"]["mlflow"]["run_id"])
    assert head[4:6] == ["dev_accuracy", f"{recorded['head']['best_score']:.4f}"]


@pytest.mark.slow  # starts Ray
def test_best_out_writes_what_it_would_print(recorded, sqlite_uri, tmp_path):
    code, shown = in_process("best", "--dataset", "sst2", "--tracking-uri", sqlite_uri)
    out = tmp_path / "configs" / "best.yaml"
    code_out, printed = in_process("best", "--dataset", "sst2", "--tracking-uri", sqlite_uri, "--out", str(out))
    assert code == code_out == 0
    assert out.read_text() == shown and build_config(str(out)).to_flat() == recorded["proxy"]["best_config"]
    assert printed.startswith("best dev_accuracy ") and printed.rstrip().endswith(
        f"written to {out} (tunedml train --config {out})"
    )


@pytest.mark.slow  # starts an MLflow server
def test_search_through_an_mlflow_server(mlflow_server, run_search, spaces, monkeypatch, capsys):
    url, _ = mlflow_server
    summary = run_search(url + "/", "head", 2)
    assert summary["mlflow"]["tracking_uri"] == url
    assert_search_recorded(url, summary, spaces["head"], trials=2)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    assert main(["best", "--dataset", "sst2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["run_id"] == summary["mlflow"]["run_id"]


# ----------------------------------------------------------------- where it writes, and failing fast


def search_args(uri: str, spaces: dict[str, str], tiny_roberta: str, data_dir: str, storage: Path) -> list[str]:
    return [
        "search",
        "--datasets",
        "sst2",
        "--data-dir",
        data_dir,
        "--model",
        tiny_roberta,
        "--space",
        spaces["head"],
        "--trials",
        "2",
        "--storage",
        str(storage),
        "--tracking-uri",
        uri,
    ]


def test_unreachable_server_fails_before_ray_starts(spaces, tiny_roberta, data_dir, tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    run = tunedml(*search_args(uri, spaces, tiny_roberta, data_dir, tmp_path / "results"))
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr == f"tunedml search: error: cannot reach MLflow at {uri}: Connection refused\n"
    assert not (tmp_path / "results").exists()  # no trial, no Ray experiment


def test_unwritable_sqlite_fails_before_ray_starts(spaces, tiny_roberta, data_dir, tmp_path, capsys):
    uri = "sqlite:////proc/tunedml/mlflow.db"
    assert main(search_args(uri, spaces, tiny_roberta, data_dir, tmp_path / "results")) == 2
    err = capsys.readouterr().err
    assert (
        err == f"tunedml search: error: cannot use MLflow tracking URI {uri}: cannot create /proc/tunedml "
        "(No such file or directory)\n"
    )
    assert not (tmp_path / "results").exists()


def test_tracking_uri_resolution(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path}/mlflow.db"
    assert resolve_tracking_uri("sqlite:///runs/m.db") == f"sqlite:///{tmp_path}/runs/m.db"
    assert resolve_tracking_uri("store.db") == f"sqlite:///{tmp_path}/store.db"
    assert resolve_tracking_uri("http://127.0.0.1:5000/") == "http://127.0.0.1:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///from-env.db")
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path}/from-env.db"
    assert resolve_tracking_uri("sqlite:////abs/x.db") == "sqlite:////abs/x.db"
    with pytest.raises(TrackingError, match="unsupported scheme 'ftp'"):
        check_tracking("ftp://host/x")
    with pytest.raises(TrackingError, match="in-memory"):
        check_tracking("sqlite:///:memory:")


def test_optuna_names_are_recovered_from_a_trial_config():
    """Optuna's plots are rebuilt from config keys: branch parameters get their `key|option` names."""
    import optuna

    from tunedml.space import config_keys, load_space

    space = load_space(Path(__file__).resolve().parents[1] / "search_spaces" / "dml.yaml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    for _ in range(8):
        trial = study.ask()
        config = space.define_by_run(trial)
        assert space.root.params(config_keys(config), space.path) == trial.params
        study.tell(trial, 0.5)


# ----------------------------------------------------------------- Optuna's plots, offline


def test_optuna_plots_are_images_that_need_no_network(tmp_path):
    """Each plot is a PNG that decodes, holding no script and no address to fetch (the HTML plots
    loaded plotly.js from a CDN: blank in the MLflow UI without internet); the plots with an axis
    per parameter show the few that mattered, so that they stay readable."""
    import optuna
    from PIL import Image

    from tunedml.search import TrialSummary
    from tunedml.space import config_keys, load_space
    from tunedml.tracking.plots import SHOWN_PARAMS, write_optuna_plots

    space = load_space(Path(__file__).resolve().parents[1] / "search_spaces" / "dml.yaml")
    proposer = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    trials = []
    for i in range(10):
        config = config_keys(space.define_by_run(proposer.ask()))
        trials.append(TrialSummary(f"t{i}", "KILLED" if i % 4 == 0 else "FINISHED", config, 0.5 + 0.02 * i, 20))
    notes: list[str] = []
    made = write_optuna_plots(space, trials, tmp_path, notes)
    assert made == list(PLOTS) and notes == []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{name}.png" for name in PLOTS)
    for name in PLOTS:
        data = (tmp_path / f"{name}.png").read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        assert b"http" not in data and b"<script" not in data and b"<html" not in data.lower()
        with Image.open(tmp_path / f"{name}.png") as image:
            image.load()  # decodes in full, here, with nothing fetched
            width, height = image.size
        assert 0 < height < 2000 and 0 < width < 300 * (SHOWN_PARAMS + 2), (name, image.size)


# ----------------------------------------------------------------- the UI


@pytest.mark.slow  # starts an MLflow server
def test_ui_serves_on_loopback_only(mlflow_server):
    import psutil

    url, proc = mlflow_server
    port = int(url.rsplit(":", 1)[1])
    with urllib.request.urlopen(f"{url}/api/2.0/mlflow/experiments/search?max_results=100", timeout=10) as r:
        assert "Default" in {e["name"] for e in json.load(r)["experiments"]}
    listening = {c.laddr.ip for c in psutil.net_connections("tcp") if c.laddr.port == port and c.status == "LISTEN"}
    assert listening == {"127.0.0.1"}
    assert proc.poll() is None


# ----------------------------------------------------------------- only comparable searches are ranked together


def record_search(
    client: MlflowClient,
    experiment_id: str,
    score: float,
    k: int,
    repeats: int = 1,
    rescore: int = 0,
    loss: str = "none",
    without: tuple[str, ...] = (),
) -> str:
    """A finished search run as `tunedml search` records it (the tags, params and files ranking reads);
    ``without``: keys its best_config.yaml lacks, as one written before those keys existed."""
    run = client.create_run(
        experiment_id,
        tags={
            "tunedml.role": "search",
            "tunedml.dataset": "sst2",
            "tunedml.space": "cce" if loss == "none" else "dml",
            "tunedml.protocol": "kshot",
            "tunedml.k": str(k),
            "tunedml.model": "minilm",
            "tunedml.objective": "dev_accuracy",
        },
    )
    run_id = run.info.run_id
    for key, value in {
        "search.metric": "accuracy",
        "search.repeats": repeats,
        "search.rescore": rescore,
        "search.rescore_draws": 3,
        "base.loss.name": loss,
    }.items():
        client.log_param(run_id, key, value)
    client.log_metric(run_id, "best_dev_accuracy", score)
    cfg = build_config(sets=[f"data.k={k}", f"loss.name={loss}"])
    text = yaml.safe_dump({k: v for k, v in cfg.to_flat().items() if k not in without}) if without else cfg.to_yaml()
    client.log_text(run_id, text, BEST_CONFIG)
    client.set_terminated(run_id, "FINISHED")
    return run_id


def test_searches_that_differ_in_k_repeats_or_rescoring_are_not_ranked_together(tmp_path, capsys):
    from tunedml.tracking.searches import parse_filters

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment(experiment_name("sst2"))
    k16 = record_search(client, experiment_id, 0.80, k=16)
    record_search(client, experiment_id, 0.70, k=16)
    k8 = record_search(client, experiment_id, 0.95, k=8)  # a higher score, on a smaller draw: not comparable
    with pytest.raises(ConfigError, match=r"dataset 'sst2' has searches that cannot be ranked together: ") as info:
        find_best(uri, "sst2")
    assert "2 with protocol=kshot k=16 " in str(info.value) and "1 with protocol=kshot k=8 " in str(info.value)
    assert "pick one with --run-id RUN, or keep one kind with --filter NAME=VALUE (e.g. --filter k=" in str(info.value)
    assert find_best(uri, "sst2", filters=parse_filters(["k=16"])).run_id == k16
    assert find_best(uri, "sst2", filters=parse_filters(["k=8"])).run_id == k8
    rescored = record_search(client, experiment_id, 0.75, k=16, rescore=3)  # its score is a re-scored mean
    record_search(client, experiment_id, 0.90, k=16, repeats=3)
    groups = {"rescore=0 repeats=1": k16, "rescore=3": rescored}
    assert find_best(uri, "sst2", filters=parse_filters(["k=16", "rescore=3"])).run_id == groups["rescore=3"]
    with pytest.raises(ConfigError, match="cannot be ranked together"):
        find_best(uri, "sst2", filters=parse_filters(["k=16"]))  # repeats 1 and 3, re-scored or not
    with pytest.raises(ConfigError, match=r"--filter 'size=16': expected NAME=VALUE with NAME one of protocol, k"):
        parse_filters(["size=16"])
    # the command: one line, exit 2, naming the groups and how to pick
    capsys.readouterr()
    assert main(["best", "--dataset", "sst2", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot be ranked together" in err[0] and "--filter" in err[0]
    assert main(["best", "--dataset", "sst2", "--tracking-uri", uri, "--filter", "k=8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["run_id"] == k8


def test_retrain_takes_its_baseline_from_searches_comparable_with_the_chosen_one(tmp_path):
    from tunedml.tracking import best_searches

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment(experiment_name("sst2"))
    dml16 = record_search(client, experiment_id, 0.80, k=16, loss="proxy_anchor")
    cce16 = record_search(client, experiment_id, 0.70, k=16)
    record_search(client, experiment_id, 0.99, k=8)  # the best CCE score, but on another draw size
    best, baseline = best_searches(uri, "sst2", like=dml16)
    assert (best.run_id, baseline.run_id) == (dml16, cce16)
    with pytest.raises(ConfigError, match="cannot be ranked together"):
        best_searches(uri, "sst2")


def test_a_configuration_recorded_before_a_key_existed_reads_back_as_it_ran(tmp_path, capsys):
    """head.init came after searches were recorded, with a new default: a recorded choice without
    the key trained with a random head, and retrains with one; a record that has the key keeps it."""
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment(experiment_name("sst2"))
    old = record_search(client, experiment_id, 0.90, k=16, without=("head.init",))
    assert find_best(uri, "sst2").run_id == old and find_best(uri, "sst2").config["head.init"] == "random"
    assert main(["best", "--dataset", "sst2", "--tracking-uri", uri]) == 0
    assert "  init: random" in capsys.readouterr().out  # what `tunedml train --config` is given
    new = record_search(client, experiment_id, 0.95, k=16)
    assert find_best(uri, "sst2").run_id == new and find_best(uri, "sst2").config["head.init"] == "probe"
