"""Run configuration: dataclasses with defaults, overridden by a YAML file and `--set key=value`.

Keys are flat and dotted (``data.k``, ``train.lr``, ``loss.margin``). Loss hyperparameters live
under ``loss.`` beside the fixed loss fields and are checked against the chosen loss in the
registry: ``loss.<loss>.<param>`` always (``loss.proxy_anchor.margin``), the short
``loss.<param>`` where ``loss.name`` names one loss. Every value is validated here, once, before any data or model is loaded.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .data import DEFAULT_TEST_SIZE, TASKS, environment_data_dir, has_official_test
from .errors import ConfigError, unknown_choice
from .hparams import Applies, Hyperparameter, load_yaml_text
from .losses import LOSSES, NO_DML, WEIGHT, WEIGHTINGS, LossName, learns_parameters, loss_set, split_params
from .sampling import SAMPLERS, check_m_per_class

ADVERSARIAL_MODES = ("none", "fgm", "pgd")  # tunedml.adversarial implements them
SCHEDULES = ("joint", "two_stage")  # tunedml.stages.StagePlan implements them
HEAD_FITS = ("linear", "logistic")  # the keys of tunedml.stages.HEAD_FITS
HEAD_INITS = ("probe", "random")  # tunedml.train.Trainer applies them (a joint run's head)
DEFAULT_STEPS = 100  # train.steps when neither train.steps nor train.epochs is given (docs/budget.md)
RUN_LENGTH = ("train.steps", "train.epochs")  # two spellings of one setting: a config gives one of them
DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")  # what train.pick_device turns into a torch device
FLAGS = {"data.dataset": "--dataset", "data.data_dir": "--data-dir", "model.name": "--model"}  # keys with a flag


def _hp(
    default: Any,
    kind: type,
    low: float | None = None,
    high: float | None = None,
    *,
    choices: tuple | None = None,
    optional: bool = False,
    help: str = "",
    applies: Applies | None = None,
    used: Applies | None = None,
) -> Any:
    """A dataclass field whose metadata carries its Hyperparameter (name filled in later)."""
    hp = Hyperparameter("", kind, default, low, high, choices, optional, help, applies, used)
    return field(default=default, metadata={"hp": hp})


# Where a key changes the run (a space may search it only there; see hparams.Applies)
WITH_DML = Applies(("loss.name",), lambda name: name != NO_DML, "only with a DML loss (loss.name other than none)")
WEIGHTED = Applies(
    ("loss.name", "loss.weighting", "train.schedule"),
    lambda name, weighting, schedule: name != NO_DML and weighting != "uncertainty" and schedule == "joint",
    "only with a DML loss and loss.weighting linear or epo and train.schedule=joint (uncertainty learns "
    "the weights; plain CCE's weight only rescales what AdamW normalises, and so does a weight on "
    "either stage's single loss under two_stage)",
)
WITH_LOSS_PARAMETERS = Applies(
    ("loss.name", "loss.weighting"),
    learns_parameters,
    "only where the loss learns parameters of its own (proxies, or loss.weighting=uncertainty)",
)
WITH_MIXED = Applies(
    ("loss.name", "inference.mode"),
    lambda name, mode: name != NO_DML and mode == "mixed",
    "only with inference.mode=mixed and a DML loss",
)
MIXED = Applies(("inference.mode",), lambda mode: mode == "mixed", "only with inference.mode=mixed")
KSHOT = Applies(("data.protocol",), lambda protocol: protocol == "kshot", "only with data.protocol=kshot")
KFOLD = Applies(("data.protocol",), lambda protocol: protocol == "kfold", "only with data.protocol=kfold")
HELD_OUT = Applies(
    ("data.protocol", "data.dataset", "data.data_dir"),
    lambda protocol, dataset, data_dir: protocol == "kshot" and not has_official_test(dataset, data_dir),
    "only with data.protocol=kshot on a dataset without an official test split (mr, cr, subj, mpqa, "
    "or a file or folder without test.*)",
)
REGISTERED = Applies(
    ("data.dataset",),
    lambda dataset: dataset in TASKS,
    "only with a registered task (tunedml datasets); a data file or folder is read from its own path",
)
USER_DATA = Applies(
    ("data.dataset",),
    lambda dataset: dataset not in TASKS,
    "only with a data file or folder; a registered task's columns are fixed",
)
ADVERSARIAL = Applies(("adversarial.mode",), lambda mode: mode != "none", "only with adversarial.mode fgm or pgd")
PGD = Applies(("adversarial.mode",), lambda mode: mode == "pgd", "only with adversarial.mode=pgd")
WITH_M_PER_CLASS = Applies(
    ("data.sampler",), lambda sampler: sampler == "m_per_class", "only with data.sampler=m_per_class"
)
TWO_STAGE = Applies(("train.schedule",), lambda schedule: schedule == "two_stage", "only with train.schedule=two_stage")
JOINT_RUN = Applies(
    ("train.schedule",),
    lambda schedule: schedule == "joint",
    "only with train.schedule=joint (a two-stage run fits its head after stage 1: head.fit)",
)
LINEAR_HEAD_STAGE = Applies(
    ("train.schedule", "head.fit"),
    lambda schedule, fit: schedule == "two_stage" and fit == "linear",
    "only with train.schedule=two_stage and head.fit=linear (a logistic head is fitted once, "
    "after a stage 1 as long as the run)",
)


@dataclass
class DataConfig:
    dataset: str = _hp("sst2", str, help="a registered task (tunedml datasets) or a CSV/JSONL/Parquet file or folder")
    data_dir: str | None = _hp(
        None,
        str,
        optional=True,
        applies=REGISTERED,
        used=REGISTERED,
        help="folder with <task>/<split>.jsonl; default $TUNEDML_DATA_DIR, else the copy inside the package",
    )
    protocol: str = _hp("kshot", str, choices=("kshot", "kfold"))
    k: int = _hp(16, int, 1, 100_000, applies=KSHOT, used=KSHOT, help="kshot: examples per class in train (and in dev)")
    sample_size: int = _hp(
        64,
        int,
        2,
        1_000_000,
        applies=KFOLD,
        used=KFOLD,
        help="kfold: training (and as many dev) examples drawn from the draw part, apart from every test fold",
    )
    folds: int = _hp(5, int, 2, 50, applies=KFOLD, used=KFOLD, help="kfold: number of folds")
    fold: int = _hp(0, int, 0, 49, applies=KFOLD, used=KFOLD, help="kfold: the held-out fold")
    seed: int = _hp(0, int, 0, 2**31 - 1, help="seed of the few-shot draw")
    test_size: int = _hp(
        DEFAULT_TEST_SIZE,
        int,
        1,
        1_000_000,
        applies=HELD_OUT,
        used=HELD_OUT,
        help=f"kshot: hold-out size for tasks without an official test split; at most half the "
        f"examples (the default {DEFAULT_TEST_SIZE} is cut to that, another value is refused)",
    )
    max_length: int = _hp(128, int, 8, 8192, help="tokens per text (at most what the model's position embeddings hold)")
    sampler: str = _hp(
        "random",
        str,
        choices=tuple(SAMPLERS),
        help="how training batches are drawn: random (passes over the draw, each in a new order) or "
        "m_per_class (data.m_per_class examples of each of train.batch_size / m classes, "
        "pytorch-metric-learning's MPerClassSampler), so that pair and proxy losses find positives",
    )
    m_per_class: int | None = _hp(
        None,
        int,
        2,
        4096,
        optional=True,
        applies=WITH_M_PER_CLASS,
        used=WITH_M_PER_CLASS,
        help="m_per_class: examples of each class in a batch; unset: the batch split evenly "
        "over as many classes as divide it (binary tasks: half the batch each)",
    )
    text_column: str = _hp("text", str, applies=USER_DATA, used=USER_DATA)
    label_column: str = _hp("label", str, applies=USER_DATA, used=USER_DATA)


@dataclass
class ModelConfig:
    name: str = _hp(
        "minilm", str, help="'minilm' (embedded all-MiniLM-L6-v2), a hub id such as roberta-base, or a local path"
    )
    pooling: str = _hp("mean", str, choices=("mean", "cls"))
    token_mode: bool = _hp(
        False, bool, applies=WITH_DML, used=WITH_DML, help="apply the DML loss to every non-padding token vector"
    )
    dropout: float = _hp(0.1, float, 0.0, 0.9)
    reinit_layers: int = _hp(
        0, int, 0, 48, help="re-initialise the top N encoder layers before training (few-shot stability)"
    )
    freeze_embeddings: bool = _hp(
        False,
        bool,
        help="keep the encoder's word-embedding matrix as pre-trained (about half "
        "of MiniLM's parameters): fewer weights to fit on few examples, faster steps",
    )


@dataclass
class LossConfig:
    name: str = field(
        default=NO_DML, metadata={"hp": LossName("", str, NO_DML, help="a DML loss, none, or DML losses joined by +")}
    )
    ce_weight: float = _hp(
        1.0,
        float,
        0.0,
        100.0,
        applies=WEIGHTED,
        help="CCE's weight in the joint loss; no effect with train.schedule=two_stage (stage 1 "
        "trains the encoder on the DML loss alone, stage 2 the head on CCE alone)",
    )
    dml_weight: float = _hp(
        1.0,
        float,
        0.0,
        100.0,
        applies=WEIGHTED,
        used=WITH_DML,
        help="scales every DML loss's term (two_stage: stage 1's loss; > 0 there)",
    )
    weighting: str = _hp(
        "linear", str, choices=tuple(WEIGHTINGS), help="how the terms combine: " + ", ".join(WEIGHTINGS)
    )
    # the DML losses' hyperparameters: ``margin`` for a single loss, ``proxy_anchor.margin`` in a set,
    # and ``<loss>.weight`` (see losses.split_params)
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    # the run's length: train.steps (optimizer steps, the default) or train.epochs (passes over the
    # training draw), never both; see RUN_LENGTH
    steps: int | None = _hp(
        DEFAULT_STEPS,
        int,
        1,
        1_000_000,
        optional=True,
        help="run length in optimizer steps, as few-shot work states it (batches keep coming from "
        "reshuffled passes over the draw); set train.steps or train.epochs, not both",
    )
    epochs: int | None = _hp(
        None, int, 1, 10_000, optional=True, help="run length in passes over the training draw, instead of train.steps"
    )
    eval_every: int = _hp(
        0,
        int,
        0,
        1_000_000,
        help="optimizer steps between dev evaluations, each one a reported result (progress line, "
        "Ray Tune, MLflow); 0 = once per pass over the training draw",
    )
    batch_size: int = _hp(16, int, 1, 65_536)
    eval_batch_size: int = _hp(64, int, 1, 65_536)
    lr: float = _hp(1e-4, float, 1e-8, 1.0, help="few-shot runs take few steps: higher than full-data fine-tuning")
    proxy_lr: float = _hp(
        1e-2,
        float,
        1e-8,
        100.0,
        help="learning rate of proxies and uncertainty weights",
        applies=WITH_LOSS_PARAMETERS,
        used=WITH_LOSS_PARAMETERS,
    )
    weight_decay: float = _hp(0.01, float, 0.0, 1.0)
    warmup_ratio: float = _hp(0.1, float, 0.0, 1.0)
    max_grad_norm: float = _hp(
        1.0,
        float,
        0.0,
        1e6,
        help="0 turns clipping off (encoder+head and the loss's own parameters are clipped separately)",
    )
    layer_decay: float = _hp(
        1.0,
        float,
        0.05,
        1.0,
        help="layer-wise learning-rate decay: each encoder layer below the top gets this factor more; 1 = off",
    )
    restore_best: bool = _hp(
        False,
        bool,
        help="end with the weights of the dev evaluation with the best accuracy "
        "(then macro-F1); two_stage: among stage 2's evaluations",
    )
    schedule: str = _hp(
        "joint",
        str,
        choices=SCHEDULES,
        help="joint: CCE and the DML loss on every step; two_stage (SupCon, SetFit): stage 1 trains the "
        "encoder (and proxies) with the DML loss alone, stage 2 fits the classifier on the frozen "
        "encoder (head.fit); dev is scored by proxies or class centers until the head is fitted",
    )
    stage1_fraction: float = _hp(
        0.5,
        float,
        0.05,
        0.95,
        applies=LINEAR_HEAD_STAGE,
        used=LINEAR_HEAD_STAGE,
        help="two_stage with head.fit=linear: the share of the run's steps in stage 1; the rest train the head",
    )
    seed: int = _hp(0, int, 0, 2**31 - 1, help="seed of initialisation and batch order")
    device: str = _hp("auto", str, help="auto, cpu, cuda or cuda:N")
    bf16: bool = _hp(True, bool, help="bf16 autocast on a GPU (ignored on the CPU)")
    threads: int = _hp(0, int, 0, 1024, help="torch threads; 0 = the CPUs granted to this process")
    compile: bool = _hp(
        False,
        bool,
        help="torch.compile the encoder (dynamic shapes): its compile time is paid once "
        "per process and run; measured in docs/speed.md",
    )

    def steps_per_epoch(self, train_size: int) -> int:
        """Optimizer steps of one pass over ``train_size`` examples (the last batch may be short)."""
        return math.ceil(train_size / self.batch_size)

    def total_steps(self, train_size: int) -> int:
        """The run's length in optimizer steps, whichever way it was given."""
        return self.steps if self.steps is not None else self.epochs * self.steps_per_epoch(train_size)

    def eval_interval(self, train_size: int) -> int:
        """Optimizer steps between dev evaluations (``eval_every``, else one pass)."""
        return self.eval_every or self.steps_per_epoch(train_size)


