"""Typed hyperparameters with valid ranges.

One :class:`Hyperparameter` describes a config key: its type, default and the values that make
sense. The same objects validate `--set` values, YAML configs and search-space bounds, so a range
is written down once.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import yaml

from .errors import ConfigError, unknown_choice

NULLS = ("None", "null", "~")  # an unset optional key, as str() writes it (MLflow params) and as YAML does


class YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, plus YAML 1.2 floats such as ``1e-4`` (YAML 1.1 reads them as strings),
    and a key given twice in one mapping refused (PyYAML keeps the last one silently; YAML says keys
    are unique)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: its keys may be overridden here
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) or key is None:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"key {key!r} is given twice, first on line {seen[key].line + 1}; keep one",
                        key_node.start_mark,
                    )
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep)


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"), list("-+0123456789.")
)


def load_yaml_text(text: str) -> Any:
    return yaml.load(text, Loader=YamlLoader)


def _scalar(text: str) -> Any:
    """A `--set` value read as YAML would read it in a config file; text that is no YAML (``[``)
    stays text, which the key's type then refuses with the key's name."""
    if not text.strip():
        return text
    try:
        return load_yaml_text(text)
    except yaml.YAMLError:
        return text


@dataclass(frozen=True)
class Applies:
    """Where a key changes the run: ``test`` over the values of the keys it depends on.

    A search space may search a key only where every value its ``keys`` can take passes ``test``
    (no parameter that does nothing: TPE would model noise, and trial counts would mislead).
    """

    keys: tuple[str, ...]
    test: Callable[..., bool]  # called with one value per key, in order
    text: str  # "only with ...": the second half of the error message

    def anywhere(self, values: dict[str, Iterable[Any]]) -> bool:
        """Whether the key does something in at least one combination of ``values``."""
        return any(self.test(*combo) for combo in itertools.product(*(list(values[k]) for k in self.keys)))

    def failure(self, values: dict[str, Iterable[Any]]) -> dict[str, Any] | None:
        """The first combination of ``values`` (key -> possible values) where the key does nothing."""
        for combo in itertools.product(*(list(values[k]) for k in self.keys)):
            if not self.test(*combo):
                return dict(zip(self.keys, combo))
        return None


@dataclass(frozen=True)
class Hyperparameter:
    name: str
    kind: type  # int, float, bool or str
    default: Any
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] | None = None
    optional: bool = False  # None is allowed
    help: str = ""  # what the key does: `tunedml keys` and `tunedml losses` print it
    applies: Applies | None = None  # None: the key matters in every run
    # where the key has any effect at all; None: in every run. A config, --set or flag that gives it
    # another value than its default where this fails is refused (config.check_used): the value
    # would be dropped. Often the same rule as ``applies``, which is stricter where a key has a small
    # effect that only adds noise to a search (plain CCE's loss.ce_weight).
    used: Applies | None = None

    def describe(self) -> str:
        """Short human text of what is valid, for `tunedml losses` and error messages."""
        if self.choices is not None:
            return "one of " + ", ".join(map(str, self.choices))
        if self.kind is bool:
            return "true or false"
        if self.low is not None or self.high is not None:
            fmt = (lambda v: str(int(v))) if self.kind is int else (lambda v: f"{v:g}")
            lo = "-inf" if self.low is None else fmt(self.low)
            hi = "inf" if self.high is None else fmt(self.high)
            return f"{self.kind.__name__} in [{lo}, {hi}]"
        return self.kind.__name__

    def parse(self, value: Any, key: str, source: str = "config") -> Any:
        """Coerce ``value`` (a YAML value or a `--set` string) and check it; raise ConfigError."""
        if self.optional and isinstance(value, str) and value.strip() in NULLS:
            value = None  # how an unset optional key reads back from MLflow's params, or in YAML
        if isinstance(value, str) and self.kind is not str:
            value = _scalar(value)
        if value is None:
            if self.optional:
                return None
            raise ConfigError(f"{source}: {key} must not be empty; expected {self.describe()}")
        if self.kind is str and isinstance(value, str) and not value.strip():
            leave = "leave it out (or null) for its default" if self.optional else "give a value or leave it out"
            raise ConfigError(f"{source}: {key}={value!r} is blank; {leave} (tunedml keys lists what it takes)")
        value = self._coerce(value, key, source)
        self.check(value, key, source)
        return value

    def _coerce(self, value: Any, key: str, source: str) -> Any:
        bad = ConfigError(f"{source}: {key}={value!r} is not a {self.kind.__name__}; expected {self.describe()}")
        if self.kind is bool:
            if isinstance(value, bool):
                return value
            raise bad
        if self.kind is int:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise bad
            if not math.isfinite(value) or int(value) != value:  # NaN and infinity are no count
                raise bad
            return int(value)
        if self.kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise bad
            return float(value)
        return str(value)

    def check(self, value: Any, key: str, source: str = "config") -> None:
        if self.choices is not None and value not in self.choices:
            raise ConfigError(f"{source}: {key}: " + unknown_choice("value", value, map(str, self.choices)))
        outside = self.low is not None and value < self.low or self.high is not None and value > self.high
        if outside or value != value:  # NaN passes every comparison with a bound
            raise ConfigError(f"{source}: {key}={value!r} is out of range; valid: {self.describe()}")
