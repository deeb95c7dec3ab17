"""Searches on a real local Ray with the tiny model: results, failures, Ctrl-C and a killed driver.

The command-line tests run `tunedml search` in a subprocess (each starts its own Ray, as a user's
search does); the others share one Ray in this process.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tunedml.cli import main, print_search_result
from tunedml.config import from_flat
from tunedml.errors import ConfigError
from tunedml.search import (
    RunBounds,
    SearchOptions,
    SearchResult,
    TrialSummary,
    best_trial,
    check_per_option,
    describe,
    experiment_path,
    init_ray,
    make_scheduler,
    parse_per_option,
    repeat_config,
    run_bounds,
    run_search,
)
from tunedml.space import load_space
from tunedml.train import prepare_tokens

WAIT_S = 600  # only against a hung process; no test asserts on time

TWO_LOSSES = """
loss.name:
  choice:
    none: {}
    proxy_anchor:
      loss.margin: {uniform: [0.0, 0.5]}
train.lr: {loguniform: [1.0e-5, 2.0e-4]}
train.epochs: %d
"""


# ----------------------------------------------------------------- a `tunedml search` process


class Search:
    """`tunedml search ...` in its own session; stderr is read line by line as it comes."""

    def __init__(self, args: list[str], cwd: Path):
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tunedml.cli", "search", *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        self.stdout: list[str] = []
        self.readers = [
            threading.Thread(target=self._read, args=(self.proc.stderr, self.lines), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stdout, None), daemon=True),
        ]
        for reader in self.readers:
            reader.start()

    def _read(self, stream, lines: queue.Queue | None) -> None:
        for line in stream:
            (self.stderr if lines is not None else self.stdout).append(line)
            if lines is not None:
                lines.put(line)
        if lines is not None:
            lines.put(None)

    def wait_for(self, prefix: str) -> str:
        """The first stderr line starting with ``prefix``."""
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                break
            if line.startswith(prefix):
                return line
        pytest.fail(f"no line {prefix!r}; rc {self.proc.poll()}; stderr:\n{''.join(self.stderr)}")

    def finish(self) -> tuple[int, str, str]:
        rc = self.proc.wait(timeout=WAIT_S)
        for reader in self.readers:
            reader.join(timeout=30)
        return rc, "".join(self.stdout), "".join(self.stderr)

    def stop(self) -> None:
        """Kill the whole session (the driver and any Ray process it left): teardown, also on failure."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=60)


@pytest.fixture
def searches(tmp_path):
    started: list[Search] = []

    def start(*args: str) -> Search:
        search = Search(list(args), cwd=tmp_path)  # MLflow's default ./mlflow.db lands in tmp_path
        started.append(search)
        return search

    try:
        yield start
    finally:
        for search in started:
            search.stop()


def trial_ids(stderr: str) -> list[str]:
    """The trial ids of the 'trial k/N <id> ...' lines."""
    return [line.split()[2] for line in stderr.splitlines() if line.startswith("trial ")]


def saved_statuses(path: Path) -> dict[str, str]:
    """Trial statuses as Ray last saved them (what --resume goes by)."""
    from ray.tune import ExperimentAnalysis

    try:
        return {t.trial_id: t.status for t in ExperimentAnalysis(str(path)).trials}
    except Exception:  # not written yet, or being written
        return {}


# ----------------------------------------------------------------- end to end from the command line