@dataclass
class InferenceConfig:
    mode: str = _hp("head", str, choices=("head", "proxy", "mixed"), applies=WITH_DML)
    mix_weight: float = _hp(
        0.5, float, 0.0, 1.0, help="mixed: weight of the head's probabilities", applies=WITH_MIXED, used=MIXED
    )
    proxy_scale: float = _hp(
        16.0, float, 0.01, 1000.0, help="mixed: softmax scale of proxy scores", applies=WITH_MIXED, used=MIXED
    )


@dataclass
class HeadConfig:
    init: str = _hp(
        "probe",
        str,
        choices=HEAD_INITS,
        applies=JOINT_RUN,
        used=JOINT_RUN,
        help="joint: where the linear head starts. probe (LP-FT, Kumar et al. 2022): a logistic "
        "regression on the pre-trained encoder's embeddings of the training draw, so the first steps' "
        "gradients do not bend the encoder's features toward a random head; random: PyTorch's "
        "initialisation. docs/train.md measures both",
    )
    fit: str = _hp(
        "linear",
        str,
        choices=HEAD_FITS,
        applies=TWO_STAGE,
        used=TWO_STAGE,
        help="two_stage: how stage 2 fits the classifier on the frozen encoder: linear (the linear head "
        "with CCE for the steps after stage 1, at head.lr) or logistic (scikit-learn's logistic "
        "regression on the training draw's embeddings, once, after a stage 1 as long as the run; "
        "SetFit's head), copied into the linear head",
    )
    lr: float = _hp(
        1e-3,
        float,
        1e-6,
        10.0,
        applies=LINEAR_HEAD_STAGE,
        used=LINEAR_HEAD_STAGE,
        help="two_stage, head.fit=linear: the head's learning rate in stage 2 (a linear probe on frozen "
        "embeddings takes larger steps than fine-tuning)",
    )


