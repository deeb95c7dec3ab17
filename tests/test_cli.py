"""The `tunedml` command as a user runs it: a subprocess, its stdout, stderr and exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tunedml.data import TASKS
from tunedml.losses import LOSS_NAMES


def tunedml(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "tunedml.cli", *args], capture_output=True, text=True, env=env, timeout=600
    )


def progress_lines(run: subprocess.CompletedProcess) -> list[str]:
    return [line for line in run.stderr.splitlines() if line.startswith("eval ")]


def test_datasets_lists_every_task():
    run = tunedml("datasets")
    assert run.returncode == 0, run.stderr
    names = [line.split()[0] for line in run.stdout.splitlines()[: len(TASKS)]]
    assert names == list(TASKS)
    assert "trec   6 classes (DESC, ENTY, ABBR, HUM, LOC, NUM); official test" in run.stdout
    assert "mr     2 classes (negative, positive); hold-out test" in run.stdout


def test_datasets_json():
    rows = json.loads(tunedml("datasets", "--json").stdout)
    assert [r["name"] for r in rows] == list(TASKS)
    assert {r["name"]: r["official_test"] for r in rows}["mr"] is False


def test_losses_lists_hyperparameters_with_ranges():
    run = tunedml("losses")
    assert run.returncode == 0, run.stderr
    assert "proxy_anchor        proxies Proxy Anchor" in run.stdout
    assert "loss.margin" in run.stdout and "float in [0, 1]" in run.stdout


def test_losses_json():
    run = tunedml("losses", "--json")
    rows = json.loads(run.stdout)
    assert [r["name"] for r in rows] == list(LOSS_NAMES)
    by_name = {r["name"]: r for r in rows}
    assert by_name["none"]["hyperparameters"] == {}
    assert by_name["soft_triple"]["proxies"] is True and by_name["supcon"]["proxies"] is False
    assert by_name["soft_triple"]["hyperparameters"]["centers_per_class"] == {
        "default": 10,
        "valid": "int in [1, 50]",
        "help": "",
    }
    assert by_name["arcface"]["hyperparameters"]["margin"]["help"] == "degrees"


def test_train_json_prints_one_object_with_dev_and_test(tiny_roberta, data_dir):
    run = tunedml(
        "train",
        "--json",
        "--dataset",
        "trec",
        "--data-dir",
        data_dir,
        "--model",
        tiny_roberta,
        "--set",
        "data.k=4",
        "--set",
        "train.epochs=2",
        "--set",
        "loss.name=proxy_anchor",
        "--set",
        "data.max_length=32",
    )
    assert run.returncode == 0, run.stderr
    [line] = run.stdout.splitlines()
    result = json.loads(line)
    assert (result["dataset"], result["model"], result["loss"]) == ("trec", tiny_roberta, "proxy_anchor")
    for split in ("dev", "test"):
        assert set(result[split]) == {"accuracy", "macro_f1", "collapsed"}
        assert all(0 <= v <= 1 for v in result[split].values())
    progress = progress_lines(run)
    # trec k=4: 24 examples, batch 16: 2 steps a pass, dev once a pass
    assert len(progress) == 2 and progress[0].startswith("eval 1/2  step 2/4 (epoch 1.0)  loss")


def test_train_progress_shows_the_stage_and_the_batches_without_positives(tiny_roberta, data_dir):
    run = tunedml(
        "train",
        "--json",
        "--dataset",
        "trec",
        "--data-dir",
        data_dir,
        "--model",
        tiny_roberta,
        "--set",
        "data.k=4",
        "--set",
        "train.steps=4",
        "--set",
        "train.eval_every=3",
        "--set",
        "loss.name=supcon",
        "--set",
        "train.schedule=two_stage",
        "--set",
        "data.sampler=m_per_class",
        "--set",
        "train.batch_size=12",
        "--set",
        "data.max_length=32",
    )
    assert run.returncode == 0, run.stderr
    progress = progress_lines(run)  # stage 1 ends at step 2: dev there, at 3 and at the last step
    assert [line.split("  ")[1:3] for line in progress] == [
        ["step 2/4 (epoch 1.0)", "stage encoder"],
        ["step 3/4 (epoch 1.5)", "stage head"],
        ["step 4/4 (epoch 2.0)", "stage head"],
    ]
    assert progress[0].startswith("eval 1/3") and "(dml " in progress[0] and "(ce " in progress[1]
    assert all("without positives: 0 batches, 0 examples" in line for line in progress)  # 2 of each of 6 classes


@pytest.mark.slow  # ~12 s; test_train_json_prints_one_object... keeps the train command in the fast tier
def test_train_prints_a_readable_summary(tiny_roberta, data_dir):
    run = tunedml(
        "train",
        "--dataset",
        "sst2",
        "--data-dir",
        data_dir,
        "--model",
        tiny_roberta,
        "--set",
        "data.k=4",
        "--set",
        "train.epochs=1",
        "--set",
        "data.max_length=32",
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("sst2  loss=none")
    assert lines[1].startswith("  dev   acc ") and lines[2].startswith("  test  acc ")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "sst-2"], "unknown dataset 'sst-2' (did you mean 'sst2'?)"),
        (["--set", "loss.name=supcn"], "loss.name: unknown loss 'supcn' (did you mean 'supcon'?)"),
        (["--set", "train.lrr=0.1"], "unknown key 'train.lrr' (did you mean 'train.lr'?)"),
        (["--set", "data.k=0"], "data.k=0 is out of range; valid: int in [1, 100000]"),
        (["--set", "loss.name=proxy_nca", "--set", "loss.margin=0.1"], "not a hyperparameter of loss 'proxy_nca'"),
        (["--set", "data.k"], "expected KEY=VALUE"),
        (["--model", "./no-such-model"], "model.name: './no-such-model' is not an existing folder"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2_before_any_training(data_dir, args, message):
    run = tunedml("train", "--data-dir", data_dir, *args)
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("tunedml train: error: ")
    assert message in run.stderr
    assert "Traceback" not in run.stderr
    assert not progress_lines(run) and run.stdout == ""  # stopped before training started


def test_bad_config_file_is_one_line_and_exit_code_2(tmp_path, data_dir):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  lr: [1\n")
    run = tunedml("train", "--data-dir", data_dir, "--config", str(path))
    assert run.returncode == 2 and run.stderr.count("\n") == 1
    assert "is not valid YAML" in run.stderr and "Traceback" not in run.stderr


def test_missing_data_dir_is_one_line_and_exit_code_2(tmp_path):
    run = tunedml("train", "--data-dir", str(tmp_path / "nowhere"))
    assert run.returncode == 2 and run.stderr.count("\n") == 1
    assert "nowhere" in run.stderr and "Traceback" not in run.stderr and not progress_lines(run)


def test_keys_lists_every_config_key_with_its_range_and_help():
    from tunedml.config import FIELDS

    run = tunedml("keys", "--json")
    assert run.returncode == 0, run.stderr
    rows = {r["key"]: r for r in json.loads(run.stdout)}
    assert set(rows) == set(FIELDS)
    assert rows["data.k"]["valid"] == "int in [1, 100000]" and rows["data.k"]["default"] == 16
    assert rows["train.lr"]["help"] and rows["adversarial.mode"]["valid"].startswith("one of none")


# ----------------------------------------------------------------- one vocabulary (issue 23)


def options_of() -> dict:
    """Every command's options, by option string."""
    from tunedml.cli import build_parser

    return {
        name: {s: a for a in parser._actions for s in a.option_strings}
        for name, parser in build_parser()._commands().items()
    }


