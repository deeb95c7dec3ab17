"""Search spaces: a small YAML language, validated against the config and loss registry.

A space file maps flat config keys to either a fixed value or a distribution::

    train.epochs: 10                          # fixed
    train.lr: {loguniform: [1.0e-5, 1.0e-4]}
    train.batch_size: {categorical: [8, 16]}
    loss.name:                                # conditional: each option has its own sub-space
      choice:
        none: {}
        proxy_anchor:
          loss.margin: {uniform: [0.0, 0.5]}

Distributions: ``uniform``, ``loguniform``, ``int`` (``[low, high]``, or ``{low: 2, high: 64,
step: 2}`` / ``{low: 2, high: 64, log: true}``), ``categorical`` (a list) and ``choice`` (a
mapping of option to sub-space). The space becomes an Optuna define-by-run function; parameters
inside a choice are named ``key|option`` for Optuna so that TPE models each branch on its own.

``include: _common.yaml`` (or a list of files), at the top level, adds the keys of other space
files, resolved relative to the including file: the shipped spaces share one definition of
everything that is not the loss. A key defined twice (here and in an include, or in two includes)
is an error, so an include cannot be silently overridden.

A key may be searched only where it changes the run (its Hyperparameter's ``applies`` rule):
``train.proxy_lr`` only under losses that learn proxies, ``inference.mode`` not under plain CCE.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import FIELDS, hyperparameter_for, load_yaml
from .errors import ConfigError, unknown_choice
from .hparams import Hyperparameter
from .losses import LOSS_NAMES

INCLUDE = "include"
DISTRIBUTIONS = ("uniform", "loguniform", "int", "categorical", "choice")
RANGE_OPTIONS = {"uniform": ("log",), "loguniform": (), "int": ("step", "log")}  # beside low and high
BRANCH_SEP = "|"


@dataclass
class Dist:
    key: str
    kind: str  # uniform, loguniform, int, categorical
    low: float | None = None
    high: float | None = None
    choices: list[Any] = field(default_factory=list)
    log: bool = False
    step: int = 1
    name: str = ""  # the Optuna parameter name (key, or key|option inside a branch)


@dataclass
class Space:
    fixed: dict[str, Any] = field(default_factory=dict)
    dists: list[Dist] = field(default_factory=list)
    branches: dict[str, tuple[str, dict[Any, "Space"]]] = field(
        default_factory=dict
    )  # key -> (optuna name, option -> sub-space)

    def sample(self, trial: Any) -> dict[str, Any]:
        """Define-by-run: suggest every parameter through ``trial``; return the flat config."""
        out = dict(self.fixed)
        for d in self.dists:
            if d.kind == "categorical":
                out[d.key] = trial.suggest_categorical(d.name, d.choices)
            elif d.kind == "int":
                out[d.key] = trial.suggest_int(d.name, int(d.low), int(d.high), step=d.step, log=d.log)
            else:
                out[d.key] = trial.suggest_float(d.name, d.low, d.high, log=d.log)
        for key, (name, options) in self.branches.items():
            option = trial.suggest_categorical(name, list(options))
            out[key] = option
            out.update(options[option].sample(trial))
        return out

    def examples(self, end: int = 0) -> list[dict[str, Any]]:
        """One concrete config per branch combination, every range at its low (``end=0``) or high
        (``end=-1``) end and categories first or last: for checks of rules across keys."""
        base = dict(self.fixed)
        for d in self.dists:
            value = d.choices[end] if d.kind == "categorical" else (d.low, d.high)[end]
            base[d.key] = int(value) if d.kind == "int" else value
        combos = [base]
        for key, (_, options) in self.branches.items():
            combos = [
                {**c, key: option, **sub}
                for c in combos
                for option, space in options.items()
                for sub in space.examples(end)
            ]
        return combos

    def largest(self, key: str, default: Any, smallest: bool = False) -> list[Any]:
        """Every value ``key`` can take at its largest (or smallest), in any branch (``default`` where unset)."""
        values = [self.fixed.get(key, default)]
        for d in self.dists:
            if d.key == key:
                if d.kind == "categorical":
                    values.append((min if smallest else max)(d.choices))
                else:
                    values.append(d.low if smallest else d.high)
        for _, options in self.branches.values():
            for sub in options.values():
                values.extend(sub.largest(key, values[0], smallest))
        return values

    def drop(self, key: str) -> None:
        """Forget the fixed value of ``key`` here and in every branch."""
        self.fixed.pop(key, None)
        for _, options in self.branches.values():
            for sub in options.values():
                sub.drop(key)

    def params(self, point: dict[str, Any], path: str) -> dict[str, Any]:
        """Optuna parameter values (branch-qualified names) for the searched keys in ``point``."""
        out = {d.name: point[d.key] for d in self.dists if d.key in point}
        for key, (name, options) in self.branches.items():
            if key in point:
                if point[key] not in options:
                    raise ConfigError(
                        f"{path}: point {key}={point[key]!r} is not an option of this space; "
                        f"valid: {', '.join(map(str, options))}"
                    )
                out[name] = point[key]
                out.update(options[point[key]].params(point, path))
        return out

    def paths(self) -> list[tuple[str, dict[str, list[Any]], dict[str, Any]]]:
        """Every combination of branch options: (label such as ``loss.name=supcon``, the values each
        key can take there, the searched keys there with their raw values). For the applies rules."""
        values: dict[str, list[Any]] = {k: [v] for k, v in self.fixed.items()}
        for d in self.dists:
            values[d.key] = list(d.choices) if d.kind == "categorical" else [d.low, d.high]
        searched: dict[str, Any] = {d.key: d for d in self.dists}
        out = [("", values, searched)]
        for key, (_, options) in self.branches.items():
            out = [
                (
                    ", ".join(filter(None, (label, f"{key}={option}", sub_label))),
                    {**vals, key: [option], **sub_vals},
                    {**found, key: options, **sub_found},
                )
                for label, vals, found in out
                for option, space in options.items()
                for sub_label, sub_vals, sub_found in space.paths()
            ]
        return out

    def options_of(self, key: str) -> list[Any]:
        """The options of a top-level ``choice`` or ``categorical`` over ``key``; [] if it is not one."""
        if key in self.branches:
            return list(self.branches[key][1])
        return next((list(d.choices) for d in self.dists if d.key == key and d.kind == "categorical"), [])

    def keys(self) -> set[str]:
        keys = set(self.fixed) | {d.key for d in self.dists} | set(self.branches)
        for _, options in self.branches.values():
            for sub in options.values():
                keys |= sub.keys()
        return keys


@dataclass
class SearchSpace:
    """A parsed, validated space file."""

    path: str
    text: str  # the file's own text
    root: Space
    sources: list[tuple[str, str]] = field(default_factory=list)  # (path, text) of every file read, includes too

    @property
    def name(self) -> str:
        return Path(self.path).stem

    @property
    def sha256(self) -> str:
        """Of the file and everything it includes: an edited common part is another space."""
        texts = [text for _, text in self.sources] or [self.text]
        return hashlib.sha256("\0".join(texts).encode()).hexdigest()

    def define_by_run(self, trial: Any) -> dict[str, Any]:
        return self.root.sample(trial)

    def optuna_params(self, point: dict[str, Any]) -> dict[str, Any]:
        """A config (flat keys) as Optuna parameters, to enqueue as a trial to run first.

        Keys the space does not search are an error; searched keys left out are sampled.
        """
        searched = self.root.keys() - set(self.root.fixed)
        extra = sorted(set(point) - searched)
        if extra:
            raise ConfigError(f"{self.path}: point sets {', '.join(extra)}, which this space does not search")
        return self.root.params(point, self.path)

    def per_option_points(self, key: str, per_option: int) -> list[dict[str, Any]]:
        """Optuna parameters that start a search with ``per_option`` trials of every option of the
        top-level choice (or categorical) over ``key``, cycling through the options.

        TPE alone may settle on one option after its random start and leave others untried; these
        points, enqueued before TPE's own suggestions, give every option its trials first.
        """
        options = self.root.options_of(key)
        return [self.root.params({key: option}, self.path) for _ in range(per_option) for option in options]

    def check_against(self, base: dict[str, Any], datasets: list[str] | None = None) -> None:
        """Every branch of the space, on top of ``base`` (the user's fixed keys), is a valid config,
        and every value fixed there is used in one branch at least, on one of ``datasets`` (all the
        datasets of the command: --data-dir may serve some of them only).

        A key both searched here and fixed in ``base`` is an error; a key fixed in both takes the
        command line's value.
        """
        from .config import from_flat

        searched = self.root.keys() - set(self.root.fixed)
        clash = sorted(k for k in base if k in searched)
        if clash:
            raise ConfigError(
                f"{self.path}: {', '.join(clash)} is searched in this space and also set on the "
                "command line / --config; remove one of them"
            )
        for key in set(base) & set(self.root.fixed):
            self.root.fixed[key] = base[key]
        self._take_loss_spelling(base, searched)
        self._take_run_length(base, searched)
        for example in self.root.examples(0) + self.root.examples(-1):
            from_flat({**base, **example}, source=self.path)
        self._check_applies(base)
        self._check_used(base, datasets)

    def _take_loss_spelling(self, base: dict[str, Any], searched: set[str]) -> None:
        """A loss hyperparameter given on the command line replaces the space's fixed value in the
        other spelling too (loss.proxy_anchor.margin over loss.margin); searched there: an error."""
        from .config import same_parameter

        loss_name = str(base.get("loss.name", self.root.fixed.get("loss.name", FIELDS["loss.name"].default)))
        for key in base:
            for other in sorted(k for k in self.root.keys() if same_parameter(k, key, loss_name)):
                if other in searched:
                    raise ConfigError(
                        f"{self.path}: {other} is searched in this space and {key} (the same "
                        "hyperparameter) is set on the command line / --config; remove one of them"
                    )
                self.root.drop(other)

    def _check_used(self, base: dict[str, Any], datasets: list[str] | None) -> None:
        """Every value the user fixed (on the command line, in --config, or at the top of the space)
        does something in at least one branch of the space: a value no trial would use is refused,
        as `tunedml train` refuses it (config.check_used)."""
        from .config import given_by_user, unused_message

        fixed = {**self.root.fixed, **base}
        paths = self.root.paths()
        for key, value in fixed.items():
            rule = FIELDS[key].used if key in FIELDS else None
            if rule is None or not given_by_user(key, value):
                continue
            contexts = [
                {k: values.get(k, [fixed.get(k, FIELDS[k].default)]) for k in rule.keys} for _, values, _ in paths
            ]
            if datasets and "data.dataset" in rule.keys and "data.dataset" not in self.root.keys():
                contexts = [{**context, "data.dataset": datasets} for context in contexts]
            if not any(rule.anywhere(context) for context in contexts):
                where = "set on the command line / --config" if key in base else "fixed in this space"
                message = unused_message(key, value, rule, rule.failure(contexts[0]) or {})
                raise ConfigError(f"{self.path}: {message} ({where}; no branch of the space uses it)")

    def _take_run_length(self, base: dict[str, Any], searched: set[str]) -> None:
        """A run length given on the command line (train.steps or train.epochs) replaces the space's,
        in either spelling: the other spelling is dropped from the space (searched: an error)."""
        from .config import RUN_LENGTH

        given = [k for k in RUN_LENGTH if base.get(k) is not None]
        for other in (k for k in RUN_LENGTH if given and k not in given):
            if other in searched:
                raise ConfigError(
                    f"{self.path}: {other} is searched in this space and {given[0]} is set on the "
                    "command line / --config; both set the run's length: remove one of them"
                )
            self.root.drop(other)

    def _check_applies(self, base: dict[str, Any]) -> None:
        """No parameter that does nothing: each searched key's ``applies`` rule holds in every branch
        combination where it is searched, for every value the keys it depends on can take there."""
        for label, values, searched in self.root.paths():
            for key in searched:
                names = values.get("loss.name", [base.get("loss.name", FIELDS["loss.name"].default)])
                rule = hyperparameter_for(key, str(names[0]), self.path).applies
                if rule is None:
                    continue
                context = {k: values.get(k, [base.get(k, FIELDS[k].default)]) for k in rule.keys}
                bad = rule.failure(context)
                if bad is not None:
                    where = f"in branch {label}" if label else "at the top level"
                    shown = ", ".join(f"{k}={v}" for k, v in bad.items())
                    raise ConfigError(
                        f"{self.path}: {key} is searched {where}, where it does nothing ({shown}); "
                        f"it applies {rule.text}: search it only in the branches where it does"
                    )


def config_keys(params: dict[str, Any]) -> dict[str, Any]:
    """Drop Optuna's branch-qualified names (``key|option``), keep the config keys."""
    return {k: v for k, v in params.items() if BRANCH_SEP not in k}


def load_space(path: str | Path, base: dict[str, Any] | None = None) -> SearchSpace:
    """Read and validate a space; ``base`` holds keys fixed elsewhere (``--set``), e.g. loss.name."""
    path = str(path)
    if not Path(path).is_file():
        raise ConfigError(f"{path}: search space file not found")
    sources: list[tuple[str, str]] = []
    raw = read_space_yaml(path, sources)
    if not raw:
        raise ConfigError(f"{path}: the search space is empty")
    base = base or {}
    loss_names = _loss_context(raw, base)
    return SearchSpace(path, sources[0][1], _parse(raw, path, loss_names, prefix=""), sources)


def read_space_yaml(path: str | Path, sources: list[tuple[str, str]] | None = None) -> dict[str, Any]:
    """A space (or run config) file's mapping with its ``include`` files merged in.

    ``sources`` collects (path, text) of each file read, the given one first.
    """
    keys, _ = _read_including(Path(path), (), sources if sources is not None else [])
    return keys


def _read_including(
    path: Path, including: tuple[Path, ...], sources: list[tuple[str, str]]
) -> tuple[dict[str, Any], dict[str, str]]:
    """(keys, key -> the file that defines it) of ``path`` and, recursively, its includes;
    ``including`` is the chain of files that led here (for cycles and messages)."""
    parent = including[-1] if including else None
    if parent is not None and path.resolve() in {p.resolve() for p in including}:
        cycle = " -> ".join(p.name for p in (*including, path))
        raise ConfigError(f"{parent}: {INCLUDE}: {path.name} includes itself ({cycle})")
    if not path.is_file():
        raise ConfigError(
            f"{parent}: {INCLUDE}: {path.name} not found (looked for {path})" if parent else f"{path}: file not found"
        )
    raw = dict(load_yaml(path))
    sources.append((str(path), path.read_text()))
    includes = raw.pop(INCLUDE, [])
    includes = [includes] if isinstance(includes, str) else includes
    if not isinstance(includes, list) or not all(isinstance(i, str) and i for i in includes):
        raise ConfigError(f"{path}: {INCLUDE} takes a file name or a list of file names, got {includes!r}")
    keys: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for name in includes:
        sub, sub_origin = _read_including(path.parent / name, (*including, path), sources)
        for key, value in sub.items():
            if key in keys:
                raise ConfigError(
                    f"{path}: {key} is defined twice, in {origin[key]} and in {sub_origin[key]}; define it once"
                )
            keys[key], origin[key] = value, sub_origin[key]
    own = {str(k): v for k, v in raw.items()}
    for key in own:
        if key in keys:
            raise ConfigError(f"{path}: {key} is defined here and in {origin[key]} (included); define it once")
    return {**own, **keys}, {**{k: path.name for k in own}, **origin}


def _loss_context(raw: dict[str, Any], base: dict[str, Any]) -> tuple[str, ...]:
    value = raw.get("loss.name", base.get("loss.name", "none"))
    if isinstance(value, dict) and isinstance(value.get("categorical"), list) and value["categorical"]:
        return tuple(str(v) for v in value["categorical"])  # a loss.<param> beside it must suit each
    if isinstance(value, dict):
        return tuple(LOSS_NAMES)  # a choice: each branch narrows it
    return (str(value),)


def _parse(raw: dict[str, Any], path: str, loss_names: tuple[str, ...], prefix: str) -> Space:
    space = Space()
    for key, spec in raw.items():
        key = str(key)
        where = f"{path}: {key}"
        if key not in FIELDS and not key.startswith("loss."):
            raise ConfigError(f"{path}: " + unknown_choice("key", key, list(FIELDS) + ["loss.<hyperparameter>"]))
        hps = _hyperparameters(key, loss_names, path)
        name = f"{key}{BRANCH_SEP}{prefix}" if prefix else key
        if not isinstance(spec, dict):
            for hp in hps:
                space.fixed[key] = hp.parse(spec, key, path)
            continue
        if len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
            raise ConfigError(f"{where}: expected a value or one of {{{', '.join(DISTRIBUTIONS)}: ...}}, got {spec!r}")
        kind, args = next(iter(spec.items()))
        if kind == "choice":
            space.branches[key] = (name, _parse_choice(key, args, path, hps, prefix, loss_names))
        else:
            space.dists.append(_parse_dist(key, kind, args, where, hps, name, spec))
    return space


def _hyperparameters(key: str, loss_names: tuple[str, ...], path: str) -> list[Hyperparameter]:
    """The key's Hyperparameter under each loss it may apply to; loss.<param> must fit all of them."""
    if key in FIELDS:
        return [FIELDS[key]]
    return [hyperparameter_for(key, loss, path) for loss in loss_names]


def _parse_choice(
    key: str, args: Any, path: str, hps: list[Hyperparameter], prefix: str, loss_names: tuple[str, ...]
) -> dict[Any, Space]:
    where = f"{path}: {key}"
    if not isinstance(args, dict) or not args:
        raise ConfigError(
            f"{where}: choice needs a mapping of options to sub-spaces, e.g. {{none: {{}}, proxy_anchor: {{...}}}}"
        )
    options: dict[Any, Space] = {}
    for option, sub in args.items():
        for hp in hps:
            option = hp.parse(option, key, path)
        if sub is not None and not isinstance(sub, dict):
            raise ConfigError(f"{where}: option {option!r} must map to a sub-space (a mapping, or {{}})")
        narrowed = (str(option),) if key == "loss.name" else loss_names
        options[option] = _parse(
            sub or {}, path, narrowed, prefix=f"{prefix},{key}={option}" if prefix else f"{option}"
        )
    return options


def _parse_dist(key: str, kind: str, args: Any, where: str, hps: list[Hyperparameter], name: str, spec: dict) -> Dist:
    if kind == "categorical":
        if not isinstance(args, list) or not args:
            raise ConfigError(f"{where}: categorical needs a non-empty list of choices")
        choices = list(args)
        for hp in hps:
            choices = [hp.parse(c, key, where.split(":")[0]) for c in args]
        return Dist(key, kind, choices=choices, name=name)
    if not isinstance(args, (list, dict)):
        raise ConfigError(f"{where}: {kind} needs [low, high]")
    opts = dict(args) if isinstance(args, dict) else {}
    bounds = args if isinstance(args, list) else [opts.pop("low", None), opts.pop("high", None)]
    allowed = RANGE_OPTIONS[kind]
    unknown = sorted(set(opts) - set(allowed))
    if unknown:
        raise ConfigError(
            f"{where}: {kind} takes low, high{''.join(', ' + a for a in allowed)}; "
            f"unknown: {', '.join(map(str, unknown))}"
        )
    if len(bounds) != 2 or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds):
        raise ConfigError(f"{where}: {kind} needs two numbers [low, high], got {args!r}")
    if kind == "int" and not all(float(b).is_integer() for b in bounds):
        raise ConfigError(f"{where}: int needs whole-number bounds, got {bounds!r}")
    low, high = float(bounds[0]), float(bounds[1])
    if low > high:
        raise ConfigError(f"{where}: low {low:g} > high {high:g}")
    log = kind == "loguniform" or opts.get("log", False) is True
    if log and low <= 0:
        raise ConfigError(f"{where}: a log scale needs bounds > 0, got low {low:g}")
    step = opts.get("step", 1)
    if isinstance(step, bool) or not isinstance(step, int) or step < 1 or (log and step != 1):
        raise ConfigError(f"{where}: step must be a whole number >= 1 (and 1 on a log scale), got {step!r}")
    for hp in hps:
        if kind == "int" and hp.kind is not int:
            raise ConfigError(f"{where}: int distribution on a {hp.kind.__name__} key; use uniform or loguniform")
        if kind != "int" and hp.kind is not float:
            raise ConfigError(
                f"{where}: {kind} on a {hp.kind.__name__} key; use {'int' if hp.kind is int else 'categorical'}"
            )
        for b in (low, high):
            hp.check(int(b) if hp.kind is int else b, key, where.split(":")[0])
    return Dist(key, kind, low, high, log=log, step=step, name=name)
