"""What a user names for a run, the same from the command line and from Python: a YAML run
config, the dataset, a data folder, the model and single keys (``--set KEY=VALUE`` or
``sets={"key": value}``), validated into a :class:`~tunedml.config.RunConfig` in one order:
defaults < config file < dataset, data folder and model < sets; and a list of datasets
(``--datasets sst2,mr`` or ``all``)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence, Union

from .errors import ConfigError, DataError

Sets = Union[Mapping[str, Any], Sequence[str]]  # {"data.k": 16} or ["data.k=16"]
ALL = "all"  # every registered task, wherever several datasets are named


def set_pairs(sets: Sets | None) -> dict[str, Any]:
    """``sets`` as flat keys and values: a mapping as it is, ``KEY=VALUE`` texts parsed (values
    stay text until validated, as from the command line)."""
    from .config import parse_set_args

    if not sets:
        return {}
    if isinstance(sets, Mapping):
        return {str(k): v for k, v in sets.items()}
    return parse_set_args([sets] if isinstance(sets, str) else list(sets))


def dataset_names(value: str | Sequence[str] | None, default: str = "sst2") -> list[str]:
    """``--datasets``: a comma list, ``all`` (the registered tasks) or a list; ``default`` if empty."""
    from .data import TASKS

    if value is None or value == "" or value == []:
        return [default]
    items = value.split(",") if isinstance(value, str) else [os.fspath(v) for v in value]
    names = [v.strip() for v in items]
    if not all(names):
        raise ConfigError(
            f"--datasets {value if isinstance(value, str) else ','.join(items)!r}: an empty name in the "
            "list; give names separated by commas, e.g. sst2,mr"
        )
    if ALL in names:
        if names != [ALL]:
            raise ConfigError(f"--datasets {','.join(names)}: 'all' is every registered task; give it alone")
        return list(TASKS)
    return names or [default]


@dataclass(frozen=True)
class RunInputs:
    """A config file, dataset, data folder, model and keys, as given; None where not given."""

    config: str | None = None
    dataset: str | None = None
    data_dir: str | None = None
    model: str | None = None
    sets: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        config: str | os.PathLike | None = None,
        dataset: str | os.PathLike | None = None,
        data_dir: str | os.PathLike | None = None,
        model: str | os.PathLike | None = None,
        sets: Sets | None = None,
    ) -> "RunInputs":
        def text(value: Any) -> str | None:
            return None if value is None else os.fspath(value)

        return cls(text(config), text(dataset), text(data_dir), text(model), set_pairs(sets))

    def named(self) -> dict[str, Any]:
        """The dataset, data folder and model as flat keys; the data folder made absolute (trials
        run in other directories), and $TUNEDML_DATA_DIR where none is given."""
        from .data import resolve_data_dir

        keys: dict[str, Any] = {}
        if self.dataset:
            keys["data.dataset"] = self.dataset
        data_dir = resolve_data_dir(self.data_dir)
        if data_dir:
            if not os.path.isdir(data_dir):
                raise DataError(f"--data-dir {data_dir!r} is not a folder")
            keys["data.data_dir"] = os.path.abspath(data_dir)
        if self.model:
            keys["model.name"] = self.model
        return keys

    def overrides(self) -> dict[str, Any]:
        """The data folder, model and keys as overrides of configurations read elsewhere (a
        recorded search's, a file's); the dataset is not one: it says which searches to read."""
        named = {k: v for k, v in self.named().items() if k != "data.dataset"}
        return {**named, **self.sets}

    def build(self, dataset: str | None = None) -> Any:
        """The validated RunConfig, its dataset named, its model loadable (config and tokenizer,
        checked before any data is read or anything trains)."""
        from .checks import check_model, check_model_fits
        from .config import build_config
        from .data import check_dataset_name

        named = {**self.named(), **({"data.dataset": dataset} if dataset else {})}
        cfg = build_config(self.config, None, named)
        if self.sets:
            cfg = cfg.with_overrides(self.sets, source="--set")
        check_dataset_name(cfg.data.dataset)
        check_model(cfg.model.name)
        check_model_fits(cfg.model.name, cfg.model.reinit_layers, cfg.data.max_length)
        return cfg

    def explicit(self, cfg: Any, dataset: str) -> dict[str, Any]:
        """The keys the user set (in the file, by name or as keys), with their values in ``cfg``:
        what a search holds fixed under its space; every other key is the space's or a default."""
        from .config import explicit_keys

        named = {"data.dataset": dataset, "data.data_dir": cfg.data.data_dir, "model.name": self.model}
        keys = explicit_keys(self.config, [], {k: v for k, v in named.items() if v is not None}) | set(self.sets)
        flat = cfg.to_flat()
        return {k: flat[k] for k in keys if k in flat}