def test_one_name_and_one_meaning_per_option():
    from tunedml.choices import INTERVALS, PROJECTIONS, SCHEDULERS
    from tunedml.metrics import METRICS

    options = options_of()
    for name, opts in options.items():
        assert "--seed" not in opts and "--parallel" not in opts, name
        if "--concurrency" in opts:
            assert "at a time" in opts["--concurrency"].help, name
        if "--seeds" in opts:
            assert "not a seed" in opts["--seeds"].help, name
        if "--sampler-seed" in opts:
            assert "TPE sampler" in opts["--sampler-seed"].help, name
        for option, choices in (
            ("--scheduler", SCHEDULERS),
            ("--metric", METRICS),
            ("--interval", INTERVALS),
            ("--projection", PROJECTIONS),
        ):
            if option in opts:
                assert tuple(opts[option].choices) == tuple(choices), (name, option)
    for name in ("search", "study", "report", "searches"):  # several datasets: --datasets, with all
        assert "--datasets" in options[name] and "--dataset" not in options[name], name
        assert "all" in options[name]["--datasets"].help, name
    for name in ("train", "retrain", "best"):  # one dataset
        assert "--dataset" in options[name] and "--datasets" not in options[name], name
    for name in ("search", "retrain", "study"):
        assert "--dry-run" in options[name], name