@dataclass
class AdversarialConfig:
    mode: str = _hp(
        "none",
        str,
        choices=ADVERSARIAL_MODES,
        help="adversarial views of each batch: none, fgm (one step) or pgd (several projected steps)",
    )
    epsilon: float = _hp(
        1.0,
        float,
        1e-4,
        100.0,
        applies=ADVERSARIAL,
        used=ADVERSARIAL,
        help="L2 norm of each example's perturbation of its word embeddings (pgd: the ball's radius)",
    )
    alpha: float = _hp(0.5, float, 1e-4, 100.0, applies=PGD, used=PGD, help="pgd: L2 size of each step")
    steps: int = _hp(3, int, 1, 100, applies=PGD, used=PGD, help="pgd: projected gradient steps")
    weight: float = _hp(
        1.0,
        float,
        0.0,
        100.0,
        applies=ADVERSARIAL,
        used=ADVERSARIAL,
        help="weight of the adversarial views' CCE term (relative to CCE)",
    )


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "loss": LossConfig,
    "train": TrainConfig,
    "inference": InferenceConfig,
    "adversarial": AdversarialConfig,
    "head": HeadConfig,
}


def _fields() -> dict[str, Hyperparameter]:
    out = {}
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            if "hp" in f.metadata:
                key = f"{section}.{f.name}"
                out[key] = dataclasses.replace(f.metadata["hp"], name=key)
    return out