@pytest.mark.slow  # starts Ray
def test_two_trial_search_on_two_datasets_prints_best_configs(
    local_ray, tmp_path, tiny_roberta, data_dir, monkeypatch, capsys
):
    """The command's whole path (in this process, on the shared Ray): two datasets, two trials each."""
    monkeypatch.chdir(tmp_path)  # MLflow's default ./mlflow.db lands here
    space = tmp_path / "two.yaml"
    space.write_text(TWO_LOSSES % 2)
    rc = main(
        [
            "search",
            "--datasets",
            "sst2,trec",
            "--data-dir",
            data_dir,
            "--space",
            str(space),
            "--trials",
            "2",
            "--model",
            tiny_roberta,
            "--set",
            "data.k=2",
            "--storage",
            str(tmp_path / "results"),
            "--json",
        ]
    )
    stdout, stderr = capsys.readouterr()
    assert rc == 0, stderr
    summaries = json.loads(stdout)  # stdout is the JSON alone
    assert [s["dataset"] for s in summaries] == ["sst2", "trec"]
    for s in summaries:
        assert s["trials"] == 2 and s["failed"] == [] and s["finished"] + s["stopped_early"] == 2
        assert 0.0 <= s["best_score"] <= 1.0
        best = s["best_config"]
        assert best["data.dataset"] == s["dataset"] and best["model.name"] == tiny_roberta and best["data.k"] == 2
        assert best["loss.name"] in ("none", "proxy_anchor") and best["train.epochs"] == 2
        # the start spreads over the options: each loss got one of the two trials
        assert {k: v["trials"] for k, v in s["per_option"]["loss.name"].items()} == {"none": 1, "proxy_anchor": 1}
        from_flat(best)  # a complete, valid run config: `tunedml train --config` takes it
        folder = Path(s["path"])
        assert folder.parent == tmp_path / "results" and folder.name.startswith(f"{s['dataset']}-two-")
        assert (folder / "tunedml_search.json").is_file()
        ids = {p.name.removeprefix("trial_") for p in folder.glob("trial_*")}  # named by the id each line shows
        assert len(ids) == 2 and ids <= set(trial_ids(stderr)) and s["best_trial"] in ids
    lines = stderr.splitlines()
    assert [ln.split()[1] for ln in lines if ln.startswith("trial ")] == ["1/2", "2/2", "1/2", "2/2"]
    assert any(ln.startswith("search sst2 over") for ln in lines) and any(
        ln.startswith("search trec over") for ln in lines
    )
    assert "== Status ==" not in stderr and "+---" not in stderr  # Ray's own reporting stays quiet


@pytest.mark.slow  # starts Ray
def test_interrupted_and_killed_search_resumes_without_rerunning_finished_trials(
    searches, tmp_path, tiny_roberta, data_dir
):
    space = tmp_path / "resume.yaml"
    space.write_text(TWO_LOSSES % 8)
    args = [
        "--datasets",
        "sst2",
        "--data-dir",
        data_dir,
        "--space",
        str(space),
        "--trials",
        "3",
        "--model",
        tiny_roberta,
        "--set",
        "data.k=2",
        "--scheduler",
        "none",
        "--storage",
        str(tmp_path / "results"),
    ]
    path = tmp_path / "results" / "interrupted"

    # Ctrl-C after the first trial: Ray saves the state; the command says how to go on
    first = searches(*args, "--name", "interrupted")
    finished_first = first.wait_for("trial 1/3").split()[2]
    first.proc.send_signal(signal.SIGINT)
    rc, _, stderr = first.finish()
    assert rc == 130, stderr
    assert "interrupted: 1 of 3 trials ended" in stderr and "--resume --name interrupted" in stderr

    # resumed, then the driver is killed (SIGKILL) once Ray has saved a second finished trial
    second = searches(*args, "--resume", "--name", "interrupted")
    finished_second = second.wait_for("trial 2/3").split()[2]  # the count goes on from the first run
    assert finished_second != finished_first
    deadline = time.monotonic() + WAIT_S
    while saved_statuses(path).get(finished_second) != "TERMINATED" and time.monotonic() < deadline:
        time.sleep(0.5)
    second.proc.send_signal(signal.SIGKILL)
    second.finish()
    done_before = {t for t, status in saved_statuses(path).items() if status == "TERMINATED"}
    assert {finished_first, finished_second} <= done_before

    # resumed again: only the trials that had not ended run, and the search completes
    third = searches(*args, "--resume", "--name", "interrupted", "--json")
    rc, stdout, stderr = third.finish()
    assert rc == 0, stderr
    rerun = set(trial_ids(stderr))
    assert not rerun & done_before, f"finished trials ran again: {rerun & done_before}"
    assert [ln.split()[1] for ln in stderr.splitlines() if ln.startswith("trial ")] == [
        f"{k}/3" for k in range(len(done_before) + 1, 4)
    ]
    summary = json.loads(stdout)
    assert summary["trials"] == 3 and summary["finished"] == 3 and summary["failed"] == []
    assert set(saved_statuses(path).values()) == {"TERMINATED"}


