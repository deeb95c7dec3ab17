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
SHIPPED = sorted(p for p in (REPO / "search_spaces").glob("*.yaml") if not p.name.startswith("_"))  # _*: parts
COMMON = {
    "train.lr",
    "train.steps",
    "train.eval_every",
    "train.batch_size",
    "train.warmup_ratio",
    "train.weight_decay",
}

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
    assert {p.stem for p in SHIPPED} >= {
        "cce",
        "proxy_anchor",
        "soft_triple",
        "proxy_nca",
        "supcon",
        "dml",
        "ensemble",
        "moo",
    }


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
    assert {
        "loss.margin|proxy_anchor",
        "loss.alpha|proxy_anchor",
        "loss.centers_per_class|soft_triple",
        "loss.softmax_scale|proxy_nca",
        "loss.temperature|supcon",
    } <= set(names)
    for config in sample(space, 40):
        params = {k.split(".", 1)[1] for k in config if k.startswith("loss.")} - {"name", "ce_weight", "dml_weight"}
        expected = {
            "none": set(),
            "proxy_anchor": {"margin", "alpha"},
            "soft_triple": {"centers_per_class", "la", "gamma"},
            "proxy_nca": {"softmax_scale"},
            "supcon": {"temperature"},
        }[config["loss.name"]]
        assert params == expected, config
        assert (
            config["train.steps"] == common_steps() and "train.epochs" not in config
        )  # fixed values come with every trial


def common_steps() -> int:
    """The shipped run length, in optimizer steps (chosen from docs/budget.md)."""
    return load_space(REPO / "search_spaces" / "_common.yaml").root.fixed["train.steps"]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_spaces_share_one_definition_of_everything_but_the_loss(path):
    common = load_space(REPO / "search_spaces" / "_common.yaml")
    space = load_space(path)
    assert space.text.startswith("#") and "include: _common.yaml" in space.text
    assert [Path(p).name for p, _ in space.sources] == [path.name, "_common.yaml"]
    top = set(space.root.fixed) | {d.key for d in space.root.dists}
    assert COMMON <= top and not any(
        COMMON & sub.keys() for _, opts in space.root.branches.values() for sub in opts.values()
    )
    for key in COMMON:  # the very same distribution or value in every space
        assert space.root.fixed.get(key) == common.root.fixed.get(key)
        assert [d for d in space.root.dists if d.key == key] == [d for d in common.root.dists if d.key == key]
    assert space.root.fixed["train.steps"] == common_steps()  # fixed: ASHA's rungs compare equal schedules
    assert space.root.fixed["train.eval_every"] * 4 == common_steps()  # dev where the first rung falls


def test_the_cce_space_is_the_dml_space_without_the_loss():
    cce = load_space(REPO / "search_spaces" / "cce.yaml")
    dml = load_space(REPO / "search_spaces" / "dml.yaml")
    assert cce.root.fixed["loss.name"] == "none" and cce.root.keys() == COMMON | {"loss.name"}
    none_branch = dml.root.branches["loss.name"][1]["none"]
    assert not (none_branch.dists or none_branch.branches) and dml.root.keys() - {
        k for s in dml.root.branches["loss.name"][1].values() for k in s.keys()
    } == COMMON | {"loss.name"}


def test_include_is_resolved_next_to_the_including_file(tmp_path):
    (tmp_path / "parts").mkdir()
    write(tmp_path / "parts", "train.lr: {loguniform: [1.0e-5, 1.0e-4]}\ninclude: more.yaml\n", "base.yaml")
    write(tmp_path / "parts", "train.epochs: 3\n", "more.yaml")
    path = write(tmp_path, "include: parts/base.yaml\nloss.name: supcon\n")
    space = load_space(path)
    assert space.root.fixed["train.epochs"] == 3 and space.root.fixed["loss.name"] == "supcon"
    assert "train.lr" in optuna_distributions(space)
    assert len(space.sources) == 3
    before = space.sha256
    write(tmp_path / "parts", "train.epochs: 4\n", "more.yaml")
    assert load_space(path).sha256 != before  # an edited include is another space