FIELDS: dict[str, Hyperparameter] = _fields()  # every fixed key; loss.<param> keys come from the registry


def hyperparameter_for(key: str, loss_name: str | None = None, source: str = "config") -> Hyperparameter:
    """The Hyperparameter for a flat key; loss-specific keys need the loss name."""
    if key in FIELDS:
        return FIELDS[key]
    section, _, name = key.partition(".")
    if section == "loss" and loss_name is not None:
        return _loss_hyperparameter(key, name, loss_name, source)
    raise ConfigError(f"{source}: " + unknown_choice("key", key, list(FIELDS) + ["loss.<hyperparameter>"]))


def _loss_hyperparameter(key: str, name: str, loss_name: str, source: str) -> Hyperparameter:
    """``loss.<loss>.<param>`` (always), ``loss.<loss>.weight``, or the short ``loss.<param>`` where
    ``loss_name`` names one loss."""
    names = loss_set(loss_name)
    owner, dot, param = name.partition(".")
    if dot:
        if owner not in names:
            raise ConfigError(
                f"{source}: {key}: {owner} is not a loss of loss.name={loss_name}; valid: "
                + (", ".join(f"loss.{n}.<hyperparameter>" for n in names) or "none (plain CCE)")
            )
        spec = LOSSES[owner]
        hp = WEIGHT if param == WEIGHT.name else spec.params_by_name.get(param)
        if hp is None:
            valid = [f"loss.{owner}.{p}" for p in (*spec.params_by_name, WEIGHT.name)]
            raise ConfigError(f"{source}: {key} is not a hyperparameter of loss {owner!r}; valid: {', '.join(valid)}")
        return dataclasses.replace(hp, name=key)
    if len(names) > 1:
        having = [f"loss.{n}.{name}" for n in names if name in LOSSES[n].params_by_name]
        raise ConfigError(
            f"{source}: {key}: loss.name={loss_name} names several losses; name the loss: "
            f"{', '.join(having) or ', '.join(f'loss.{n}.<hyperparameter>' for n in names)}"
        )
    spec = LOSSES[names[0]] if names else None
    if spec and name in spec.params_by_name:
        return dataclasses.replace(spec.params_by_name[name], name=key)
    valid = [f"loss.{p}" for p in (spec.params_by_name if spec else ())]
    raise ConfigError(
        f"{source}: {key} is not a hyperparameter of loss {loss_name!r}; "
        f"valid: {', '.join(valid) or 'none (plain CCE has no loss hyperparameters)'}"
    )