@pytest.mark.parametrize(
    "command, shown",
    [
        (
            "search",
            [
                "{asha,hyperband,none}",
                "{accuracy,macro_f1}",
                "--sampler-seed N",
                "--gpus-per-trial auto|N",
                "--concurrency auto|N",
            ],
        ),
        ("retrain", ["{t,bootstrap}", "--concurrency auto|N", "--gpus-per-draw auto|N"]),
        ("report", ["{accuracy,macro_f1}", "{pca,tsne}"]),
        ("study", ["{asha,hyperband,none}", "--sampler-seed N", "--dry-run"]),
        ("best", ["{accuracy,macro_f1}", "--out FILE"]),
    ],
)
def test_help_lists_the_choices(command, shown, capsys):
    from tunedml.cli import main

    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    for text in shown:
        assert text in out, (command, text)


@pytest.mark.parametrize(
    "args, message",
    [
        (["search", "--space", "s.yaml", "--dataset", "sst2"], "--dataset is now --datasets"),
        (
            ["study", "--datasets", "sst2", "--seed", "3"],
            "--seed is now --sampler-seed: the TPE sampler's seed; --seeds is",
        ),
        (["search", "--space", "s.yaml", "--seed", "3"], "--seed is now --sampler-seed"),
        (["retrain", "--parallel", "2"], "--parallel is now --concurrency"),
        (["search", "--space", "s.yaml", "--trails", "3"], "did you mean '--trials'?"),
        (["study", "--datasets", "sst2", "--seed=3"], "--seed is now --sampler-seed"),
        (
            ["search", "--space", "s.yaml", "--scheduler", "pbt"],
            "invalid choice: 'pbt' (choose from 'asha', 'hyperband', 'none')",
        ),
        (["retrain", "--gpus-per-draw", "two"], "'two' is not a number of GPUs; valid: auto"),
    ],
)
def test_an_option_not_there_is_one_line_with_its_name_here(args, message, capsys):
    """No abbreviations either: `--seed 3` in a study would otherwise set --seeds."""
    from tunedml.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"tunedml {args[0]}: error: ") and message in err and f"(see tunedml {args[0]} --help)" in err


# ----------------------------------------------------------------- dry runs: every check, nothing started or recorded


@pytest.fixture
def work(tmp_path, monkeypatch):
    """An empty working directory, where the default store (./mlflow.db) and results would go."""
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return folder


def ray_started() -> bool:
    ray = sys.modules.get("ray")
    return bool(ray and ray.is_initialized())


def test_search_dry_run_checks_and_writes_nothing(work, data_dir, tiny_roberta, capsys):
    from tunedml.cli import main

    space = os.path.join(os.path.dirname(__file__), "..", "search_spaces", "dml.yaml")
    args = [
        "search",
        "--datasets",
        "sst2,trec",
        "--data-dir",
        data_dir,
        "--model",
        tiny_roberta,
        "--space",
        space,
        "--trials",
        "3",
        "--set",
        "data.k=4",
        "--dry-run",
    ]
    assert main(args) == 0
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert out == "" and lines[-1] == "dry run: every check passed; nothing was started or recorded"
    assert [ln.split()[1] for ln in lines if ln.startswith("search ") and " over " in ln] == ["sst2", "trec"]
    assert f"MLflow experiment tunedml/trec at sqlite:///{work}/mlflow.db" in err
    assert list(work.iterdir()) == [] and not ray_started()
    # and it is every check: what would fail the search fails the dry run, with exit code 2
    args[args.index("data.k=4")] = "data.k=50"
    assert main(args) == 2
    assert "trec: class 'ABBR'" in capsys.readouterr().err and list(work.iterdir()) == []


