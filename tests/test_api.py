"""The Python API (tunedml.api): the README's example as a user runs it, the same results as the
command line, light imports, and each operation typed and documented."""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import tunedml
from tunedml.errors import ConfigError, TunedMLError

REPO = Path(__file__).resolve().parents[1]
OPERATIONS = ("fit", "optimize", "compare", "make_report", "best", "searches")


def readme_python_example() -> str:
    """The first ```python block of the README's "Python API" section."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow  # the embedded MiniLM on mpqa: tokenizing the task and scoring its test split, 1-2 min on 2 CPUs
def test_the_readme_example_runs(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("TUNEDML_DATA_DIR", "MLFLOW_TRACKING_URI")}
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    run = subprocess.run(
        [sys.executable, "-c", readme_python_example()],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert re.fullmatch(r"dev accuracy [01]\.\d{3}, test accuracy [01]\.\d{3}\n", run.stdout), run.stdout
    assert list(tmp_path.iterdir()) == []  # training writes nothing


def test_the_readme_example_is_the_api():
    code = readme_python_example()
    assert "import tunedml" in code and "tunedml.fit(" in code


def test_fit_gives_what_tunedml_train_prints(tiny_roberta, data_dir, capsys):
    """Two real paths, one result: the function and the command, on the same draw and seed."""
    from tunedml.cli import main

    sets = {"data.k": 4, "train.epochs": 2, "loss.name": "proxy_anchor", "data.max_length": 32}
    result = tunedml.fit(dataset="trec", model=tiny_roberta, data_dir=data_dir, sets=sets)
    code = main(
        [
            "train",
            "--json",
            "--dataset",
            "trec",
            "--model",
            tiny_roberta,
            "--data-dir",
            data_dir,
            *(x for k, v in sets.items() for x in ("--set", f"{k}={v}")),
        ]
    )
    printed = json.loads(capsys.readouterr().out)
    assert code == 0
    assert printed["dev"] == result.dev and printed["test"] == result.test
    assert [e.step for e in result.history] == [2, 4]


def test_a_run_config_is_taken_as_it_is(tiny_roberta, data_dir):
    cfg = tunedml.run_config(dataset="trec", model=tiny_roberta, data_dir=data_dir, sets=["data.k=2", "train.steps=1"])
    assert (cfg.data.dataset, cfg.data.k, cfg.train.steps, cfg.model.name) == ("trec", 2, 1, tiny_roberta)
    again = tunedml.run_config(cfg, sets={"data.k": 3})
    assert again.data.k == 3 and again.data.dataset == "trec" and cfg.data.k == 2


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: tunedml.fit(sets={"data.k": 0}), ConfigError, "data.k=0 is out of range"),
        (lambda: tunedml.fit(dataset="sst-2"), TunedMLError, "did you mean 'sst2'"),
        (lambda: tunedml.optimize("nowhere.yaml", trials=0), ConfigError, "--trials must be >= 1"),
        (lambda: tunedml.optimize("nowhere.yaml", scheduler="pbt"), ConfigError, "unknown scheduler 'pbt'"),
        (lambda: tunedml.optimize("nowhere.yaml", gpus_per_trial="two"), ConfigError, "--gpus-per-trial must be auto"),
        (lambda: tunedml.compare(seeds=0), ConfigError, "--seeds must be >= 1"),
        (lambda: tunedml.compare(interval="z"), ConfigError, "unknown interval 'z'"),
        (lambda: tunedml.make_report(metric="f1"), ConfigError, "unknown metric 'f1'"),
        (lambda: tunedml.best("sst2", metric="f1"), ConfigError, "unknown metric 'f1'"),
    ],
)
def test_bad_input_raises_a_tunedml_error_naming_it(call, error, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error, match=re.escape(message)):
        call()
    assert list(tmp_path.iterdir()) == []


def test_import_tunedml_loads_no_heavy_library():
    code = (
        "import sys, tunedml; print(sorted(m for m in ('torch', 'ray', 'mlflow', 'optuna', 'transformers', "
        "'numpy') if m in sys.modules))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert run.returncode == 0 and run.stdout.strip() == "[]", run.stderr


def test_the_operations_keep_their_names_once_the_modules_are_imported():
    """tunedml.train, .search, .retrain and .report are modules: the operations are named apart,
    or importing a module would turn tunedml.<operation> into it."""
    import tunedml.report
    import tunedml.retrain
    import tunedml.search
    import tunedml.train  # noqa: F401

    for name in OPERATIONS:
        assert inspect.isfunction(getattr(tunedml, name)), name
    assert set(OPERATIONS) <= set(tunedml.__all__)


@pytest.mark.parametrize("name", OPERATIONS)
def test_every_operation_is_typed_and_documented(name):
    """As Optuna documents its functions: every argument typed and described; Returns, Raises, an example."""
    fn = getattr(tunedml, name)
    doc = inspect.getdoc(fn)
    for part in ("Args:", "Returns:", "Raises:", "Example:", "import tunedml"):
        assert part in doc, (name, part)
    signature = inspect.signature(fn)
    assert signature.return_annotation is not inspect.Signature.empty, name
    for parameter in signature.parameters.values():
        assert parameter.annotation is not inspect.Parameter.empty, (name, parameter.name)
        assert f"    {parameter.name}:" in doc, (name, parameter.name)