def _params_key(name: str, names: tuple[str, ...]) -> str:
    """Where ``loss.<name>`` lives in LossConfig.params: a single loss's hyperparameters by their
    short name, a set's (and every weight) qualified by the loss."""
    owner, dot, param = name.partition(".")
    return param if dot and len(names) == 1 and param != WEIGHT.name else name


def same_parameter(a: str, b: str, loss_name: str) -> bool:
    """Whether two different keys spell one loss hyperparameter under ``loss_name``
    (``loss.margin`` and ``loss.proxy_anchor.margin`` with loss.name=proxy_anchor)."""
    if a == b or a in FIELDS or b in FIELDS or not (a.startswith("loss.") and b.startswith("loss.")):
        return False
    try:
        names = loss_set(loss_name)
    except ConfigError:
        return False
    return _params_key(a[len("loss.") :], names) == _params_key(b[len("loss.") :], names)


def _loss_params_flat(loss: "LossConfig") -> dict[str, Any]:
    """The loss's hyperparameters, defaults filled, as flat ``loss.`` keys."""
    names = loss_set(loss.name)
    if len(names) == 1:
        params = {**LOSSES[names[0]].defaults(), **loss.params}
    else:
        params = {}
        for n in names:
            params.update({f"{n}.{p}": v for p, v in LOSSES[n].defaults().items()})
            params[f"{n}.{WEIGHT.name}"] = WEIGHT.default
        params.update(loss.params)
    return {f"loss.{k}": v for k, v in params.items()}


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)
    head: HeadConfig = field(default_factory=HeadConfig)

    def to_flat(self) -> dict[str, Any]:
        """All keys with their values, loss hyperparameters (defaults filled) as ``loss.<name>``."""
        flat = {key: getattr(getattr(self, key.split(".")[0]), key.split(".")[1]) for key in FIELDS}
        flat.update(_loss_params_flat(self.loss))
        return flat

    def to_nested(self, flat: dict[str, Any] | None = None) -> dict[str, Any]:
        """Sections of keys (of ``flat``, else of this config); ``loss.<loss>.<param>`` nests once
        more under its loss."""
        nested: dict[str, dict[str, Any]] = {}
        for key, value in (self.to_flat() if flat is None else flat).items():
            section, name = key.split(".", 1)
            owner, dot, param = name.partition(".")
            if dot:
                nested.setdefault(section, {}).setdefault(owner, {})[param] = value
            else:
                nested.setdefault(section, {})[name] = value
        return nested

    def to_yaml(self) -> str:
        """Every key, as a file for ``--config``; a key the run does not use (its ``used`` rule) is
        written at its default, the same run, so that the file goes back in unrefused
        (:func:`check_used`) even where a search gave it another value in a branch not taken."""
        flat = self.to_flat()
        written = {key: value if is_used(key, flat) else FIELDS[key].default for key, value in flat.items()}
        return yaml.safe_dump(self.to_nested(written), sort_keys=False)

    def with_overrides(self, overrides: dict[str, Any], source: str = "--set") -> "RunConfig":
        """A new config with ``overrides`` (flat keys, raw or typed values) applied and validated."""
        if not overrides:
            return copy.deepcopy(self)
        flat = self.to_flat()
        loss_name = overrides.get("loss.name", self.loss.name)
        loss_name = FIELDS["loss.name"].parse(loss_name, "loss.name", source)
        if loss_name != self.loss.name:  # other loss, other hyperparameters
            flat = {k: v for k, v in flat.items() if k in FIELDS}
        parsed = {
            key: hyperparameter_for(key, loss_name, source).parse(value, key, source)
            for key, value in overrides.items()
        }
        for key in parsed:  # a later layer's loss hyperparameter replaces the earlier one's, in either spelling
            flat = {k: v for k, v in flat.items() if k == key or not same_parameter(k, key, loss_name)}
        given = [k for k in RUN_LENGTH if parsed.get(k) is not None]
        if len(given) == 1:  # a later layer's run length replaces the earlier one's, in either spelling
            flat.update({k: None for k in RUN_LENGTH if k not in given})
        return from_flat({**flat, **parsed}, source)