@pytest.mark.parametrize(
    "files, fragment",
    [
        ({"space.yaml": "include: nope.yaml\ntrain.epochs: 2\n"}, "space.yaml: include: nope.yaml not found"),
        (
            {"space.yaml": "include: a.yaml\n", "a.yaml": "include: space.yaml\n"},
            "a.yaml: include: space.yaml includes itself",
        ),
        ({"space.yaml": "include: space.yaml\n"}, "space.yaml: include: space.yaml includes itself"),
        (
            {
                "space.yaml": "include: a.yaml\ntrain.lr: 0.001\n",
                "a.yaml": "train.lr: {loguniform: [1.0e-5, 1.0e-4]}\n",
            },
            "space.yaml: train.lr is defined here and in a.yaml (included)",
        ),
        (
            {"space.yaml": "include: [a.yaml, b.yaml]\n", "a.yaml": "train.epochs: 2\n", "b.yaml": "train.epochs: 3\n"},
            "space.yaml: train.epochs is defined twice, in a.yaml and in b.yaml",
        ),
        ({"space.yaml": "include: {a: 1}\n"}, "space.yaml: include takes a file name or a list of file names"),
        ({"space.yaml": "include: a.yaml\n", "a.yaml": "train.lrr: 2\n"}, "unknown key 'train.lrr'"),
    ],
)
def test_bad_includes_are_one_line_naming_the_file_and_key(tmp_path, files, fragment):
    for name, text in files.items():
        write(tmp_path, text, name)
    with pytest.raises(ConfigError) as error:
        load_space(tmp_path / "space.yaml").check_against({})
    assert fragment in str(error.value) and "\n" not in str(error.value), str(error.value)


# ----------------------------------------------------------------- the start of a search spreads over the options


def test_per_option_points_cycle_through_every_loss(tmp_path):
    space = load_space(REPO / "search_spaces" / "dml.yaml")
    points = space.per_option_points("loss.name", 2)
    losses = ["none", "proxy_anchor", "soft_triple", "proxy_nca", "supcon"]
    assert points == [{"loss.name": name} for name in losses * 2]
    pooled = load_space(write(tmp_path, "model.pooling: {categorical: [mean, cls]}\ntrain.lr: 1.0e-4\n"))
    assert pooled.per_option_points("model.pooling", 1) == [{"model.pooling": "mean"}, {"model.pooling": "cls"}]
    assert space.per_option_points("train.lr", 1) == []  # not a choice: nothing to spread
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    for point in points:
        study.enqueue_trial(point)  # what OptunaSearch does with points_to_evaluate
    drawn = [config_keys(space.define_by_run(t))["loss.name"] for t in (study.ask() for _ in range(10))]
    assert drawn == losses * 2


# ----------------------------------------------------------------- no parameter that does nothing


@pytest.mark.parametrize(
    "text, key, branch",
    [
        (
            "loss.name: {choice: {none: {}, supcon: {}}}\ntrain.proxy_lr: {loguniform: [1.0e-4, 1.0e-1]}\n",
            "train.proxy_lr",
            "loss.name=none",
        ),
        (
            "loss.name: {choice: {proxy_anchor: {}, supcon: {train.proxy_lr: {loguniform: [1.0e-4, 1.0e-1]}}}}\n",
            "train.proxy_lr",
            "loss.name=supcon",
        ),
        (
            "loss.name: {choice: {none: {}, supcon: {}}}\ninference.mode: {categorical: [head, proxy]}\n",
            "inference.mode",
            "loss.name=none",
        ),
        (
            "loss.name: {categorical: [none, supcon]}\nloss.dml_weight: {uniform: [0.1, 1.0]}\n",
            "loss.dml_weight",
            "at the top level",
        ),
        ("loss.name: none\ninference.mix_weight: {uniform: [0.1, 0.9]}\n", "inference.mix_weight", "at the top level"),
        (
            "loss.name: proxy_anchor\ninference.mode: {categorical: [head, mixed]}\ninference.proxy_scale: {loguniform: [1.0, 64.0]}\n",
            "inference.proxy_scale",
            "inference.mode=head",
        ),
    ],
)
def test_a_key_searched_where_it_does_nothing_is_refused(tmp_path, text, key, branch):
    path = write(tmp_path, text, "bad.yaml")
    with pytest.raises(ConfigError) as error:
        load_space(path).check_against({})
    message = str(error.value)
    assert message.startswith(f"{path}: {key} is searched") and branch in message and "does nothing" in message, message
    assert "\n" not in message


