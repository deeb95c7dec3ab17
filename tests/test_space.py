"""Search spaces: the YAML language, its validation against the config and loss registry, and the
Optuna define-by-run function it becomes. No Ray here; these tests are fast."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from tunedml.config import from_flat
from tunedml.errors import ConfigError
from tunedml.optuna_space import optuna_distributions
from tunedml.space import BRANCH_SEP, config_keys, load_space

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "search_spaces").glob("*.yaml"))

optuna.logging.set_verbosity(optuna.logging.WARNING)


def write(tmp_path: Path, text: str, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def sample(space, n: int, seed: int = 0) -> list[dict]:
    """``n`` configs drawn through Optuna exactly as a search draws them."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append(config_keys(space.define_by_run(trial)))
        study.tell(trial, 0.0)
    return out


# ----------------------------------------------------------------- the shipped spaces

def test_every_issue_space_is_shipped():
    assert {p.stem for p in SHIPPED} >= {"cce", "proxy_anchor", "soft_triple", "proxy_nca", "supcon", "dml"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_space_validates_and_samples_valid_configs(path):
    space = load_space(path)
    space.check_against({"data.dataset": "sst2", "data.k": 8})
    assert space.root.dists or space.root.branches
    for config in sample(space, 12):
        from_flat({"data.k": 8, **config}, source=str(path))  # every drawn trial is a valid run config


def test_dml_space_has_a_conditional_block_per_loss():
    space = load_space(REPO / "search_spaces" / "dml.yaml")
    names = optuna_distributions(space)
    assert names["loss.name"].choices == ("none", "proxy_anchor", "soft_triple", "proxy_nca", "supcon")
    # each branch's hyperparameters are their own Optuna parameters, so TPE models each loss apart
    assert {"loss.margin|proxy_anchor", "loss.alpha|proxy_anchor", "loss.centers_per_class|soft_triple",
            "loss.softmax_scale|proxy_nca", "loss.temperature|supcon"} <= set(names)
    for config in sample(space, 40):
        params = {k.split(".", 1)[1] for k in config if k.startswith("loss.")} - {"name", "ce_weight", "dml_weight"}
        expected = {"none": set(), "proxy_anchor": {"margin", "alpha"}, "soft_triple": {"centers_per_class", "la", "gamma"},
                    "proxy_nca": {"softmax_scale"}, "supcon": {"temperature"}}[config["loss.name"]]
        assert params == expected, config
        assert config["train.epochs"] == 15  # fixed values come with every trial


def test_a_command_line_value_replaces_a_fixed_one_and_clashes_with_a_searched_one(tmp_path):
    space = load_space(REPO / "search_spaces" / "dml.yaml")
    space.check_against({"train.epochs": 3})
    assert space.root.fixed["train.epochs"] == 3
    with pytest.raises(ConfigError, match=r"dml.yaml: train.lr is searched in this space and also set"):
        load_space(REPO / "search_spaces" / "dml.yaml").check_against({"train.lr": 1e-4})


def test_a_fixed_loss_on_the_command_line_validates_the_space_hyperparameters(tmp_path):
    path = write(tmp_path, "loss.margin: {uniform: [0.0, 0.5]}\n")
    load_space(path, {"loss.name": "proxy_anchor"}).check_against({"loss.name": "proxy_anchor"})
    with pytest.raises(ConfigError, match=r"space.yaml: loss.margin is not a hyperparameter of loss 'supcon'"):
        load_space(path, {"loss.name": "supcon"})


# ----------------------------------------------------------------- the language

def test_distributions_become_optuna_distributions(tmp_path):
    path = write(tmp_path, """
train.lr: {loguniform: [1.0e-5, 1.0e-3]}
train.weight_decay: {uniform: [0.0, 0.1]}
train.warmup_ratio: {uniform: {low: 0.01, high: 0.2, log: true}}
train.batch_size: {categorical: [8, 16, 32]}
train.epochs: {int: {low: 2, high: 10, step: 2}}
data.max_length: {int: {low: 16, high: 128, log: true}}
model.pooling: cls
""")
    space = load_space(path)
    d = optuna_distributions(space)
    assert d["train.lr"] == optuna.distributions.FloatDistribution(1e-5, 1e-3, log=True)
    assert d["train.weight_decay"] == optuna.distributions.FloatDistribution(0.0, 0.1)
    assert d["train.warmup_ratio"] == optuna.distributions.FloatDistribution(0.01, 0.2, log=True)
    assert d["train.batch_size"] == optuna.distributions.CategoricalDistribution([8, 16, 32])
    assert d["train.epochs"] == optuna.distributions.IntDistribution(2, 10, step=2)
    assert d["data.max_length"] == optuna.distributions.IntDistribution(16, 128, log=True)
    assert space.root.fixed["model.pooling"] == "cls"
    for config in sample(space, 10):
        assert config["train.epochs"] in (2, 4, 6, 8, 10) and isinstance(config["train.epochs"], int)
        assert 1e-5 <= config["train.lr"] <= 1e-3


def test_any_train_config_key_can_be_searched(tmp_path):
    path = write(tmp_path, """
data.max_length: {categorical: [32, 64]}
model.dropout: {uniform: [0.0, 0.3]}
model.token_mode: {categorical: [false, true]}
inference.mix_weight: {uniform: [0.2, 0.8]}
train.max_grad_norm: {categorical: [0.0, 1.0]}
""")
    space = load_space(path)
    space.check_against({})
    assert {"data.max_length", "model.dropout", "model.token_mode", "inference.mix_weight"} <= space.root.keys()


def test_nested_choices_get_distinct_optuna_names_without_slashes(tmp_path):
    path = write(tmp_path, """
loss.name:
  choice:
    none: {}
    proxy_anchor:
      loss.margin: {uniform: [0.0, 0.5]}
      inference.mode:
        choice:
          head: {}
          mixed:
            inference.mix_weight: {uniform: [0.1, 0.9]}
""")
    space = load_space(path)
    space.check_against({})
    names = set(optuna_distributions(space))
    assert "inference.mix_weight|proxy_anchor,inference.mode=mixed" in names
    assert not any("/" in n for n in names)  # Ray would read a slash as a nested config
    configs = sample(space, 30)
    assert all(("inference.mix_weight" in c) == (c.get("inference.mode") == "mixed") for c in configs)
    assert all(BRANCH_SEP not in k for c in configs for k in c)


def test_points_map_config_keys_to_optuna_parameters():
    space = load_space(REPO / "search_spaces" / "dml.yaml")
    params = space.optuna_params({"loss.name": "soft_triple", "loss.la": 20.0, "train.lr": 1e-4})
    assert params == {"loss.name": "soft_triple", "loss.la|soft_triple": 20.0, "train.lr": 1e-4}
    with pytest.raises(ConfigError, match="does not search"):
        space.optuna_params({"data.k": 4})
    with pytest.raises(ConfigError, match="loss.name='arcface' is not an option"):
        space.optuna_params({"loss.name": "arcface"})


# ----------------------------------------------------------------- invalid spaces: one error, file and key

INVALID = {
    "unknown key": ("train.lrr: {loguniform: [1.0e-5, 1.0e-3]}\n", "train.lrr", "unknown key"),
    "unknown loss hyperparameter": ("loss.name:\n  choice:\n    proxy_anchor:\n      loss.temperature: {uniform: [0.1, 0.5]}\n",
                                    "loss.temperature", "not a hyperparameter of loss 'proxy_anchor'"),
    "loss hyperparameter beside a loss choice": ("loss.name: {choice: {none: {}, supcon: {}}}\nloss.temperature: 0.1\n",
                                                 "loss.temperature", "not a hyperparameter of loss 'none'"),
    "outside the loss's range": ("loss.name: proxy_anchor\nloss.margin: {uniform: [0.0, 2.0]}\n", "loss.margin", "out of range"),
    "outside the range in a branch": ("loss.name:\n  choice:\n    soft_triple:\n      loss.centers_per_class: {int: [1, 500]}\n",
                                      "loss.centers_per_class", "out of range"),
    "outside a config range": ("train.lr: {loguniform: [1.0e-5, 10.0]}\n", "train.lr", "out of range"),
    "low > high": ("train.lr: {loguniform: [1.0e-3, 1.0e-5]}\n", "train.lr", "low 0.001 > high 1e-05"),
    "log with zero bound": ("train.weight_decay: {loguniform: [0.0, 0.1]}\n", "train.weight_decay", "log scale needs bounds > 0"),
    "int log with zero bound": ("train.epochs: {int: {low: 0, high: 10, log: true}}\n", "train.epochs", "log scale needs bounds > 0"),
    "empty categorical": ("train.batch_size: {categorical: []}\n", "train.batch_size", "non-empty list"),
    "empty choice": ("loss.name: {choice: {}}\n", "loss.name", "choice needs a mapping"),
    "unknown loss in choice": ("loss.name: {choice: {proxy_anchr: {}}}\n", "loss.name", "did you mean 'proxy_anchor'"),
    "bad categorical value": ("model.pooling: {categorical: [mean, max]}\n", "model.pooling", "unknown value 'max'"),
    "unknown distribution": ("train.lr: {normal: [0.0, 1.0]}\n", "train.lr", "expected a value or one of"),
    "int on a float key": ("train.lr: {int: [1, 2]}\n", "train.lr", "int distribution on a float key"),
    "uniform on an int key": ("train.epochs: {uniform: [1, 5]}\n", "train.epochs", "use int"),
    "fractional int bound": ("train.epochs: {int: [1.5, 5]}\n", "train.epochs", "whole-number bounds"),
    "unknown range option": ("train.epochs: {int: {low: 1, high: 5, stepp: 2}}\n", "train.epochs", "unknown: stepp"),
    "one bound": ("train.lr: {uniform: [0.1]}\n", "train.lr", "two numbers"),
    "bad fixed value": ("train.batch_size: [8, 16]\n", "train.batch_size", "is not a int"),
    "rule across keys at a range's low end": ("loss.name: none\nloss.ce_weight: {uniform: [0.0, 1.0]}\n",
                                              "loss.ce_weight", "must be > 0 when loss.name is 'none'"),
    "rule across keys at a range's high end": ("data.protocol: kfold\ndata.folds: 3\ndata.fold: {int: [0, 4]}\n",
                                               "data.fold", "data.fold=4 must be below data.folds=3"),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_space_names_the_file_and_the_key(tmp_path, case):
    text, key, fragment = INVALID[case]
    path = write(tmp_path, text, "bad.yaml")
    with pytest.raises(ConfigError) as error:
        load_space(path).check_against({})
    message = str(error.value)
    assert str(path) in message and key in message and fragment in message, message
    assert "\n" not in message


@pytest.mark.parametrize("text, fragment", [("", "empty"), ("train.lr: [unclosed\n", "not valid YAML"),
                                            ("- a list\n", "expected a mapping")])
def test_unreadable_space_files(tmp_path, text, fragment):
    path = write(tmp_path, text, "bad.yaml")
    with pytest.raises(ConfigError, match=fragment):
        load_space(path)


def test_missing_space_file(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: search space file not found"):
        load_space(tmp_path / "nope.yaml")