def from_flat(flat: dict[str, Any], source: str = "config") -> RunConfig:
    """Build and validate a config from flat keys; missing keys take their defaults."""
    loss_name = FIELDS["loss.name"].parse(flat.get("loss.name", NO_DML), "loss.name", source)
    names = loss_set(loss_name)
    if "train.epochs" in flat and "train.steps" not in flat:  # a config written in epochs (older ones too)
        flat = {**flat, "train.steps": None}
    sections: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    params: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for key, value in flat.items():
        hp = hyperparameter_for(key, loss_name, source)
        value = hp.parse(value, key, source)
        section, name = key.split(".", 1)
        if key in FIELDS:
            sections[section][name] = value
            continue
        where = _params_key(name, names)
        if where in spelled and spelled[where] != key:
            raise ConfigError(f"{source}: {spelled[where]} and {key} set the same hyperparameter; keep one")
        params[where], spelled[where] = value, key
    cfg = RunConfig(**{name: SECTIONS[name](**values) for name, values in sections.items()})
    cfg.loss.params = params
    _check_loss(cfg, source)
    _check_consistency(cfg, source)
    return cfg


def _check_run_length(cfg: RunConfig, source: str) -> None:
    """One run length, in one of its two spellings (RUN_LENGTH)."""
    t = cfg.train
    if t.steps is not None and t.epochs is not None:
        raise ConfigError(
            f"{source}: train.steps={t.steps} and train.epochs={t.epochs} both set the run's length; keep one of them"
        )
    if t.steps is None and t.epochs is None:
        raise ConfigError(f"{source}: the run has no length; set train.steps (optimizer steps) or train.epochs")


def _check_loss(cfg: RunConfig, source: str) -> None:
    """Loss combinations: a learned or Pareto weighting needs two terms or more."""
    loss = cfg.loss
    if loss.weighting == "linear":
        return
    weights = {k.split(".")[0]: v for k, v in loss.params.items() if k.endswith(f".{WEIGHT.name}")}
    with_ce = loss.ce_weight > 0 and cfg.train.schedule == "joint"  # two_stage: stage 1 has no CCE term
    terms = (["ce"] if with_ce else []) + [
        n for n in loss_set(loss.name) if loss.dml_weight * weights.get(n, WEIGHT.default) > 0
    ]
    if len(terms) < 2:
        raise ConfigError(
            f"{source}: loss.weighting={loss.weighting} combines several terms, but only "
            f"{', '.join(terms) or 'none'} has a weight > 0 (loss.name={loss.name}); "
            "add a DML loss or use loss.weighting=linear"
        )


def _check_consistency(cfg: RunConfig, source: str) -> None:
    """Rules that involve more than one key (and train.device's form, which no choice list holds)."""
    if not DEVICE.fullmatch(cfg.train.device):
        raise ConfigError(
            f"{source}: train.device: unknown device {cfg.train.device!r}; valid: auto, cpu, cuda, cuda:N, mps"
        )
    _check_run_length(cfg, source)
    _check_schedule(cfg, source)
    _check_sampler(cfg, source)
    if cfg.loss.name == NO_DML and cfg.loss.ce_weight <= 0:
        raise ConfigError(f"{source}: loss.ce_weight must be > 0 when loss.name is 'none'")
    if cfg.loss.name != NO_DML and cfg.loss.ce_weight <= 0 and cfg.loss.dml_weight <= 0:
        raise ConfigError(f"{source}: loss.ce_weight and loss.dml_weight are both 0; nothing would be trained")
    _check_inference_is_trained(cfg, source)
    _check_adversarial(cfg, source)
    if cfg.data.protocol == "kfold" and cfg.data.fold >= cfg.data.folds:
        raise ConfigError(f"{source}: data.fold={cfg.data.fold} must be below data.folds={cfg.data.folds}")


