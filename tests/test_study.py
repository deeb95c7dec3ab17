"""`tunedml study`: the plan, the study key, the commands each stage runs, what MLflow remembers,
and the whole pipeline end to end in an empty folder (embedded data, default model, real Ray and MLflow)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from tunedml.cli import build_parser, main
from tunedml.errors import ConfigError
from tunedml.space import load_space
from tunedml.study import (
    Ledger,
    Settings,
    Stage,
    plan,
    report_argv,
    retrain_argv,
    run_defaults,
    search_action,
    search_argv,
    search_name,
    shipped_space,
    study_spaces,
)

REPO = Path(__file__).resolve().parents[1]


def settings(**changes) -> Settings:
    base = Settings(datasets=("sst2", "mr"), trials=4, seeds=2, sets=("data.k=4",), tracking_uri="sqlite:///x.db")
    return replace(base, **changes)


# ----------------------------------------------------------------- the plan and the key


def test_plan_runs_both_searches_then_the_retrain_per_dataset_then_one_report():
    stages = plan(settings(repeats=3, rescore=2, rescore_draws=3))
    assert [(s.dataset, s.kind) for s in stages] == [
        ("sst2", "cce"),
        ("sst2", "dml"),
        ("sst2", "retrain"),
        ("mr", "cce"),
        ("mr", "dml"),
        ("mr", "retrain"),
        ("", "report"),
    ]
    # trials x repeats + rescore x rescore_draws models per search; 2 x seeds draws per retrain
    assert [s.units for s in stages[:3]] == [18, 18, 4]
    assert len({s.tag for s in stages}) == len(stages)


def test_the_key_follows_what_changes_results_and_nothing_else(tmp_path):
    key = settings().key()
    for change in (
        {"trials": 5},
        {"seeds": 3},
        {"repeats": 1},
        {"sets": ("data.k=8",)},
        {"model": "roberta-base"},
        {"sampler_seed": 1},
        {"scheduler": "none"},
        {"concurrency": 2},
        {"data_dir": str(tmp_path)},
        {"rescore": 0},
        {"rescore_draws": 5},
    ):
        assert settings(**change).key() != key, change
    for change in (
        {"datasets": ("trec",)},
        {"address": "auto"},
        {"storage": "s3://b/t"},
        {"out": "elsewhere"},
        {"tracking_uri": "http://127.0.0.1:5000"},
        {"cpus_per_trial": 1.0},
        {"gpus_per_trial": 0.25},
        {"resume": True},
        {"verbose": True},
    ):
        assert settings(**change).key() == key, change
    defaults = run_defaults()
    assert settings().key(defaults) == key  # the installed defaults, as given
    assert settings().key({**defaults, "head.init": "random"}) != key  # a tunedml with other defaults
    both = settings(sets=("data.k=4", "train.epochs=2"))
    assert replace(both, sets=("train.epochs=2", "data.k=4")).key() == both.key()  # order of distinct keys
    assert replace(both, sets=("data.k=8", "train.epochs=2", "data.k=4")).key() == both.key()  # the last one wins
    space, common = tmp_path / "dml.yaml", tmp_path / "_common.yaml"
    space.write_text(Path(shipped_space("dml")).read_text())
    common.write_text((Path(shipped_space("dml")).parent / "_common.yaml").read_text())
    assert settings(space=str(space)).key() == key  # the same text
    common.write_text(common.read_text().replace("train.eval_every: ", "train.eval_every: 1"))
    assert settings(space=str(space)).key() != key  # the included common part counts too
    common.write_text((Path(shipped_space("dml")).parent / "_common.yaml").read_text())
    space.write_text(
        space.read_text().replace(
            "inference.mode: {categorical: [head, proxy, mixed]}", "inference.mode: {categorical: [head, mixed]}", 1
        )
    )
    assert settings(space=str(space)).key() != key


def test_the_continue_command_is_the_same_study():
    s = settings(sets=("data.k=4", "train.epochs=2"), model="minilm", concurrency=2, gpus_per_trial=0.5, out="rep")
    argv = s.command().split()[1:]
    args = build_parser().parse_args(argv)
    again = Settings(
        datasets=tuple(args.datasets.split(",")),
        trials=args.trials,
        seeds=args.seeds,
        repeats=args.repeats,
        sets=tuple(args.set),
        model=args.model,
        concurrency=args.concurrency,
        gpus_per_trial=args.gpus_per_trial,
        out=args.out,
        tracking_uri=args.tracking_uri,
    )
    assert again.key() == s.key() and again.out == "rep" and again.tracking_uri == s.tracking_uri


# ----------------------------------------------------------------- the commands each stage runs


def test_search_stages_are_ordinary_searches_with_a_fixed_name():
    s = settings(repeats=3, storage="/r", cpus_per_trial=2.0)
    name = search_name(s, "sst2", "dml", s.key())
    assert name == f"sst2-dml-study-{s.key()[:8]}"
    args = build_parser().parse_args(search_argv(s, "sst2", "dml.yaml", name, resume=True))
    assert (args.command, args.datasets, args.space, args.name, args.resume) == (
        "search",
        "sst2",
        "dml.yaml",
        name,
        True,
    )
    assert (args.trials, args.repeats, args.storage, args.cpus_per_trial, args.set) == (4, 3, "/r", 2.0, ["data.k=4"])
    assert args.tracking_uri == "sqlite:///x.db"
    assert not build_parser().parse_args(search_argv(s, "sst2", "dml.yaml", name, resume=False)).resume


def test_retrain_takes_exactly_the_two_searches_of_the_study():
    args = build_parser().parse_args(retrain_argv(settings(model="minilm"), "mr", "dmlrun", "ccerun"))
    assert (args.command, args.dataset, args.run_id, args.baseline, args.seeds) == (
        "retrain",
        "mr",
        "dmlrun",
        "ccerun",
        2,
    )
    assert (args.model, args.set, args.tracking_uri) == ("minilm", ["data.k=4"], "sqlite:///x.db")
    args = build_parser().parse_args(report_argv(settings(out="rep")))
    assert (args.command, args.datasets, args.out) == ("report", "sst2,mr", "rep")


def test_set_takes_a_key_out_of_a_space_that_searches_it(tmp_path):
    """cce.yaml searches train.lr (in the _common.yaml it includes): `--set train.lr=...` would clash;
    the study fixes it instead, in a copy of the space with its includes merged in."""
    base = {"train.lr": 1e-4, "data.k": 4}
    with pytest.raises(ConfigError, match="train.lr is searched in this space and also set"):
        load_space(shipped_space("cce"), base).check_against(base)
    s = settings(sets=("train.lr=1e-4", "data.k=4"), storage=str(tmp_path))
    spaces = study_spaces(s, s.key(), tmp_path)
    assert Path(spaces["cce"]).name == "cce.yaml" and Path(spaces["cce"]).parent.parent == tmp_path
    derived = load_space(spaces["cce"], base)
    derived.check_against(base)
    assert "train.lr" not in derived.root.keys() and "train.batch_size" in derived.root.keys()
    assert derived.name == "cce" and derived.root.fixed["loss.name"] == "none"
    assert derived.root.fixed["train.steps"] > 0  # from the included common part
    assert study_spaces(settings(sets=("data.k=4",)), "k", tmp_path) == {
        "cce": shipped_space("cce"),
        "dml": shipped_space("dml"),
    }


@pytest.mark.parametrize(
    "finished, started, restorable, action",
    [
        (True, True, False, "skip"),
        (False, True, True, "resume"),
        (False, True, False, "start"),
        (False, False, False, "start"),
    ],
)
def test_a_search_is_skipped_resumed_or_started(finished, started, restorable, action):
    assert search_action(finished, started, restorable) == action


# ----------------------------------------------------------------- what MLflow remembers


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('study-store') / 'mlflow.db'}"


def test_a_stage_counts_as_done_only_while_its_run_is_finished(store):
    from mlflow import MlflowClient

    s = settings(tracking_uri=store)
    with pytest.raises(ConfigError, match="--resume: no study with these settings"):
        Ledger(store, s.key()).open(s.params(), create=False)
    ledger = Ledger(store, s.key())
    assert ledger.open(s.params(), create=True) is False
    stage = Stage("sst2", "cce", 4)
    assert ledger.done(stage) is None
    client = MlflowClient(store)
    experiment = client.create_experiment("stage-runs")
    run = client.create_run(experiment).info.run_id
    ledger.mark(stage, run)
    assert ledger.done(stage) is None  # still RUNNING (interrupted)
    client.set_terminated(run, "FINISHED")
    again = Ledger(store, s.key())
    assert again.open(s.params(), create=False) is True and again.run_id == ledger.run_id
    assert again.done(stage) == run and again.done(Stage("sst2", "dml", 4)) is None
    client.delete_run(run)
    assert again.done(stage) is None
    other = settings(trials=9, tracking_uri=store)
    assert Ledger(store, other.key()).open(other.params(), create=True) is False  # another key, another study


def test_studies_are_listed_with_their_stages_and_settings(tmp_path, capsys):
    from mlflow import MlflowClient

    from tunedml.tracking.studies import list_studies

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    s = settings(tracking_uri=store)
    ledger = Ledger(store, s.key())
    ledger.open(s.params(), create=True)
    client = MlflowClient(store)
    run = client.create_run(client.create_experiment("stage-runs")).info.run_id
    ledger.mark(Stage("sst2", "cce", 4), run)
    (study,) = list_studies(store)
    assert (study.key, study.run_id, study.state) == (s.key()[:8], ledger.run_id, "RUNNING")
    assert study.stages == ["sst2.cce"] and study.datasets == ["sst2"] and study.runs == {"sst2.cce": run}
    assert study.settings["trials"] == "4" and study.settings["seeds"] == "2" and study.settings["sampler_seed"] == "0"
    assert main(["searches", "--tracking-uri", store]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "no search recorded" and lines[2].split()[:3] == ["study", "datasets", "stages"]
    assert lines[3].split() == [s.key()[:8], "sst2", "1", "4", "2", "3", "RUNNING", ledger.run_id]


def test_a_stage_that_fails_fails_the_study_with_exit_code_1(tmp_path):
    """A stage's command that ends non-zero (a search where no trial scored exits 1) stops the
    study: StageFailed is a RunFailed (exit code 1, not 2: the input was fine), the study's run FAILED."""
    from mlflow import MlflowClient

    from tunedml.errors import RunFailed
    from tunedml.study import Commands, StageFailed, run_study

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    s = settings(datasets=("sst2",), tracking_uri=store, storage=str(tmp_path / "results"))
    ran: list[list[str]] = []

    def run(argv: list[str]) -> int:
        ran.append(argv)
        return 1

    with pytest.raises(StageFailed, match="sst2 CCE search: tunedml search exited with code 1") as failed:
        run_study(s, Commands(run=run, check=lambda argv: None))
    assert isinstance(failed.value, RunFailed) and not isinstance(failed.value, ConfigError)
    assert [argv[0] for argv in ran] == ["search"]  # nothing after the failed stage
    ledger = Ledger(store, s.key())
    assert MlflowClient(store).get_run(ledger.find()).info.status == "FAILED"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--datasets", "sst-2"], "unknown dataset 'sst-2' (did you mean 'sst2'?)"),
        (["--datasets", "sst2", "--trials", "0"], "--trials must be >= 1"),
        (["--datasets", "sst2", "--space", "nowhere.yaml"], "--space: nowhere.yaml is not a file"),
    ],
)
def test_bad_settings_stop_before_anything_runs(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    assert main(["study", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tunedml study: error: ") and message in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []  # no store, no results folder


def test_a_bad_search_argument_stops_the_study_before_the_store_or_any_search(tmp_path, monkeypatch, capsys):
    """loss.margin is no key of plain CCE (cce.yaml): found by checking every search up front."""
    monkeypatch.chdir(tmp_path)
    assert (
        main(
            [
                "study",
                "--datasets",
                "sst2",
                "--set",
                "loss.margin=0.1",
                "--tracking-uri",
                f"sqlite:///{tmp_path / 'm.db'}",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("tunedml study: error: ") and "loss.margin" in err and err.count("\n") == 1
    assert not (tmp_path / "m.db").exists() and not (tmp_path / "tunedml_results").exists()


# ----------------------------------------------------------------- end to end


def study(cwd: Path, *extra: str, interrupt_after: str | None = None) -> subprocess.CompletedProcess:
    """The README's study command in ``cwd``: no data folder, default store, the network off."""
    env = {k: v for k, v in os.environ.items() if k not in ("TUNEDML_DATA_DIR", "MLFLOW_TRACKING_URI")}
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    cmd = [
        sys.executable,
        "-m",
        "tunedml.cli",
        "study",
        "--datasets",
        "sst2",
        "--trials",
        "2",
        "--seeds",
        "2",
        "--set",
        "train.epochs=2",
        "--set",
        "data.k=4",
        "--out",
        "report",
        *extra,
    ]
    if interrupt_after is None:
        return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if line.startswith(interrupt_after):
                proc.send_signal(signal.SIGINT)  # Ctrl-C, as test_search sends it to a search
                break
        out, err = proc.communicate(timeout=600)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever the driver left (teardown, also on failure)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "".join(lines) + err)


def all_runs(cwd: Path) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


@pytest.mark.slow  # two searches, a retrain and a report with the real MiniLM: minutes
def test_study_in_an_empty_folder_resumes_after_ctrl_c_and_then_has_nothing_left(tmp_path):
    first = study(tmp_path, interrupt_after="trial 1/2")
    assert first.returncode == 130, first.stderr
    assert "continue the study with: tunedml study --datasets sst2" in first.stderr and "--resume" in first.stderr

    second = study(tmp_path, "--resume")
    assert second.returncode == 0, second.stderr
    stage_lines = [
        ln for ln in second.stderr.splitlines() if ln.startswith("study sst2 ") or ln.startswith("study report")
    ]
    assert [ln.split(":")[0] for ln in stage_lines] == [
        "study sst2 CCE search",
        "study sst2 DML search",
        "study sst2 retrain",
        "study report",
    ]
    assert "resumed: 2 trials" in stage_lines[0] and "ETA" in stage_lines[0]
    results = (tmp_path / "report" / "results.md").read_text()
    assert any(row.startswith("| sst2 ") for row in results.splitlines()), results
    assert results in second.stdout

    runs = all_runs(tmp_path)
    finals = [r for r in runs if r.data.tags.get("tunedml.role") == "final"]
    searches = {r.info.run_id: r for r in runs if r.data.tags.get("tunedml.role") == "search"}
    assert {r.data.tags["tunedml.space"] for r in searches.values()} == {"cce", "dml"}
    best = next(r for r in finals if r.data.tags["tunedml.final_role"] == "best")
    baseline = next(r for r in finals if r.data.tags["tunedml.final_role"] == "baseline")
    assert searches[best.data.tags["tunedml.search_run_id"]].data.tags["tunedml.space"] == "dml"
    assert searches[baseline.data.tags["tunedml.search_run_id"]].data.tags["tunedml.space"] == "cce"

    third = study(tmp_path)
    assert third.returncode == 0, third.stderr
    assert third.stderr.count(": done before (run ") == 4 and "search sst2" not in third.stderr
    assert results in third.stdout and "finished" in third.stdout
    assert len(all_runs(tmp_path)) == len(runs)  # nothing ran again