def test_invalid_space_stops_with_one_line_and_exit_2(searches, tmp_path, tiny_roberta, data_dir):
    space = tmp_path / "bad.yaml"
    space.write_text("loss.name: proxy_anchor\nloss.margin: {uniform: [0.5, 0.1]}\n")
    run = searches(
        "--datasets",
        "sst2",
        "--data-dir",
        data_dir,
        "--space",
        str(space),
        "--model",
        tiny_roberta,
        "--storage",
        str(tmp_path / "results"),
    )
    rc, stdout, stderr = run.finish()
    assert rc == 2
    assert stderr.strip().splitlines() == [f"tunedml search: error: {space}: loss.margin: low 0.5 > high 0.1"]
    assert stdout == "" and not (tmp_path / "results").exists()  # nothing started


# ----------------------------------------------------------------- through the Python API, one shared Ray


@pytest.fixture(scope="module")
def local_ray():
    import ray

    started = not ray.is_initialized()
    init_ray(None, verbose=False)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


RECIPES = """
loss.name: supcon
train.steps: 4
train.eval_every: 2
train.batch_size: 4
data.sampler: {categorical: [random, m_per_class]}
train.schedule:
  choice:
    joint: {}
    two_stage:
      head.fit: {categorical: [linear, logistic]}
"""


@pytest.mark.slow  # starts Ray
def test_a_search_over_samplers_and_schedules_reports_stages_and_batches(
    local_ray, tmp_path, tiny_roberta, data_dir, monkeypatch, capsys
):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    space = tmp_path / "recipes.yaml"
    space.write_text(RECIPES)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rc = main(
        [
            "search",
            "--datasets",
            "sst2",
            "--data-dir",
            data_dir,
            "--space",
            str(space),
            "--trials",
            "2",
            "--model",
            tiny_roberta,
            "--set",
            "data.k=2",
            "--storage",
            str(tmp_path / "results"),
            "--scheduler",
            "none",
            "--start-per-option",
            "train.schedule=1",
            "--tracking-uri",
            uri,
            "--json",
        ]
    )
    stdout, stderr = capsys.readouterr()
    assert rc == 0, stderr
    summary = json.loads(stdout)
    assert summary["failed"] == [] and summary["finished"] == 2
    assert {k: v["trials"] for k, v in summary["per_option"]["train.schedule"].items()} == {"joint": 1, "two_stage": 1}
    client = MlflowClient(uri)
    parent = client.get_run(summary["mlflow"]["run_id"])
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    for child in children:
        stages = [m.value for m in client.get_metric_history(child.info.run_id, "stage")]
        schedule, fit = child.data.params["train.schedule"], child.data.params["head.fit"]
        expected = {"joint": [0, 0], "two_stage": [1, 2]}[schedule]  # linear: stage 1 ends at step 2, where dev is
        assert stages == expected, (schedule, fit, stages)
        without = {
            key: client.get_metric_history(child.info.run_id, key)
            for key in ("batches_without_positives", "examples_without_positive")
        }
        assert all([m.step for m in history] == [2, 4] for history in without.values())
        if child.data.params["data.sampler"] == "m_per_class":  # 2 of each class in every batch of 4
            assert all([m.value for m in history] == [0, 0] for history in without.values())
        logged = {
            key: [m.step for m in client.get_metric_history(child.info.run_id, key)] for key in ("loss_dml", "loss_ce")
        }
        expected = {
            "joint": {"loss_dml": [2, 4], "loss_ce": [2, 4]},
            "linear": {"loss_dml": [2], "loss_ce": [4]},
            "logistic": {"loss_dml": [2, 4], "loss_ce": [4]},
        }[fit if schedule == "two_stage" else schedule]
        assert logged == expected, (schedule, fit)  # two stages: DML alone, then the head's CCE