def _check_inference_is_trained(cfg: RunConfig, source: str) -> None:
    """Inference must use only what the loss trains.

    The head is trained only by CCE (``head`` and ``mixed`` need ``loss.ce_weight > 0``); learned
    proxies only by the DML loss (``proxy`` and ``mixed`` with a proxy loss need ``loss.dml_weight
    > 0``). Losses without proxies (and plain CCE) classify by class centers of the training
    embeddings, which need no training of their own, so ``proxy`` inference is fine with them.
    """
    mode, loss = cfg.inference.mode, cfg.loss
    if (
        mode in ("head", "mixed") and loss.ce_weight <= 0 and cfg.train.schedule == "joint"
    ):  # two_stage: stage 2 fits it
        raise ConfigError(
            f"{source}: inference.mode={mode} uses the classification head, which "
            f"loss.ce_weight={loss.ce_weight:g} leaves untrained; use inference.mode=proxy "
            f"or loss.ce_weight > 0"
        )
    if mode not in ("proxy", "mixed"):
        return
    names = loss_set(loss.name)
    _, weights = split_params(names, loss.params)
    with_proxies = [n for n in names if LOSSES[n].has_proxies]
    if with_proxies and loss.dml_weight * weights.get(with_proxies[0], WEIGHT.default) <= 0:
        used = with_proxies[0]  # the loss whose proxies inference uses (CombinedLoss.dml)
        weight = f"loss.dml_weight={loss.dml_weight:g}" if loss.dml_weight <= 0 else f"loss.{used}.weight=0"
        raise ConfigError(
            f"{source}: inference.mode={mode} uses the proxies of {used} (loss.name={loss.name}), "
            f"which {weight} leaves untrained; use inference.mode=head or a weight > 0"
        )


def _check_schedule(cfg: RunConfig, source: str) -> None:
    """Two stages need a DML loss that trains the encoder in stage 1 and a step left for each stage;
    adversarial views follow the CCE gradient, which stage 1 does not have."""
    if cfg.train.schedule == "joint":
        return
    loss = cfg.loss
    names = loss_set(loss.name)
    _, weights = split_params(names, loss.params)
    if not any(loss.dml_weight * weights.get(n, WEIGHT.default) > 0 for n in names):
        why = (
            "loss.name=none names none"
            if not names
            else f"loss.dml_weight={loss.dml_weight:g} leaves it no weight"
            if loss.dml_weight <= 0
            else f"every loss.<loss>.weight of {loss.name} is 0"
        )
        raise ConfigError(
            f"{source}: train.schedule=two_stage trains the encoder with a DML loss alone in stage 1, and "
            f"{why}; name a DML loss with a weight > 0, or use train.schedule=joint"
        )
    if cfg.adversarial.mode != "none":
        raise ConfigError(
            f"{source}: adversarial.mode={cfg.adversarial.mode} follows the CCE gradient, which stage 1 of "
            "train.schedule=two_stage does not train; use train.schedule=joint or adversarial.mode=none"
        )
    if cfg.head.fit == "linear" and cfg.train.steps is not None and cfg.train.steps < 2:
        raise ConfigError(
            f"{source}: train.schedule=two_stage with head.fit=linear needs a step for each stage; "
            f"train.steps={cfg.train.steps} has one; raise train.steps or use head.fit=logistic"
        )


def _check_sampler(cfg: RunConfig, source: str) -> None:
    """What m_per_class batches need that is known before the draw (the rest: sampling.resolve_m)."""
    d = cfg.data
    if d.sampler != "m_per_class":
        return
    check_m_per_class(cfg.train.batch_size, d.m_per_class, source)
    if d.m_per_class is not None and d.protocol == "kshot" and d.m_per_class > d.k:
        raise ConfigError(
            f"{source}: data.m_per_class={d.m_per_class} is more than the data.k={d.k} examples of each "
            "class in a kshot draw; lower data.m_per_class or raise data.k"
        )


def _check_adversarial(cfg: RunConfig, source: str) -> None:
    """Adversarial views follow the gradient of the head's CCE and add terms that must count."""
    adv = cfg.adversarial
    if adv.mode == "none":
        return
    if cfg.loss.ce_weight <= 0:
        raise ConfigError(
            f"{source}: adversarial.mode={adv.mode} perturbs along the CCE gradient of the head, "
            f"which loss.ce_weight=0 leaves untrained; use loss.ce_weight > 0 or adversarial.mode=none"
        )
    if adv.weight <= 0 and (cfg.loss.name == NO_DML or cfg.loss.dml_weight <= 0):
        raise ConfigError(
            f"{source}: adversarial.mode={adv.mode} with adversarial.weight=0 and no DML loss adds "
            f"nothing to training; use adversarial.weight > 0 or adversarial.mode=none"
        )


