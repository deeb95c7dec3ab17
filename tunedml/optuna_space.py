"""A search space in Optuna's terms: the distribution of every parameter, in every branch, under
the names the define-by-run function gives them (``key|option`` inside a choice). Kept apart from
:mod:`tunedml.space` so that the space language itself needs no Optuna."""

from __future__ import annotations

from typing import Any, Iterator

from .space import SearchSpace, Space


def optuna_distributions(space: SearchSpace) -> dict[str, Any]:
    """Optuna name -> Optuna distribution, for every parameter of ``space``."""
    return dict(_distributions(space.root))


def _distributions(space: Space) -> Iterator[tuple[str, Any]]:
    import optuna.distributions as od

    for d in space.dists:
        if d.kind == "categorical":
            yield d.name, od.CategoricalDistribution(d.choices)
        elif d.kind == "int":
            yield d.name, od.IntDistribution(int(d.low), int(d.high), step=d.step, log=d.log)
        else:
            yield d.name, od.FloatDistribution(d.low, d.high, log=d.log)
    for name, options in space.branches.values():
        yield name, od.CategoricalDistribution(list(options))
        for sub in options.values():
            yield from _distributions(sub)