@pytest.mark.slow  # starts Ray
def test_failing_trial_is_recorded_with_its_reason_and_the_others_finish(
    local_ray, tmp_path, tiny_roberta, nan_model, data_dir, capsys
):
    from ray.tune import ExperimentAnalysis

    space_file = tmp_path / "models.yaml"
    space_file.write_text(f"model.name: {{categorical: [{tiny_roberta}, {nan_model}]}}\ntrain.epochs: 2\n")
    base = {"data.dataset": "sst2", "data.data_dir": data_dir, "data.k": 2}
    space = load_space(space_file, base)
    space.check_against(base)
    tokens = prepare_tokens(from_flat({**base, "model.name": tiny_roberta}))
    options = SearchOptions(
        trials=2,
        scheduler="none",
        cpus_per_trial=1,
        repeats=2,
        storage=str(tmp_path / "results"),
        points=[{"model.name": nan_model}, {"model.name": tiny_roberta}],
    )
    result = run_search(tokens, base, space, options)

    (failed,) = result.failures
    assert failed.config["model.name"] == nan_model
    assert failed.error.startswith("NonFiniteLossError: non-finite loss at step 1: ce=nan"), failed.error
    assert (
        result.best is not None
        and result.best.status == "FINISHED"
        and result.best.config["model.name"] == tiny_roberta
    )
    assert result.best_config["model.name"] == tiny_roberta
    assert result.to_dict()["failed"] == [{"trial": failed.trial_id, "error": failed.error}]

    last = {t.trial_id: t.last_result for t in ExperimentAnalysis(result.path).trials}[result.best.trial_id]
    assert last["threads"] == 1  # torch computes with the CPUs the trial was granted
    assert "dev_accuracy_std" in last  # two draws per trial, averaged
    # the reported score is the mean of the two repeats, each trained here alone on its own draw and seed
    from tunedml.search.trainable import repeat_config
    from tunedml.train import Trainer, draw_for

    cfg = from_flat({**base, "model.name": tiny_roberta, "train.epochs": 2, "train.threads": 1})
    alone = []
    for r in range(2):
        c = repeat_config(cfg, r)
        alone.append(Trainer(c, tokens, draw_for(c, tokens)).fit(evaluate_test=False).dev)
    assert (
        alone[0] != alone[1]
        or draw_for(repeat_config(cfg, 0), tokens).dev.tolist() != draw_for(repeat_config(cfg, 1), tokens).dev.tolist()
    )  # two draws, not one twice
    for m in ("accuracy", "macro_f1"):
        assert last[f"dev_{m}"] == pytest.approx(np.mean([d[m] for d in alone]))
        assert last[f"dev_{m}_std"] == pytest.approx(np.std([d[m] for d in alone]))

    lines = capsys.readouterr().err
    assert f"{failed.trial_id} FAILED: NonFiniteLossError: non-finite loss at step 1" in lines
    print_search_result(result)
    summary = capsys.readouterr().out
    assert "(1 finished, 0 stopped early, 1 failed)" in summary
    assert f"failed {failed.trial_id}: NonFiniteLossError: non-finite loss at step 1: ce=nan" in summary


# ----------------------------------------------------------------- the pieces, no Ray


def rungs(scheduler) -> list[list[int]]:
    """The milestones (optimizer steps) at which each of an ASHA scheduler's brackets compares trials."""
    return [[int(milestone) for milestone, _ in bracket._rungs] for bracket in scheduler._brackets]


def test_the_scheduler_runs_to_the_longest_run_of_any_branch_in_steps(tmp_path):
    path = tmp_path / "lengths.yaml"
    path.write_text(
        "train.warmup_ratio: {uniform: [0.0, 0.2]}\ntrain.batch_size: {categorical: [8, 16]}\n"
        "loss.name:\n  choice:\n    none:\n      train.steps: {categorical: [40, 300]}\n"
        "    supcon:\n      train.epochs: {int: [2, 12]}\n"
    )
    space = load_space(path)
    # 12 epochs of 32 examples at the smallest batch (8) are 48 steps; the longest run is 300 steps
    assert run_bounds(space, {}, train_size=32) == RunBounds(steps=300, warmup=60)
    assert run_bounds(space, {}, train_size=320) == RunBounds(steps=480, warmup=96)  # 12 epochs of 40 steps
    scheduler = make_scheduler("asha", RunBounds(300, 60), "dev_accuracy")
    assert scheduler._max_t == 300 and scheduler._time_attr == "step"
    assert make_scheduler("none", RunBounds(300, 60), "dev_accuracy") is None


@pytest.mark.parametrize(
    "bounds, first",
    [
        (RunBounds(200, 10), 50),  # a quarter of the run
        (RunBounds(200, 80), 80),  # the longest warmup the space allows
        (RunBounds(7, 0), 2),
    ],
)
def test_no_rung_comes_before_the_longest_warmup_or_a_quarter_of_the_run(bounds, first):
    assert bounds.first_rung == first
    for name in ("asha", "hyperband"):
        milestones = [m for bracket in rungs(make_scheduler(name, bounds, "dev_accuracy")) for m in bracket]
        assert milestones and min(milestones) == first and max(milestones) < bounds.steps, (name, milestones)
    assert len(rungs(make_scheduler("hyperband", bounds, "dev_accuracy"))) == 3  # asynchronous HyperBand: 3 brackets