def test_retrain_dry_run_reads_both_configurations_and_writes_nothing(work, data_dir, capsys):
    from tunedml.cli import main

    config = work.parent / "best.yaml"
    config.write_text(f"data:\n  dataset: sst2\n  data_dir: {data_dir}\n  k: 4\nloss:\n  name: supcon\n")
    db = work / "m.db"
    assert (
        main(
            [
                "retrain",
                "--config",
                str(config),
                "--baseline",
                "defaults",
                "--seeds",
                "3",
                "--tracking-uri",
                str(db),
                "--dry-run",
            ]
        )
        == 0
    )
    out, err = capsys.readouterr()
    assert (
        out == ""
        and "retrain sst2: 3 draws of best = supcon" in err
        and "baseline = none (CCE defaults, untuned)" in err
    )
    assert err.splitlines()[-1] == "dry run: every check passed; nothing was trained or recorded"
    assert not db.exists() and list(work.iterdir()) == [] and not ray_started()
    # the configurations come from the store: none there, nothing to retrain, and still no database
    assert main(["retrain", "--dataset", "sst2", "--tracking-uri", str(db), "--dry-run"]) == 2
    assert "no search over a DML space recorded for dataset 'sst2'" in capsys.readouterr().err
    assert not db.exists()


def test_study_dry_run_lists_its_stages_and_writes_nothing(work, capsys):
    from tunedml.cli import main

    assert (
        main(
            [
                "study",
                "--datasets",
                "sst2,mr",
                "--trials",
                "2",
                "--seeds",
                "2",
                "--set",
                "data.k=4",
                "--set",
                "train.lr=1e-4",
                "--dry-run",
            ]
        )
        == 0
    )
    out, err = capsys.readouterr()
    stages = [ln.split(":")[0] for ln in err.splitlines() if ln.endswith("]")]
    assert stages == [
        "study sst2 CCE search",
        "study sst2 DML search",
        "study sst2 retrain",
        "study mr CCE search",
        "study mr DML search",
        "study mr retrain",
        "study report",
    ]
    assert all(": to run  [" in ln for ln in err.splitlines() if ln.endswith("]"))
    assert err.splitlines()[-1] == "dry run: every check passed; nothing was run or recorded"
    assert out == "" and list(work.iterdir()) == [] and not ray_started()  # no store, no results, no space copies


# ----------------------------------------------------------------- searches, best --out


def test_reading_commands_say_when_nothing_is_recorded(work, capsys):
    from tunedml.cli import main

    assert main(["searches", "--tracking-uri", str(work / "none.db")]) == 2
    assert "nothing recorded at sqlite:///" in capsys.readouterr().err and list(work.iterdir()) == []
    assert main(["best", "--dataset", "sst2", "--out", str(work), "--tracking-uri", str(work / "none.db")]) == 2
    assert f"--out {work}: is a folder; name a file" in capsys.readouterr().err  # checked before the store is read


def test_searches_on_a_store_without_searches(work, capsys):
    from mlflow import MlflowClient

    from tunedml.cli import main

    MlflowClient(f"sqlite:///{work / 'm.db'}").search_experiments()  # an empty store
    assert main(["searches", "--tracking-uri", str(work / "m.db")]) == 0
    assert capsys.readouterr().out == "no search recorded\n"
    assert main(["searches", "--tracking-uri", str(work / "m.db"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"searches": [], "studies": []}


# ----------------------------------------------------------------- exit code 1: a run that produced nothing


def test_retrain_whose_every_draw_fails_exits_1_and_says_so(work, data_dir, nan_model, capsys):
    from mlflow import MlflowClient

    from tunedml.cli import main

    config = work.parent / "best.yaml"
    config.write_text(f"data:\n  dataset: sst2\n  data_dir: {data_dir}\n  k: 2\n  max_length: 32\ntrain:\n  steps: 2\n")
    db = work / "m.db"
    code = main(
        [
            "retrain",
            "--config",
            str(config),
            "--baseline",
            "defaults",
            "--model",
            nan_model,
            "--seeds",
            "1",
            "--concurrency",
            "1",
            "--tracking-uri",
            str(db),
        ]
    )
    out, err = capsys.readouterr()
    assert code == 1, err
    assert err.splitlines()[-1] == (
        "tunedml retrain: every draw of the best and the baseline configuration failed: "
        "nothing to compare (recorded in MLflow, with each draw's error)"
    )
    assert "draws failed" in out or "failed" in out
    client = MlflowClient(f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name("tunedml/sst2").experiment_id])
    assert {r.data.metrics["draws_failed"] for r in runs} == {1.0}  # recorded, with the failure counted
