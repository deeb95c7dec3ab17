"""GPUs per trial and per draw: ``auto`` (the default of search, retrain and study) asks for one GPU
where the machine or cluster has GPUs and none otherwise, so that trials on a GPU cluster do not
silently train on the CPU (Ray hides the GPUs from a task that asks for none).

The rule is tested on node lists; the whole path on a real Ray with logical GPUs
(``ray.init(num_gpus=2)``: Ray grants them as it would real ones, and torch, finding no CUDA,
trains on the CPU), in a subprocess of its own so that its Ray is not the one other tests share.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tunedml.checks import Node, auto_concurrency, auto_gpus, choose_gpus, describe_gpus

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "gpus, at_once, expected",
    [
        ([0], 1, 0.0),  # no GPU: none asked for
        ([0], 4, 0.0),
        ([1], 1, 1.0),  # one each
        ([2], 2, 1.0),
        ([1, 1], 2, 1.0),  # over two nodes
        ([1], 2, 0.5),  # more at once than GPUs: a share, so that all of them run
        ([2], 3, 0.5),  # 3 on 2 GPUs: two a GPU
        ([1], 3, 0.3333),  # rounded down to Ray's steps of 0.0001: three fit on one GPU
    ],
)
def test_auto_asks_for_a_gpu_where_there_are_gpus(gpus, at_once, expected):
    nodes = [Node(4.0, float(g)) for g in gpus]
    value, why = auto_gpus(nodes, at_once, "trial", "this machine")
    assert value == expected
    assert at_once * value <= sum(gpus) or value == 0
    assert ("no GPU on this machine" in why) == (expected == 0)


def test_a_number_is_taken_as_given_and_the_choice_is_said():
    nodes = [Node(4.0, 2.0)]
    assert choose_gpus(0.25, nodes, 8, "trial", "this machine") == (0.25, "")
    assert choose_gpus("0", nodes, 1, "trial", "this machine") == (0.0, "")
    value, why = choose_gpus("auto", nodes, 1, "trial", "this machine")
    assert describe_gpus(value, "auto", why, "trial") == "1 GPU per trial (auto: this machine has 2 GPUs)"
    assert describe_gpus(0.0, 0.0, "", "draw") == "0 GPUs per draw"


@pytest.mark.parametrize(
    "nodes, cpus, gpus, trials, expected",
    [
        ([(2, 0)], None, "auto", 20, 2),  # one trial per CPU
        ([(2, 0)], None, "auto", 1, 1),  # never more than the trials
        ([(8, 0)], 2.0, "auto", 20, 4),  # --cpus-per-trial 2 on 8 CPUs
        ([(4, 0), (4, 0)], 3.0, "auto", 20, 2),  # a trial runs on one node: 3 CPUs fit once on each
        ([(16, 2)], None, "auto", 20, 2),  # auto GPUs: one trial per GPU
        ([(16, 2)], None, 0.5, 20, 4),  # half a GPU each: four on two GPUs
        ([(16, 2)], None, 0.0, 20, 16),  # trials that take no GPU: one per CPU
        ([(0.5, 0)], None, "auto", 20, 1),  # less than a CPU: still one
    ],
)
def test_auto_concurrency_runs_one_trial_per_cpu_and_per_gpu(nodes, cpus, gpus, trials, expected):
    at_once, why = auto_concurrency([Node(float(c), float(g)) for c, g in nodes], cpus, gpus, trials, "trial")
    assert at_once == expected
    assert why and (("no more than the" in why) == (expected == trials < 20))


def test_the_defaults_are_auto():
    from tunedml.cli import build_parser
    from tunedml.retrain import RetrainOptions
    from tunedml.search import SearchOptions
    from tunedml.study import Settings

    assert (
        SearchOptions().gpus_per_trial == RetrainOptions().gpus_per_draw == Settings(("sst2",)).gpus_per_trial == "auto"
    )
    parser = build_parser()
    assert parser.parse_args(["search", "--space", "s.yaml"]).gpus_per_trial == "auto"
    assert parser.parse_args(["retrain"]).gpus_per_draw == "auto"
    assert parser.parse_args(["study", "--datasets", "sst2"]).gpus_per_trial == "auto"
    assert parser.parse_args(["search", "--space", "s.yaml", "--gpus-per-trial", "0.25"]).gpus_per_trial == 0.25
    assert SearchOptions().concurrency == Settings(("sst2",)).concurrency == "auto"
    assert RetrainOptions().concurrency is None  # retrain's auto
    for argv in (["search", "--space", "s.yaml"], ["retrain"], ["study", "--datasets", "sst2"]):
        assert parser.parse_args(argv).concurrency == "auto"
    assert parser.parse_args(["search", "--space", "s.yaml", "--concurrency", "3"]).concurrency == 3


def test_a_dry_run_says_what_auto_chose_on_this_machine(tmp_path, data_dir, tiny_roberta, capsys, monkeypatch):
    import torch

    from tunedml.cli import main

    monkeypatch.chdir(tmp_path)
    code = main(
        [
            "search",
            "--datasets",
            "sst2",
            "--data-dir",
            data_dir,
            "--model",
            tiny_roberta,
            "--space",
            str(REPO / "search_spaces" / "cce.yaml"),
            "--trials",
            "2",
            "--set",
            "data.k=4",
            "--dry-run",
        ]
    )
    err = capsys.readouterr().err
    assert code == 0, err
    count = torch.cuda.device_count()
    chosen = "1 GPU per trial (auto: this machine has" if count else "0 GPUs per trial (auto: no GPU on this machine)"
    assert chosen in err
    # --concurrency auto: the choice and its reason, from the same machine facts
    from tunedml.checks import auto_concurrency, nodes_for

    at_once, why = auto_concurrency(nodes_for(False, None), None, "auto", 2, "trial")
    assert f"search: {at_once} trial{'s' * (at_once != 1)} at a time (auto: {why})" in err


SCRIPT = """
import json, logging, sys
import ray
import tunedml
from ray.tune import ExperimentAnalysis

ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)  # two logical GPUs
logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
args = json.loads(sys.argv[1])
common = dict(datasets="sst2", data_dir=args["data_dir"], model=args["model"], tracking_uri=args["uri"],
              sets={"data.k": 2, "train.steps": 2, "data.max_length": 32}, scheduler="none", storage=args["storage"])