def test_a_run_too_short_to_stop_early_has_no_scheduler():
    assert make_scheduler("asha", RunBounds(1, 0), "dev_accuracy") is None


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"trials": 0}, "--trials must be >= 1"),
        ({"repeats": 0}, "--repeats must be between 1 and 500"),
        ({"rescore": 3, "trials": 2}, "--rescore must be between 0 and --trials"),
        ({"rescore_draws": 0}, "--rescore-draws"),
        ({"concurrency": 0}, "--concurrency"),
        ({"cpus_per_trial": 0.0}, "--cpus-per-trial"),
        ({"gpus_per_trial": -0.5}, "--gpus-per-trial"),
        ({"time_budget_s": 0.0}, "--time-budget"),
        ({"scheduler": "pbt"}, "unknown scheduler 'pbt'"),
        ({"metric": "macro-f1"}, "did you mean 'macro_f1'"),
    ],
)
def test_search_options_reject_bad_values(change, fragment):
    with pytest.raises(ConfigError, match=fragment):
        SearchOptions(**change).validate()


def test_resume_without_a_previous_search_is_a_user_error(tmp_path):
    space = load_space(Path(__file__).resolve().parents[1] / "search_spaces" / "cce.yaml")
    with pytest.raises(ConfigError, match="--resume: no search sst2-cce-"):
        experiment_path("sst2", space, SearchOptions(resume=True, storage=str(tmp_path)))


def test_trial_line_shows_the_loss_first_and_hides_fixed_keys():
    config = {
        "train.lr": 1e-5,
        "loss.margin": 0.25,
        "loss.margin|proxy_anchor": 0.25,
        "loss.name": "proxy_anchor",
        "train.epochs": 15,
    }
    assert describe(config, {"train.epochs"}) == "loss.name=proxy_anchor margin=0.25 train.lr=1e-05"


# ----------------------------------------------------------------- summary: per option, ties, per-option start


def trial(
    tid: str, loss: str, score: float | None, status: str = "FINISHED", spread: float | None = None
) -> TrialSummary:
    return TrialSummary(tid, status, {"loss.name": loss, "train.lr": 1e-4}, score, 3, None, spread)


def test_ties_on_the_mean_dev_score_go_to_the_lower_spread():
    trials = [
        trial("a", "supcon", 0.75, spread=0.08),
        trial("b", "none", 0.75, spread=0.02),
        trial("c", "supcon", 0.75, spread=0.05),
        trial("d", "none", 0.70, spread=0.0),
    ]
    assert best_trial(trials).trial_id == "b"
    assert (
        best_trial([trial("a", "none", 0.7), trial("b", "none", 0.8, status="KILLED")]).trial_id == "a"
    )  # finished first
    assert best_trial([trial("a", "none", None, status="FAILED")]) is None


def test_per_option_counts_trials_and_best_scores_of_every_option():
    result = SearchResult(
        "sst2", "dml", "/tmp/x", "dev_accuracy", choices={"loss.name": ["none", "supcon", "proxy_anchor"]}
    )
    result.trials = [
        trial("a", "supcon", 0.7),
        trial("b", "supcon", 0.8, status="KILLED"),
        trial("c", "none", 0.6),
        trial("d", "supcon", None, status="FAILED"),
    ]
    assert result.per_option("loss.name") == {
        "none": {"trials": 1, "finished": 1, "best": 0.6},
        "supcon": {"trials": 3, "finished": 1, "best": 0.7},
        "proxy_anchor": {"trials": 0, "finished": 0, "best": None},
    }
    assert result.to_dict()["per_option"] == {"loss.name": result.per_option("loss.name")}
    lines = result.option_lines()
    assert lines[0].split() == ["loss.name", "trials", "finished", "best", "dev_accuracy"]
    assert lines[2].split() == ["supcon", "3", "1", "0.7000"] and lines[3].split() == ["proxy_anchor", "0", "0", "-"]


@pytest.mark.parametrize(
    "text, expected", [("1", ("loss.name", 1)), ("0", ("loss.name", 0)), ("model.pooling=2", ("model.pooling", 2))]
)
def test_start_per_option_flag(text, expected):
    assert parse_per_option(text) == expected