def test_keys_searched_only_where_they_change_the_run_are_accepted(tmp_path):
    path = write(
        tmp_path,
        """
loss.name:
  choice:
    none: {}
    proxy_anchor:
      train.proxy_lr: {loguniform: [1.0e-4, 1.0e-1]}
      inference.mode:
        choice:
          head: {}
          mixed: {inference.mix_weight: {uniform: [0.1, 0.9]}}
""",
    )
    load_space(path).check_against({})
    # the command line fixes the loss: proxy_lr is then searched only where it matters
    load_space(
        write(tmp_path, "train.proxy_lr: {loguniform: [1.0e-4, 1.0e-1]}\n", "p.yaml"), {"loss.name": "soft_triple"}
    ).check_against({"loss.name": "soft_triple"})
    with pytest.raises(ConfigError, match="train.proxy_lr is searched at the top level, where it does nothing"):
        load_space(write(tmp_path, "train.proxy_lr: {loguniform: [1.0e-4, 1.0e-1]}\n", "p.yaml")).check_against({})


def test_a_command_line_value_replaces_a_fixed_one_and_clashes_with_a_searched_one(tmp_path):
    space = load_space(REPO / "search_spaces" / "dml.yaml")
    space.check_against({"train.steps": 30})
    assert space.root.fixed["train.steps"] == 30


def test_a_run_length_on_the_command_line_replaces_the_spaces_in_either_spelling(tmp_path):
    space = load_space(REPO / "search_spaces" / "dml.yaml")
    space.check_against({"train.epochs": 3})  # the space's train.steps gives way
    assert "train.steps" not in space.root.fixed
    trial = from_flat({"train.epochs": 3, **space.root.examples(0)[0]})
    assert (trial.train.epochs, trial.train.steps) == (3, None)
    searched = write(tmp_path, "train.steps: {int: [50, 100]}\n")
    with pytest.raises(ConfigError, match=r"space.yaml: train.steps is searched in this space and train.epochs is set"):
        load_space(searched).check_against({"train.epochs": 3})
    with pytest.raises(ConfigError, match=r"dml.yaml: train.lr is searched in this space and also set"):
        load_space(REPO / "search_spaces" / "dml.yaml").check_against({"train.lr": 1e-4})


def test_a_fixed_loss_on_the_command_line_validates_the_space_hyperparameters(tmp_path):
    path = write(tmp_path, "loss.margin: {uniform: [0.0, 0.5]}\n")
    load_space(path, {"loss.name": "proxy_anchor"}).check_against({"loss.name": "proxy_anchor"})
    with pytest.raises(ConfigError, match=r"space.yaml: loss.margin is not a hyperparameter of loss 'supcon'"):
        load_space(path, {"loss.name": "supcon"})


# ----------------------------------------------------------------- the language


def test_distributions_become_optuna_distributions(tmp_path):
    path = write(
        tmp_path,
        """
train.lr: {loguniform: [1.0e-5, 1.0e-3]}
train.weight_decay: {uniform: [0.0, 0.1]}
train.warmup_ratio: {uniform: {low: 0.01, high: 0.2, log: true}}
train.batch_size: {categorical: [8, 16, 32]}
train.epochs: {int: {low: 2, high: 10, step: 2}}
data.max_length: {int: {low: 16, high: 128, log: true}}
model.pooling: cls
""",
    )
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
    path = write(
        tmp_path,
        """
data.max_length: {categorical: [32, 64]}
model.dropout: {uniform: [0.0, 0.3]}
model.token_mode: {categorical: [false, true]}
inference.mix_weight: {uniform: [0.2, 0.8]}
train.max_grad_norm: {categorical: [0.0, 1.0]}
loss.name: proxy_anchor
inference.mode: mixed
""",
    )
    space = load_space(path)
    space.check_against({})
    assert {"data.max_length", "model.dropout", "model.token_mode", "inference.mix_weight"} <= space.root.keys()


def test_nested_choices_get_distinct_optuna_names_without_slashes(tmp_path):
    path = write(
        tmp_path,
        """
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
""",
    )
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


# ----------------------------------------------------------------- loss sets and weightings


def test_the_ensemble_space_offers_sets_with_their_own_hyperparameters_and_weightings():
    space = load_space(REPO / "search_spaces" / "ensemble.yaml")
    space.check_against({})
    configs = sample(space, 40)
    assert {c["loss.name"] for c in configs} == {
        "proxy_anchor+supcon",
        "soft_triple+supcon",
        "proxy_anchor+soft_triple+supcon",
    }
    assert {c["loss.weighting"] for c in configs} == {"linear", "uncertainty", "epo"}
    for c in configs:
        names = c["loss.name"].split("+")
        weights = {k for k in c if k.endswith(".weight")}
        assert weights == (set() if c["loss.weighting"] == "uncertainty" else {f"loss.{n}.weight" for n in names})
        assert all(k.split(".")[1] in names for k in c if k.count(".") == 2)
        from_flat(c)