(result,) = tunedml.optimize(args["space"], trials=2, concurrency=2, cpus_per_trial=1, **common)
granted = [t.last_result["gpus"] for t in ExperimentAnalysis(result.path).trials]
tunedml.optimize(args["space"], trials=4, concurrency=4, cpus_per_trial=0.5, dry_run=True, **common)

from tunedml.retrain import RetrainOptions
from tunedml.retrain.draws import plan
draws = plan(RetrainOptions(), jobs=4)
print(json.dumps({"granted": granted, "run_id": result.mlflow["run_id"],
                  "plan": [draws.ray, draws.cpus, draws.gpus]}))
"""


@pytest.mark.slow  # a Ray of its own with logical GPUs, a two-trial search: ~1 min
def test_on_a_ray_with_gpus_auto_gives_each_trial_and_draw_a_gpu(tmp_path, data_dir, tiny_roberta):
    from mlflow import MlflowClient

    space = tmp_path / "space.yaml"
    space.write_text("loss.name: none\ntrain.lr: {loguniform: [1.0e-4, 1.0e-3]}\n")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = {
        "data_dir": data_dir,
        "model": tiny_roberta,
        "uri": uri,
        "storage": str(tmp_path / "results"),
        "space": str(space),
    }
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCRIPT), json.dumps(args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["granted"] == [1, 1]  # each of the two concurrent trials got one of the two GPUs
    assert "search: 2 trials at a time, 1 CPU and 1 GPU per trial (auto: this machine has 2 GPUs)" in run.stderr
    assert (
        "search: 4 trials at a time, 0.5 CPUs and 0.5 GPUs per trial (auto: 4 trials at a time share this "
        "machine's 2 GPUs)" in run.stderr
    )
    assert MlflowClient(uri).get_run(out["run_id"]).data.params["search.gpus_per_trial"] == "1.0"
    assert out["plan"] == [True, 1.0, 1.0]  # retrain's draws: Ray tasks, a GPU each, two at a time