@pytest.mark.parametrize("text", ["-1", "two", "loss.name=x"])
def test_start_per_option_flag_rejects_bad_values(text):
    with pytest.raises(ConfigError, match="--start-per-option .*expected N or KEY=N"):
        parse_per_option(text)


def test_start_per_option_for_a_key_that_is_no_choice_is_a_user_error(tmp_path):
    space = load_space(Path(__file__).resolve().parents[1] / "search_spaces" / "dml.yaml")
    pooled = tmp_path / "pooled.yaml"
    pooled.write_text("model.pooling: {categorical: [mean, cls]}\ntrain.lr: 1.0e-4\n")
    check_per_option(load_space(pooled), SearchOptions(per_option_key="model.pooling", per_option_start=1))
    check_per_option(load_space(Path(__file__).resolve().parents[1] / "search_spaces" / "cce.yaml"), SearchOptions())
    with pytest.raises(ConfigError, match="no top-level choice or categorical over train.lr; valid: .*loss.name"):
        check_per_option(space, SearchOptions(per_option_key="train.lr", per_option_start=1))


# ----------------------------------------------------------------- early stopping on the step clock

KEYWORDS = ("splendid", "dreadful")
FILLER = "the a of to and in is it that was for on as with his they at be this from have".split()
# a run of 40 steps whose warmup (half the run) is longer than a quarter of it: the first rung is at step 20
EARLY = (
    "train.lr: {categorical: [0.01, 1.0e-8]}\ntrain.steps: 40\ntrain.eval_every: 4\n"
    "train.warmup_ratio: 0.5\ntrain.batch_size: 8\n"
)


@pytest.fixture(scope="module")
def keyword_task(tmp_path_factory) -> str:
    """A task the tiny model learns in about 16 steps at lr 0.01: the label is the keyword that ends the text."""
    import random

    rng = random.Random(0)
    folder = tmp_path_factory.mktemp("keywords")
    for split, n in (("train", 200), ("test", 100)):
        rows = []
        for i in range(n):
            words = [*rng.choices(FILLER, k=2), KEYWORDS[i % 2]]
            rows.append(json.dumps({"text": " ".join(words), "label": i % 2}))
        (folder / f"{split}.jsonl").write_text("\n".join(rows) + "\n")
    return str(folder)


def early_search(tmp_path: Path, tiny_roberta: str, task: str, scheduler: str) -> tuple[TrialSummary, TrialSummary]:
    """A learning rate that learns (tried first) and one that cannot; (good, bad) trials.

    One trial at a time: ASHA judges a trial against those that reached the rung before it, so the
    learner must finish first (with two at a time the one that cannot learn may reach the rung alone).
    """
    space_file = tmp_path / "early.yaml"
    space_file.write_text(EARLY)
    base = {
        "data.dataset": task,
        "model.name": tiny_roberta,
        "data.k": 8,
        "data.max_length": 16,
        "train.threads": 1,
        "model.dropout": 0.0,
        "head.init": "random",  # a head probed on the keyword's embedding would know the task before any step
    }
    space = load_space(space_file, base)
    space.check_against(base)
    tokens = prepare_tokens(from_flat({**base, **space.root.fixed}))
    options = SearchOptions(
        trials=2,
        scheduler=scheduler,
        concurrency=1,
        storage=str(tmp_path / "results"),
        per_option_start=0,
        points=[{"train.lr": 0.01}, {"train.lr": 1e-8}],
    )
    result = run_search(tokens, base, space, options)
    by_lr = {t.config["train.lr"]: t for t in result.trials}
    return by_lr[0.01], by_lr[1e-8]


@pytest.mark.slow  # starts Ray
def test_asha_stops_a_trial_that_cannot_learn_at_its_first_rung_after_warmup(
    local_ray, tmp_path, tiny_roberta, keyword_task
):
    good, bad = early_search(tmp_path, tiny_roberta, keyword_task, "asha")
    assert good.status == "FINISHED" and good.steps == 40 and good.score >= 0.9, good
    # stopped at the first rung (step 20: the longest warmup, 0.5 x 40), never while still warming up
    assert bad.status == "KILLED" and bad.steps == 20 and bad.score < good.score, bad


