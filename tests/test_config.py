"""Run configs: defaults, YAML and `--set` overrides, and the errors a user sees for bad input."""

from __future__ import annotations

import pytest

from tunedml.config import FIELDS, RunConfig, build_config, check_used, explicit_sources, from_flat, parse_set_args
from tunedml.errors import ConfigError
from tunedml.losses import LOSSES


def write(tmp_path, text: str, name: str = "run.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# ---------------------------------------------------------------- defaults and precedence


def test_defaults_describe_a_plain_cce_run_on_sst2():
    cfg = build_config()
    assert cfg == RunConfig()
    assert (cfg.data.dataset, cfg.data.protocol, cfg.data.k) == ("sst2", "kshot", 16)
    assert (cfg.model.name, cfg.model.pooling, cfg.model.token_mode) == ("minilm", "mean", False)
    assert (cfg.loss.name, cfg.loss.ce_weight, cfg.loss.params) == ("none", 1.0, {})
    assert (cfg.train.lr, cfg.train.batch_size, cfg.train.seed) == (1e-4, 16, 0)
    assert cfg.inference.mode == "head"


def test_set_values_are_parsed_to_the_field_type():
    cfg = build_config(sets=["data.k=8", "train.lr=0.001", "model.token_mode=true", "model.pooling=cls"])
    assert cfg.data.k == 8 and isinstance(cfg.data.k, int)
    assert cfg.train.lr == 0.001 and isinstance(cfg.train.lr, float)
    assert cfg.model.token_mode is True
    assert cfg.model.pooling == "cls"


@pytest.mark.parametrize("text, value", [("1e-4", 1e-4), ("3E-5", 3e-5), ("2.5e-3", 2.5e-3), (".1e1", 1.0)])
def test_exponent_notation_is_a_number(text, value):
    # PyYAML reads "1e-4" as a string; a learning rate is usually written that way
    assert build_config(sets=[f"train.lr={text}"]).train.lr == pytest.approx(value)


def test_yaml_file_then_command_line_then_set(tmp_path):
    config_file = write(
        tmp_path,
        """
data:
  k: 8
  seed: 3
train:
  lr: 1e-4
  epochs: 2
loss:
  name: proxy_anchor
  margin: 0.2
""",
    )
    cfg = build_config(config_file, sets=["data.k=4", "loss.alpha=16"], extra={"data.seed": 5, "data.k": 6})
    assert cfg.data.k == 4  # --set beats the command line and the file
    assert cfg.data.seed == 5  # the command line beats the file
    assert cfg.train.lr == 1e-4 and cfg.train.epochs == 2  # from the file
    assert cfg.train.batch_size == 16  # untouched default
    assert cfg.loss.name == "proxy_anchor"
    assert cfg.loss.params == {"margin": 0.2, "alpha": 16.0}


def test_yaml_file_may_use_flat_dotted_keys(tmp_path):
    cfg = build_config(write(tmp_path, "data.k: 4\ntrain.epochs: 3\n"))
    assert (cfg.data.k, cfg.train.epochs) == (4, 3)


def test_choosing_another_loss_drops_the_old_loss_hyperparameters(tmp_path):
    config_file = write(tmp_path, "loss: {name: proxy_anchor, margin: 0.3}\n")
    cfg = build_config(config_file, sets=["loss.name=proxy_nca"])
    assert cfg.loss.params == {}
    assert cfg.to_flat()["loss.softmax_scale"] == LOSSES["proxy_nca"].defaults()["softmax_scale"]
    assert "loss.margin" not in cfg.to_flat()


# ---------------------------------------------------------------- errors name the key and what is valid


def config_error(**kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        build_config(**kwargs)
    return str(info.value)


def test_unknown_key_suggests_the_closest_one():
    msg = config_error(sets=["train.lrr=0.1"])
    assert "unknown key 'train.lrr'" in msg
    assert "did you mean 'train.lr'?" in msg
    assert "data.k" in msg  # the valid keys are listed


def test_unknown_loss_lists_the_registered_losses():
    msg = config_error(sets=["loss.name=proxy_anchr"])
    assert "loss.name" in msg and "'proxy_anchr'" in msg
    assert "did you mean 'proxy_anchor'?" in msg
    for name in ("none", *LOSSES):
        assert name in msg


def test_hyperparameter_of_another_loss_names_the_valid_ones():
    msg = config_error(sets=["loss.name=proxy_nca", "loss.margin=0.1"])
    assert "loss.margin is not a hyperparameter of loss 'proxy_nca'" in msg
    assert "valid: loss.softmax_scale" in msg


def test_plain_cce_has_no_loss_hyperparameters():
    msg = config_error(sets=["loss.margin=0.1"])
    assert "loss.margin" in msg and "'none'" in msg and "plain CCE" in msg


@pytest.mark.parametrize(
    "item, expected",
    [
        ("data.k=0", "data.k=0 is out of range; valid: int in [1, 100000]"),
        ("train.lr=2", "train.lr=2.0 is out of range; valid: float in [1e-08, 1]"),
        ("model.dropout=-0.1", "model.dropout=-0.1 is out of range; valid: float in [0, 0.9]"),
    ],
)
def test_out_of_range_value_shows_the_range(item, expected):
    assert expected in config_error(sets=[item])


@pytest.mark.parametrize("text", [".nan", ".inf", "-.inf"])
def test_nan_and_inf_are_out_of_range(text):
    assert "is out of range; valid: float in [1e-08, 1]" in config_error(sets=[f"train.lr={text}"])


def test_loss_hyperparameter_out_of_range_shows_its_range():
    msg = config_error(sets=["loss.name=proxy_anchor", "loss.margin=1.5"])
    assert "loss.margin=1.5 is out of range; valid: float in [0, 1]" in msg


@pytest.mark.parametrize(
    "item, expected",
    [
        ("data.k=abc", "data.k='abc' is not a int; expected int in [1, 100000]"),
        ("data.k=2.5", "data.k=2.5 is not a int"),
        ("data.k=true", "data.k=True is not a int"),
        ("train.lr=fast", "train.lr='fast' is not a float"),
        ("model.token_mode=maybe", "model.token_mode='maybe' is not a bool; expected true or false"),
    ],
)
def test_wrong_type_names_the_expected_type(item, expected):
    assert expected in config_error(sets=[item])


def test_value_outside_choices_lists_the_choices():
    msg = config_error(sets=["model.pooling=max"])
    assert "model.pooling" in msg and "'max'" in msg and "valid: mean, cls" in msg


@pytest.mark.parametrize("item", ["data.k", "=4", "data.k 4"])
def test_malformed_set_shows_the_expected_form(item):
    with pytest.raises(ConfigError, match="expected KEY=VALUE, e.g. --set data.k=16"):
        parse_set_args([item])


def test_invalid_yaml_names_the_file_and_line(tmp_path):
    path = write(tmp_path, "data:\n  k: 4\n  seed: [1, 2\n")
    msg = config_error(config_file=path)
    assert path in msg and "is not valid YAML" in msg and "line" in msg


def test_yaml_that_is_not_a_mapping_is_rejected(tmp_path):
    msg = config_error(config_file=write(tmp_path, "- data.k\n- 4\n"))
    assert "expected a mapping of keys to values, got list" in msg


def test_missing_yaml_file_is_reported(tmp_path):
    assert "file not found" in config_error(config_file=str(tmp_path / "absent.yaml"))


def test_unknown_yaml_section_suggests_the_closest_one(tmp_path):
    msg = config_error(config_file=write(tmp_path, "trian:\n  lr: 0.001\n"))
    assert "unknown section 'trian'" in msg and "did you mean 'train'?" in msg


def test_error_in_yaml_file_names_the_file(tmp_path):
    path = write(tmp_path, "data:\n  k: -1\n")
    msg = config_error(config_file=path)
    assert msg.startswith(f"{path}: data.k=-1 is out of range")


def test_kfold_fold_must_be_below_folds():
    msg = config_error(sets=["data.protocol=kfold", "data.folds=3", "data.fold=3"])
    assert "data.fold=3 must be below data.folds=3" in msg
    assert build_config(sets=["data.protocol=kfold", "data.folds=3", "data.fold=2"]).data.fold == 2


def test_plain_cce_with_zero_ce_weight_trains_nothing():
    assert "loss.ce_weight must be > 0" in config_error(sets=["loss.ce_weight=0"])
    assert "both 0" in config_error(sets=["loss.name=supcon", "loss.ce_weight=0", "loss.dml_weight=0"])
    assert build_config(sets=["loss.name=supcon", "loss.ce_weight=0", "inference.mode=proxy"]).loss.ce_weight == 0.0


@pytest.mark.parametrize(
    "sets, expected",
    [
        (
            ["loss.name=supcon", "loss.ce_weight=0"],
            "--set: inference.mode=head uses the classification head, which loss.ce_weight=0 leaves untrained",
        ),
        (
            ["loss.name=proxy_anchor", "loss.ce_weight=0", "inference.mode=mixed"],
            "inference.mode=mixed uses the classification head, which loss.ce_weight=0 leaves untrained",
        ),
        (
            ["loss.name=proxy_anchor", "loss.dml_weight=0", "inference.mode=proxy"],
            "inference.mode=proxy uses the proxies of proxy_anchor (loss.name=proxy_anchor), which loss.dml_weight=0 leaves untrained",
        ),
        (
            ["loss.name=soft_triple", "loss.dml_weight=0", "inference.mode=mixed"],
            "inference.mode=mixed uses the proxies of soft_triple (loss.name=soft_triple), which loss.dml_weight=0 leaves untrained",
        ),
        (
            ["loss.name=supcon+proxy_nca", "loss.proxy_nca.weight=0", "inference.mode=proxy"],
            "inference.mode=proxy uses the proxies of proxy_nca (loss.name=supcon+proxy_nca), which loss.proxy_nca.weight=0 leaves untrained",
        ),
    ],
)
def test_inference_with_an_untrained_head_or_untrained_proxies_is_refused(sets, expected):
    msg = config_error(sets=sets)
    assert expected in msg and "\n" not in msg


@pytest.mark.parametrize(
    "sets",
    [
        ["loss.name=supcon", "loss.dml_weight=0", "inference.mode=proxy"],  # class centers need no proxies
        ["loss.name=none", "inference.mode=proxy"],
        ["loss.name=proxy_anchor", "loss.dml_weight=0"],  # head inference; the proxies are unused
        ["loss.name=proxy_anchor", "loss.ce_weight=0", "inference.mode=proxy"],
    ],
)
def test_inference_by_class_centers_or_trained_parts_is_allowed(sets):
    flat = build_config(sets=sets).to_flat()
    given = dict(s.split("=", 1) for s in sets)
    assert flat["loss.name"] == given["loss.name"]
    assert flat["inference.mode"] == given.get("inference.mode", "head")
    assert all(float(flat[k]) == float(v) for k, v in given.items() if k.endswith("_weight"))


def test_untrained_inference_is_refused_in_config_files_too(tmp_path):
    path = write(tmp_path, "loss: {name: proxy_nca, ce_weight: 0}\n")
    assert config_error(config_file=path).startswith(f"{path}: inference.mode=head uses the classification head")


def test_adversarial_defaults_are_off():
    adv = build_config().adversarial
    assert (adv.mode, adv.epsilon, adv.alpha, adv.steps, adv.weight) == ("none", 1.0, 0.5, 3, 1.0)
    cfg = build_config(sets=["adversarial.mode=pgd", "adversarial.epsilon=0.5", "adversarial.steps=5"])
    assert (cfg.adversarial.mode, cfg.adversarial.epsilon, cfg.adversarial.steps) == ("pgd", 0.5, 5)


@pytest.mark.parametrize(
    "sets, expected",
    [
        (
            ["adversarial.mode=fgm", "adversarial.epsilon=-1"],
            "--set: adversarial.epsilon=-1.0 is out of range; valid: float in [0.0001, 100]",
        ),
        (
            ["adversarial.mode=pgd", "adversarial.steps=0"],
            "--set: adversarial.steps=0 is out of range; valid: int in [1, 100]",
        ),
        (
            ["adversarial.mode=fgsm"],
            "--set: adversarial.mode: unknown value 'fgsm' (did you mean 'fgm'?); valid: none, fgm, pgd",
        ),
        (["adversarial.mode=pgd", "adversarial.alpha=0"], "adversarial.alpha=0.0 is out of range"),
        (["adversarial.weight=-0.5"], "adversarial.weight=-0.5 is out of range; valid: float in [0, 100]"),
        (
            ["adversarial.mode=fgm", "adversarial.weight=0"],
            "adversarial.mode=fgm with adversarial.weight=0 and no DML loss adds nothing to training",
        ),
        (
            ["adversarial.mode=fgm", "loss.name=supcon", "loss.ce_weight=0", "inference.mode=proxy"],
            "adversarial.mode=fgm perturbs along the CCE gradient of the head, which loss.ce_weight=0 leaves untrained",
        ),
    ],
)
def test_bad_adversarial_settings_are_one_line(sets, expected):
    msg = config_error(sets=sets)
    assert expected in msg and "\n" not in msg


def test_adversarial_views_without_their_cce_term_may_feed_a_dml_loss(tmp_path):
    cfg = build_config(write(tmp_path, "adversarial: {mode: fgm, weight: 0}\nloss: {name: supcon}\n"))
    assert (cfg.adversarial.mode, cfg.adversarial.weight) == ("fgm", 0.0)


# ---------------------------------------------------------------- flat and YAML round trips


def test_every_field_appears_in_the_flat_form():
    assert set(FIELDS) <= set(RunConfig().to_flat())


def test_to_flat_and_from_flat_round_trip():
    cfg = build_config(sets=["loss.name=soft_triple", "loss.centers_per_class=3", "data.k=4", "train.lr=1e-4"])
    flat = cfg.to_flat()
    assert flat["loss.centers_per_class"] == 3
    assert flat["loss.la"] == LOSSES["soft_triple"].defaults()["la"]  # defaults are filled in
    again = from_flat(flat)
    assert again.to_flat() == flat
    assert again.data == cfg.data and again.train == cfg.train and again.loss.name == "soft_triple"


def test_from_flat_validates_like_set():
    with pytest.raises(ConfigError, match="data.k=0 is out of range"):
        from_flat({"data.k": 0})


def test_to_yaml_loads_back_as_the_same_config(tmp_path):
    cfg = build_config(
        sets=[
            "loss.name=proxy_anchor",
            "loss.margin=0.25",
            "data.k=4",
            "train.lr=2e-5",
            "model.token_mode=true",
            "inference.mode=mixed",
        ]
    )
    path = write(tmp_path, cfg.to_yaml(), "best_config.yaml")
    again = build_config(config_file=path)
    assert again.to_flat() == cfg.to_flat()


# ---------------------------------------------------------------- loss sets and weightings


def test_a_set_of_losses_takes_each_loss_hyperparameters_and_weight():
    cfg = build_config(
        sets=[
            "loss.name=proxy_anchor+supcon",
            "loss.proxy_anchor.margin=0.2",
            "loss.supcon.temperature=0.3",
            "loss.supcon.weight=0.5",
            "loss.weighting=epo",
        ]
    )
    assert cfg.loss.weighting == "epo"
    assert cfg.loss.params == {"proxy_anchor.margin": 0.2, "supcon.temperature": 0.3, "supcon.weight": 0.5}
    flat = cfg.to_flat()
    assert flat["loss.proxy_anchor.alpha"] == LOSSES["proxy_anchor"].defaults()["alpha"]  # defaults filled in
    assert flat["loss.proxy_anchor.weight"] == 1.0 and flat["loss.supcon.weight"] == 0.5
    assert from_flat(flat).to_flat() == flat


def test_a_set_round_trips_through_nested_yaml(tmp_path):
    cfg = build_config(sets=["loss.name=soft_triple+supcon", "loss.soft_triple.la=5", "loss.weighting=uncertainty"])
    text = cfg.to_yaml()
    assert "  soft_triple:\n    centers_per_class: 10\n    la: 5.0\n" in text
    assert build_config(config_file=write(tmp_path, text)).to_flat() == cfg.to_flat()


def test_the_long_form_is_valid_for_a_single_loss_too():
    cfg = build_config(sets=["loss.name=supcon", "loss.supcon.temperature=0.2", "loss.supcon.weight=0.5"])
    assert cfg.loss.params == {"temperature": 0.2, "supcon.weight": 0.5}
    assert cfg.to_flat()["loss.temperature"] == 0.2
    assert (
        build_config(sets=["loss.name=supcon", "loss.temperature=0.2"]).to_flat()
        == build_config(sets=["loss.name=supcon", "loss.supcon.temperature=0.2"]).to_flat()
    )


def test_single_loss_configs_keep_their_flat_form():
    flat = build_config(sets=["loss.name=proxy_anchor"]).to_flat()
    assert {k for k in flat if k.startswith("loss.")} == {
        "loss.name",
        "loss.ce_weight",
        "loss.dml_weight",
        "loss.weighting",
        "loss.margin",
        "loss.alpha",
    }
    assert flat["loss.weighting"] == "linear"


@pytest.mark.parametrize(
    "sets, fragment",
    [
        (
            ["loss.name=proxy_anchor+supconn"],
            "loss.name: unknown loss 'supconn' in 'proxy_anchor+supconn' (did you mean 'supcon'?)",
        ),
        (["loss.name=supcon+supcon"], "loss.name: supcon appears twice in 'supcon+supcon'"),
        (["loss.name=none+supcon"], "none cannot join a set"),
        (
            ["loss.name=proxy_anchor+supcon", "loss.soft_triple.la=3"],
            "loss.soft_triple.la: soft_triple is not a loss of loss.name=proxy_anchor+supcon",
        ),
        (
            ["loss.name=proxy_anchor+supcon", "loss.margin=0.1"],
            "loss.margin: loss.name=proxy_anchor+supcon names several losses; name the loss: loss.proxy_anchor.margin",
        ),
        (
            ["loss.name=proxy_anchor+supcon", "loss.supcon.margin=0.1"],
            "loss.supcon.margin is not a hyperparameter of loss 'supcon'",
        ),
        (["loss.name=supcon", "loss.temperature=0.1", "loss.supcon.temperature=0.2"], "set the same hyperparameter"),
        (["loss.weighting=epo"], "loss.weighting=epo combines several terms, but only ce has a weight > 0"),
        (["loss.name=supcon", "loss.weighting=epo", "loss.ce_weight=0"], "only supcon has a weight > 0"),
        (
            ["loss.name=supcon+ntxent", "loss.weighting=uncertainty", "loss.ce_weight=0", "loss.ntxent.weight=0"],
            "only supcon",
        ),
        (["loss.weighting=pareto"], "unknown value 'pareto'; valid: linear, uncertainty, epo"),
    ],
)
def test_wrong_loss_combinations_are_one_line(sets, fragment):
    with pytest.raises(ConfigError) as error:
        build_config(sets=sets)
    assert fragment in str(error.value) and "\n" not in str(error.value), str(error.value)


def test_wrong_combination_exits_2_from_the_command_line(capsys):
    from tunedml.cli import main

    assert main(["train", "--set", "loss.name=proxy_anchor+proxy_anchor"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "proxy_anchor appears twice" in err[0]


# ---------------------------------------------------------------- what is given is used (issue 26)


def test_a_later_layer_replaces_a_loss_hyperparameter_in_the_other_spelling(tmp_path):
    """The file's loss.margin and --set's loss.proxy_anchor.margin are one key: --set wins (was:
    refused as 'set the same hyperparameter', whichever layer gave which)."""
    path = write(tmp_path, "loss:\n  name: proxy_anchor\n  margin: 0.2\n")
    assert build_config(path, ["loss.proxy_anchor.margin=0.3"]).loss.params["margin"] == 0.3
    assert (
        build_config(
            write(tmp_path, "loss:\n  name: proxy_anchor\n", "bare.yaml"), ["loss.proxy_anchor.margin=0.3"]
        ).loss.params["margin"]
        == 0.3
    )
    with pytest.raises(ConfigError, match="loss.margin and loss.proxy_anchor.margin set the same hyperparameter"):
        build_config(sets=["loss.name=proxy_anchor", "loss.margin=0.2", "loss.proxy_anchor.margin=0.3"])  # one layer


def test_explicit_sources_name_the_last_layer_that_gives_a_key(tmp_path):
    path = write(tmp_path, "data:\n  k: 4\n  folds: 3\n")
    sources = explicit_sources(path, ["data.k=8"], {"model.name": "x", "data.data_dir": "/d"})
    assert sources == {"data.k": "--set", "data.folds": path, "model.name": "--model", "data.data_dir": "--data-dir"}


def test_a_value_at_its_default_or_used_is_not_refused_and_one_dropped_is():
    cfg = build_config(sets=["data.protocol=kfold", "data.folds=3"])
    check_used(cfg, {"data.protocol": "--set", "data.folds": "--set", "data.k": "f.yaml"})  # k at its default
    with pytest.raises(
        ConfigError,
        match=r"^f.yaml: data.k=4 does nothing with data.protocol=kfold; it applies only "
        r"with data.protocol=kshot: leave it out, or change data.protocol$",
    ):
        check_used(build_config(sets=["data.protocol=kfold", "data.k=4"]), {"data.k": "f.yaml"})


def test_the_written_config_keeps_unused_keys_at_their_defaults_and_reads_back_the_same_run(tmp_path):
    """A search can give a key a value in a branch its best trial did not take (inference.mix_weight
    with inference.mode=head): `tunedml best` writes it at its default, so the file goes back in."""
    cfg = from_flat(
        {
            "loss.name": "supcon",
            "inference.mode": "head",
            "inference.mix_weight": 0.3,
            "data.protocol": "kfold",
            "data.k": 4,
            "train.proxy_lr": 0.5,
        }
    )
    path = write(tmp_path, cfg.to_yaml(), "best.yaml")
    again = build_config(path)
    assert (again.inference.mix_weight, again.data.k, again.train.proxy_lr) == (0.5, 16, 0.01)
    check_used(again, explicit_sources(path))
    flat, back = cfg.to_flat(), again.to_flat()
    assert {k for k in flat if flat[k] != back[k]} == {"inference.mix_weight", "data.k", "train.proxy_lr"}


# ---------------------------------------------------------------- recipes: batches per class, two stages


def test_recipes_default_to_random_batches_and_joint_training():
    cfg = build_config()
    assert (cfg.data.sampler, cfg.data.m_per_class, cfg.train.schedule, cfg.head.fit) == (
        "random",
        None,
        "joint",
        "linear",
    )
    assert {
        "data.sampler",
        "data.m_per_class",
        "train.schedule",
        "train.stage1_fraction",
        "head.fit",
        "head.lr",
    } <= set(FIELDS)


def test_sampler_and_stage_registries_are_the_keys_choices():
    from tunedml.sampling import SAMPLERS
    from tunedml.stages import HEAD_FITS

    assert FIELDS["data.sampler"].choices == tuple(SAMPLERS) and FIELDS["head.fit"].choices == tuple(HEAD_FITS)


@pytest.mark.parametrize(
    "sets, fragment",
    [
        (
            ["data.sampler=m_per_class", "data.m_per_class=3"],
            "train.batch_size=16 is not a multiple of data.m_per_class=3",
        ),
        (
            ["data.sampler=m_per_class", "data.m_per_class=16"],
            "train.batch_size=16 with data.m_per_class=16 holds one class per batch: no negative pairs",
        ),
        (
            ["data.sampler=m_per_class", "data.m_per_class=8", "data.k=4"],
            "data.m_per_class=8 is more than the data.k=4 examples of each class in a kshot draw",
        ),
        (["data.sampler=m_per_class", "train.batch_size=3"], "a batch needs two classes of two examples or more"),
        (["data.m_per_class=1"], "data.m_per_class=1 is out of range; valid: int in [2, 4096]"),
        (
            ["train.schedule=two_stage"],
            "train.schedule=two_stage trains the encoder with a DML loss alone in stage 1, and "
            "loss.name=none names none",
        ),
        (
            ["train.schedule=two_stage", "loss.name=supcon", "loss.dml_weight=0"],
            "loss.dml_weight=0 leaves it no weight",
        ),
        (
            ["train.schedule=two_stage", "loss.name=supcon+ntxent", "loss.supcon.weight=0", "loss.ntxent.weight=0"],
            "every loss.<loss>.weight of supcon+ntxent is 0",
        ),
        (
            ["train.schedule=two_stage", "loss.name=supcon", "adversarial.mode=fgm"],
            "adversarial.mode=fgm follows the CCE gradient, which stage 1 of train.schedule=two_stage does not train",
        ),
        (
            ["train.schedule=two_stage", "loss.name=supcon", "train.steps=1"],
            "needs a step for each stage; train.steps=1",
        ),
        (["train.schedule=two_stage", "loss.name=supcon", "loss.weighting=epo"], "only supcon has a weight > 0"),
        (
            ["train.schedule=two_stage", "loss.name=supcon", "train.stage1_fraction=1"],
            "train.stage1_fraction=1.0 is out of range",
        ),
    ],
)
def test_recipes_that_cannot_be_met_are_one_line(sets, fragment):
    with pytest.raises(ConfigError) as error:
        build_config(sets=sets)
    assert fragment in str(error.value) and "\n" not in str(error.value), str(error.value)


@pytest.mark.parametrize(
    "sets",
    [
        ["data.sampler=m_per_class"],  # m unset: split evenly once the draw's classes are known
        ["data.sampler=m_per_class", "data.m_per_class=8"],
        ["data.sampler=m_per_class", "data.m_per_class=4", "train.batch_size=24", "data.k=4"],
        [
            "train.schedule=two_stage",
            "loss.name=supcon",
            "loss.ce_weight=0",
        ],  # stage 2 fits the head whatever ce_weight is
        ["train.schedule=two_stage", "loss.name=proxy_anchor", "loss.ce_weight=0", "inference.mode=mixed"],
        [
            "train.schedule=two_stage",
            "loss.name=supcon+ntxent",
            "loss.weighting=uncertainty",
        ],  # two DML terms in stage 1
        ["train.schedule=two_stage", "loss.name=supcon", "head.fit=logistic", "train.steps=1"],
    ],
)
def test_recipes_that_can_be_met_are_accepted(sets):
    build_config(sets=sets)


def test_recipe_keys_round_trip_through_recorded_params():
    # MLflow records every value as a string: an unset m_per_class comes back as 'None'
    cfg = build_config(
        sets=[
            "data.sampler=m_per_class",
            "train.schedule=two_stage",
            "loss.name=supcon",
            "head.fit=logistic",
            "head.lr=0.01",
            "train.stage1_fraction=0.7",
        ]
    )
    again = from_flat({k: str(v) for k, v in cfg.to_flat().items()})
    assert again.to_flat() == cfg.to_flat() and again.data.m_per_class is None and again.head.lr == 0.01