def test_the_moo_space_compares_linear_and_epo_over_the_same_rays():
    space = load_space(REPO / "search_spaces" / "moo.yaml")
    d = optuna_distributions(space)
    assert d["loss.weighting"].choices == ("linear", "epo") and "loss.dml_weight" in d
    assert space.root.fixed["loss.name"] == "supcon" and space.root.fixed["loss.ce_weight"] == 1.0


# ----------------------------------------------------------------- invalid spaces: one error, file and key

INVALID = {
    "unknown key": ("train.lrr: {loguniform: [1.0e-5, 1.0e-3]}\n", "train.lrr", "unknown key"),
    "unknown loss hyperparameter": (
        "loss.name:\n  choice:\n    proxy_anchor:\n      loss.temperature: {uniform: [0.1, 0.5]}\n",
        "loss.temperature",
        "not a hyperparameter of loss 'proxy_anchor'",
    ),
    "loss hyperparameter beside a loss choice": (
        "loss.name: {choice: {none: {}, supcon: {}}}\nloss.temperature: 0.1\n",
        "loss.temperature",
        "not a hyperparameter of loss 'none'",
    ),
    "outside the loss's range": (
        "loss.name: proxy_anchor\nloss.margin: {uniform: [0.0, 2.0]}\n",
        "loss.margin",
        "out of range",
    ),
    "outside the range in a branch": (
        "loss.name:\n  choice:\n    soft_triple:\n      loss.centers_per_class: {int: [1, 500]}\n",
        "loss.centers_per_class",
        "out of range",
    ),
    "outside a config range": ("train.lr: {loguniform: [1.0e-5, 10.0]}\n", "train.lr", "out of range"),
    "low > high": ("train.lr: {loguniform: [1.0e-3, 1.0e-5]}\n", "train.lr", "low 0.001 > high 1e-05"),
    "log with zero bound": (
        "train.weight_decay: {loguniform: [0.0, 0.1]}\n",
        "train.weight_decay",
        "log scale needs bounds > 0",
    ),
    "int log with zero bound": (
        "train.epochs: {int: {low: 0, high: 10, log: true}}\n",
        "train.epochs",
        "log scale needs bounds > 0",
    ),
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
    "rule across keys at a range's low end": (
        "loss.name: none\nloss.ce_weight: {uniform: [0.0, 1.0]}\n",
        "loss.ce_weight",
        "must be > 0 when loss.name is 'none'",
    ),
    "a loss not in the set": (
        "loss.name: {choice: {proxy_anchor+supcon: {loss.soft_triple.la: {uniform: [5.0, 10.0]}}}}\n",
        "loss.soft_triple.la",
        "soft_triple is not a loss of loss.name=proxy_anchor+supcon",
    ),
    "short key in a set": (
        "loss.name: proxy_anchor+supcon\nloss.margin: {uniform: [0.0, 0.5]}\n",
        "loss.margin",
        "names several losses; name the loss: loss.proxy_anchor.margin",
    ),
    "the same loss twice": ("loss.name: {choice: {supcon+supcon: {}}}\n", "loss.name", "supcon appears twice"),
    "unknown loss in a set": ("loss.name: {categorical: [proxy_anchor+supcn]}\n", "loss.name", "unknown loss 'supcn'"),
    "epo with one term": (
        "loss.name: {choice: {none: {}, supcon: {}}}\nloss.weighting: epo\n",
        "loss.weighting=epo",
        "combines several terms",
    ),
    "learned weights searched": (
        "loss.name: supcon\nloss.weighting: uncertainty\nloss.dml_weight: {uniform: [0.1, 1.0]}\n",
        "loss.dml_weight",
        "where it does nothing (loss.name=supcon, loss.weighting=uncertainty, train.schedule=joint)",
    ),
    "loss weights under two stages": (
        "loss.name: supcon\ntrain.schedule: two_stage\nloss.ce_weight: {uniform: [0.1, 1.0]}\n",
        "loss.ce_weight",
        "does nothing (loss.name=supcon, loss.weighting=linear, train.schedule=two_stage)",
    ),
    "m without its sampler": (
        "data.m_per_class: {categorical: [2, 4]}\n",
        "data.m_per_class",
        "(data.sampler=random); it applies only with data.sampler=m_per_class",
    ),
    "head fit in a joint run": (
        "loss.name: supcon\nhead.fit: {categorical: [linear, logistic]}\n",
        "head.fit",
        "it applies only with train.schedule=two_stage",
    ),
    "stage split of a logistic head": (
        "loss.name: supcon\ntrain.schedule: two_stage\nhead.fit: logistic\n"
        "train.stage1_fraction: {uniform: [0.3, 0.9]}\n",
        "train.stage1_fraction",
        "(train.schedule=two_stage, head.fit=logistic)",
    ),
    "two stages without a DML loss": (
        "loss.name: {choice: {none: {}, supcon: {}}}\ntrain.schedule: two_stage\n",
        "train.schedule=two_stage",
        "loss.name=none names none",
    ),
    "m per class beyond the draw": (
        "loss.name: supcon\ndata.sampler: m_per_class\ntrain.batch_size: 64\ndata.m_per_class: {int: [2, 32]}\n",
        "data.m_per_class",
        "data.m_per_class=32 is more than the data.k=16 examples",
    ),
    "rule across keys at a range's high end": (
        "data.protocol: kfold\ndata.folds: 3\ndata.fold: {int: [0, 4]}\n",
        "data.fold",
        "data.fold=4 must be below data.folds=3",
    ),
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


@pytest.mark.parametrize(
    "text, fragment", [("", "empty"), ("train.lr: [unclosed\n", "not valid YAML"), ("- a list\n", "expected a mapping")]
)
def test_unreadable_space_files(tmp_path, text, fragment):
    path = write(tmp_path, text, "bad.yaml")
    with pytest.raises(ConfigError, match=fragment):
        load_space(path)


def test_missing_space_file(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: search space file not found"):
        load_space(tmp_path / "nope.yaml")


def test_a_loss_hyperparameter_on_the_command_line_replaces_the_spaces_other_spelling(tmp_path):
    """Precedence, not a clash: the space fixes loss.margin, the command line gives the same
    hyperparameter as loss.proxy_anchor.margin; the command line's value is the one trained."""
    path = write(tmp_path, "loss.name: proxy_anchor\nloss.margin: 0.2\ntrain.lr: {loguniform: [1.0e-5, 1.0e-4]}\n")
    space = load_space(path, {"loss.margin": 0.3})
    space.check_against({"loss.proxy_anchor.margin": 0.3})
    assert "loss.margin" not in space.root.fixed
    trial = from_flat({"loss.proxy_anchor.margin": 0.3, **space.root.examples(0)[0]})
    assert trial.loss.params == {"margin": 0.3}
    searched = write(tmp_path, "loss.name: proxy_anchor\nloss.margin: {uniform: [0.0, 0.5]}\n", "searched.yaml")
    with pytest.raises(ConfigError, match=r"loss.margin is searched in this space and loss.proxy_anchor.margin"):
        load_space(searched).check_against({"loss.proxy_anchor.margin": 0.3})


@pytest.mark.parametrize(
    "text, base, fragment",
    [
        ("data.protocol: {categorical: [kshot, kfold]}\n", {"data.folds": 3}, None),  # kfold branches use it
        ("loss.name: none\n", {"data.folds": 3}, "data.folds=3 does nothing with data.protocol=kshot"),
        (
            "loss.name: none\nadversarial.alpha: 0.2\n",
            {},
            "adversarial.alpha=0.2 does nothing with adversarial.mode=none",
        ),
        ("loss.name: none\nadversarial.alpha: 0.5\n", {}, None),  # the default: a full config's value
        ("adversarial.mode: {choice: {none: {}, pgd: {}}}\n", {"adversarial.steps": 5}, None),
    ],
)
def test_a_fixed_value_must_be_used_in_some_branch(tmp_path, text, base, fragment):
    space = load_space(write(tmp_path, text), base)
    if fragment is None:
        space.check_against(base)
        return
    with pytest.raises(ConfigError, match="no branch of the space uses it") as error:
        space.check_against(base)
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_a_data_key_serving_one_dataset_of_several_is_used(tmp_path):
    data = tmp_path / "mine.csv"
    data.write_text("text,label\n")
    base = {"data.dataset": str(data), "data.text_column": "sentence"}
    load_space(write(tmp_path, "loss.name: none\n"), base).check_against(base, [str(data), "sst2"])
    sst2 = {**base, "data.dataset": "sst2"}  # the sst2 search of `--dataset sst2,mine.csv --set data.text_column=...`
    load_space(write(tmp_path, "loss.name: none\n"), sst2).check_against(sst2, ["sst2", str(data)])
    with pytest.raises(ConfigError, match="data.text_column=sentence does nothing with data.dataset=sst2"):
        load_space(write(tmp_path, "loss.name: none\n"), sst2).check_against(sst2, ["sst2"])
