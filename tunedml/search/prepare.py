"""A search made ready for one dataset: the keys the user fixed, the space loaded and checked
against them, and the driver's config (what the data are read and tokenized with)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ..config import RunConfig, from_flat
from ..inputs import RunInputs
from ..space import SearchSpace, load_space


@dataclass(frozen=True)
class PreparedSearch:
    dataset: str
    base: dict[str, Any]  # the flat keys the user set, under every trial's searched values
    space: SearchSpace
    driver: RunConfig  # base and the space's fixed keys: what the driver reads and tokenizes with


def prepare_search(
    space_file: str | os.PathLike, dataset: str, inputs: RunInputs, datasets: list[str] | None = None
) -> PreparedSearch:
    """Validate one dataset's search: its config, its model, its space against the keys given.
    ``datasets``: every dataset of the command; a value that serves one of them only (--data-dir
    beside a data file) is used, not refused."""
    cfg = inputs.build(dataset=dataset)
    base = inputs.explicit(cfg, dataset)
    space = load_space(os.fspath(space_file), base)
    space.check_against(base, datasets or [dataset])
    return PreparedSearch(dataset, base, space, from_flat({**base, **space.root.fixed}, source=os.fspath(space_file)))