def flatten(nested: dict[str, Any], source: str) -> dict[str, Any]:
    """YAML ``{data: {k: 16}}`` to ``{'data.k': 16}``; already-flat keys pass through."""
    flat: dict[str, Any] = {}

    def put(key: str, value: Any) -> None:  # one key, two forms (data: {k: 4} and data.k: 8): no rule picks one
        if key in flat:
            raise ConfigError(
                f"{source}: {key} is given twice ({flat[key]!r} and {value!r}), nested and dotted; keep one"
            )
        flat[key] = value

    for key, value in nested.items():
        if isinstance(value, dict) and "." not in str(key):
            if key not in SECTIONS:
                raise ConfigError(f"{source}: " + unknown_choice("section", key, SECTIONS))
            for sub, v in value.items():
                if key == "loss" and isinstance(v, dict):  # loss: {proxy_anchor: {margin: 0.2}}
                    for p, pv in v.items():
                        put(f"loss.{sub}.{p}", pv)
                else:
                    put(f"{key}.{sub}", v)
        else:
            put(str(key), value)
    return flat


def load_yaml(path: str | os.PathLike, source: str | None = None) -> dict[str, Any]:
    """Read a YAML mapping; ConfigError for a missing or malformed file."""
    source = source or str(path)
    try:
        data = load_yaml_text(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{source}: file not found") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{source}:{where} is not valid YAML ({getattr(e, 'problem', e)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys to values, got {type(data).__name__}")
    return data


def parse_set_args(items: list[str]) -> dict[str, str]:
    """``['data.k=16', ...]`` to a dict; values stay strings until validated."""
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set data.k=16")
        out[key.strip()] = value.strip()
    return out


def explicit_keys(
    config_file: str | None = None, sets: list[str] | None = None, extra: dict[str, Any] | None = None
) -> set[str]:
    """The keys the user set (in the file, as flags or with --set), as opposed to defaults."""
    return set(explicit_sources(config_file, sets, extra))


def explicit_sources(
    config_file: str | None = None, sets: list[str] | None = None, extra: dict[str, Any] | None = None
) -> dict[str, str]:
    """Each key the user set and where its value comes from (the last layer that sets it): the
    file, the flag (``--dataset``) or ``--set``."""
    sources = dict.fromkeys(flatten(load_yaml(config_file), config_file), config_file) if config_file else {}
    sources.update({key: FLAGS.get(key, "command line") for key in extra or {}})
    sources.update(dict.fromkeys(parse_set_args(sets or []), "--set"))
    return sources


def is_used(key: str, flat: dict[str, Any]) -> bool:
    """Whether ``key`` has any effect in the run of ``flat`` (a full flat config): its ``used`` rule."""
    rule = FIELDS[key].used if key in FIELDS else None
    return rule is None or rule.test(*(flat[k] for k in rule.keys))


def unused_message(key: str, value: Any, rule: Applies, context: dict[str, Any]) -> str:
    """``data.folds=3 does nothing with data.protocol=kshot; it applies only with ...``."""
    shown = ", ".join(f"{k}={v}" for k, v in context.items() if v is not None)  # data.data_dir=None says nothing
    return (
        f"{key}={value} does nothing with {shown}; it applies {rule.text}: leave it out, or change "
        f"{' or '.join(k for k in rule.keys if context.get(k) is not None)}"
    )


def given_by_user(key: str, value: Any) -> bool:
    """A value the user gave, as opposed to a default: not the key's default, and not the folder of
    $TUNEDML_DATA_DIR, which sets data.data_dir for every command the way a default does."""
    if key not in FIELDS or value == FIELDS[key].default:
        return False
    return not (key == "data.data_dir" and value == environment_data_dir())


def check_used(cfg: RunConfig, given: dict[str, str]) -> None:
    """Every key the user gave (``given``: key -> where from) is used by the run of ``cfg``, or was
    given at its default: a value that would be dropped is refused (a full config written by
    ``tunedml best`` keeps unused keys at their defaults, see :meth:`RunConfig.to_yaml`)."""
    flat = cfg.to_flat()
    for key, source in given.items():
        if given_by_user(key, flat.get(key)) and not is_used(key, flat):
            rule = FIELDS[key].used
            raise ConfigError(f"{source}: " + unused_message(key, flat[key], rule, {k: flat[k] for k in rule.keys}))


def build_config(
    config_file: str | None = None, sets: list[str] | None = None, extra: dict[str, Any] | None = None
) -> RunConfig:
    """Defaults, then the YAML file, then ``extra`` (CLI flags), then `--set`."""
    cfg = RunConfig()
    if config_file:
        cfg = cfg.with_overrides(flatten(load_yaml(config_file), config_file), source=config_file)
    if extra:
        cfg = cfg.with_overrides(extra, source="command line")
    if sets:
        cfg = cfg.with_overrides(parse_set_args(sets), source="--set")
    return cfg
