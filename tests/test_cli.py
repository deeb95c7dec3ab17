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
    return subprocess.run([sys.executable, "-m", "tunedml.cli", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def progress_lines(run: subprocess.CompletedProcess) -> list[str]:
    return [line for line in run.stderr.splitlines() if line.startswith("eval ")]


def test_datasets_lists_every_task():
    run = tunedml("datasets")
    assert run.returncode == 0, run.stderr
    names = [line.split()[0] for line in run.stdout.splitlines()[:len(TASKS)]]
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
    assert by_name["soft_triple"]["hyperparameters"]["centers_per_class"] == {"default": 10, "valid": "int in [1, 50]",
                                                                              "help": ""}
    assert by_name["arcface"]["hyperparameters"]["margin"]["help"] == "degrees"


def test_train_json_prints_one_object_with_dev_and_test(tiny_roberta, data_dir):
    run = tunedml("train", "--json", "--dataset", "trec", "--data-dir", data_dir, "--model", tiny_roberta,
                  "--set", "data.k=4", "--set", "train.epochs=2", "--set", "loss.name=proxy_anchor",
                  "--set", "data.max_length=32")
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
    run = tunedml("train", "--json", "--dataset", "trec", "--data-dir", data_dir, "--model", tiny_roberta,
                  "--set", "data.k=4", "--set", "train.steps=4", "--set", "train.eval_every=3", "--set", "loss.name=supcon",
                  "--set", "train.schedule=two_stage", "--set", "data.sampler=m_per_class", "--set", "train.batch_size=12",
                  "--set", "data.max_length=32")
    assert run.returncode == 0, run.stderr
    progress = progress_lines(run)  # stage 1 ends at step 2: dev there, at 3 and at the last step
    assert [line.split("  ")[1:3] for line in progress] == [["step 2/4 (epoch 1.0)", "stage encoder"],
                                                             ["step 3/4 (epoch 1.5)", "stage head"],
                                                             ["step 4/4 (epoch 2.0)", "stage head"]]
    assert progress[0].startswith("eval 1/3") and "(dml " in progress[0] and "(ce " in progress[1]
    assert all("without positives: 0 batches, 0 examples" in line for line in progress)  # 2 of each of 6 classes


@pytest.mark.slow  # ~12 s; test_train_json_prints_one_object... keeps the train command in the fast tier
def test_train_prints_a_readable_summary(tiny_roberta, data_dir):
    run = tunedml("train", "--dataset", "sst2", "--data-dir", data_dir, "--model", tiny_roberta,
                  "--set", "data.k=4", "--set", "train.epochs=1", "--set", "data.max_length=32")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("sst2  loss=none")
    assert lines[1].startswith("  dev   acc ") and lines[2].startswith("  test  acc ")


@pytest.mark.parametrize("args, message", [
    (["--dataset", "sst-2"], "unknown dataset 'sst-2' (did you mean 'sst2'?)"),
    (["--set", "loss.name=supcn"], "loss.name: unknown loss 'supcn' (did you mean 'supcon'?)"),
    (["--set", "train.lrr=0.1"], "unknown key 'train.lrr' (did you mean 'train.lr'?)"),
    (["--set", "data.k=0"], "data.k=0 is out of range; valid: int in [1, 100000]"),
    (["--set", "loss.name=proxy_nca", "--set", "loss.margin=0.1"], "not a hyperparameter of loss 'proxy_nca'"),
    (["--set", "data.k"], "expected KEY=VALUE"),
    (["--model", "./no-such-model"], "model.name: './no-such-model' is not an existing folder"),
])
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