@pytest.mark.slow  # starts Ray
def test_without_a_scheduler_every_trial_runs_to_the_end(local_ray, tmp_path, tiny_roberta, keyword_task):
    good, bad = early_search(tmp_path, tiny_roberta, keyword_task, "none")
    assert (good.status, good.steps, bad.status, bad.steps) == ("FINISHED", 40, "FINISHED", 40)
    assert bad.score < good.score


# ----------------------------------------------------------------- re-scoring the leaders

RESCORED = (
    "train.lr: {categorical: [0.003, 0.001, 1.0e-8]}\ntrain.steps: 24\ntrain.eval_every: 24\ntrain.batch_size: 8\n"
)


@pytest.mark.slow  # starts Ray
def test_rescoring_trains_the_leaders_on_fresh_draws_and_chooses_the_best_mean(
    local_ray, tmp_path, tiny_roberta, keyword_task, capsys
):
    from tunedml.search.rescore import RESCORE_FILE, RESCORE_OFFSET
    from tunedml.train import Trainer, draw_for

    space_file = tmp_path / "rescored.yaml"
    space_file.write_text(RESCORED)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = [
        "search",
        "--datasets",
        keyword_task,
        "--space",
        str(space_file),
        "--trials",
        "3",
        "--scheduler",
        "none",
        "--model",
        tiny_roberta,
        "--set",
        "data.k=8",
        "--set",
        "data.max_length=16",
        "--set",
        "train.threads=1",
        "--set",
        "head.init=random",  # the rate that cannot learn must not start with a probed head that knows the task
        "--storage",
        str(tmp_path / "results"),
        "--name",
        "kw",
        "--tracking-uri",
        uri,
        "--start-per-option",
        "train.lr=1",  # each rate once, so the two that learn are the two leaders
        "--rescore",
        "2",
        "--rescore-draws",
        "2",
        "--json",
    ]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out)
    rescored = summary["rescored"]
    assert [r["draws"] for r in rescored] == [2, 2]  # the two leaders, each on both draws
    assert [r["search_score"] for r in rescored] == sorted((r["search_score"] for r in rescored), reverse=True)
    assert 1e-8 not in [r["config"]["train.lr"] for r in rescored]  # the rate that cannot learn is no leader
    chosen = max(rescored, key=lambda r: (r["rescored_mean"], -r["rescored_std"], r["search_score"]))
    assert (
        summary["best_trial"] == chosen["trial"] and summary["best_config"]["train.lr"] == chosen["config"]["train.lr"]
    )
    assert len([ln for ln in err.splitlines() if ln.startswith("rescore ")]) == 4
    # draw j is the configuration at seed offset 500 + j: neither a search repeat (0, ...) nor a final draw (1000, ...)
    cfg = from_flat(summary["best_config"])
    tokens = prepare_tokens(cfg)
    for j, accuracy in enumerate(chosen["per_draw"]["accuracy"]):
        again = repeat_config(cfg, RESCORE_OFFSET + j)
        assert Trainer(again, tokens, draw_for(again, tokens)).fit(evaluate_test=False).dev["accuracy"] == accuracy
    # recorded: the choice's re-scored mean is the search's best score; each leader's trial run has its own
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    parent = client.get_run(summary["mlflow"]["run_id"])
    assert parent.data.metrics["best_dev_accuracy"] == pytest.approx(chosen["rescored_mean"])
    assert parent.data.metrics["best_search_dev_accuracy"] == pytest.approx(chosen["search_score"])
    assert parent.data.params["search.rescore"] == "2" and "tunedml.rescored" in parent.data.tags
    ranks = {
        r.data.tags["ray.trial_id"]: r.data.tags.get("tunedml.rescore_rank")
        for r in client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    }
    assert sorted(v for v in ranks.values() if v) == ["1", "2"] and ranks[chosen["trial"]] is not None
    # a re-scoring that stopped half-way continues where it stopped: drop one saved draw, resume
    saved = tmp_path / "results" / "kw" / RESCORE_FILE
    state = json.loads(saved.read_text())
    state[chosen["trial"]].pop("1")
    saved.write_text(json.dumps(state))
    assert main([*argv[:-1], "--resume"]) == 0
    out, err = capsys.readouterr()
    assert [ln.split()[1] for ln in err.splitlines() if ln.startswith("rescore ")] == ["4/4"]  # only the missing one
    assert "re-scored the 2 leading trials" in out
