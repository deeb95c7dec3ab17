"""Optuna's plots of a finished search (history, importances, parallel coordinates, slices), from
an in-memory study rebuilt out of the search's trials, drawn by Optuna's matplotlib backend as PNG:
an image shows in the MLflow UI on a machine without internet, where Plotly's HTML would load
plotly.js from a CDN and stay blank (or, with plotly.js inside, weigh 4.6 MB a file)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..optuna_space import optuna_distributions
from .store import reason

DPI = 110
SHOWN_PARAMS = 6  # an axis per parameter: more than a few make an image nobody can read
ONE_AXIS_PER_PARAM = ("parallel_coordinate", "slice")

PLOTS = {  # artifact name (.png) -> optuna.visualization.matplotlib function
    "optimization_history": "plot_optimization_history",
    "param_importances": "plot_param_importances",
    "parallel_coordinate": "plot_parallel_coordinate",
    "slice": "plot_slice",
}


def optuna_study(space: Any, trials: list[Any]) -> Any:
    """An in-memory Optuna study rebuilt from the search's trials (:class:`tunedml.search.TrialSummary`)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = optuna_distributions(space)
    study = optuna.create_study(direction="maximize")
    states = {
        "FINISHED": optuna.trial.TrialState.COMPLETE,
        "KILLED": optuna.trial.TrialState.PRUNED,
        "FAILED": optuna.trial.TrialState.FAIL,
    }
    for t in trials:
        params = space.root.params(t.config, space.path)
        state = states[t.status] if t.score is not None or t.status == "FAILED" else optuna.trial.TrialState.FAIL
        study.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions={k: dists[k] for k in params},
                state=state,
                value=t.score if state == optuna.trial.TrialState.COMPLETE else None,
                intermediate_values={t.steps: t.score} if state == optuna.trial.TrialState.PRUNED else None,
            )
        )
    return study


def write_optuna_plots(space: Any, trials: list[Any], folder: Path, notes: list[str]) -> list[str]:
    """Write each plot as ``<name>.png``; a plot that cannot be made (too few trials, nothing
    varied) is skipped with a note, never failing the search."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as vis

    try:
        study = optuna_study(space, trials)
    except Exception as e:
        notes.append(f"no Optuna plots: {reason(e)}")
        return []
    shown = {"params": _most_important(study)} if study.trials else {}
    made = []
    for name, fn in PLOTS.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the matplotlib backend is marked experimental
                axes = getattr(vis, fn)(study, **(shown if name in ONE_AXIS_PER_PARAM else {}))
                figure = np.asarray(axes).flat[0].figure  # plot_slice gives one Axes per parameter
                figure.savefig(folder / f"{name}.png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
            made.append(name)
        except Exception as e:
            notes.append(f"plot {name} skipped: {reason(e)}")
        finally:
            plt.close("all")
    return made


def _most_important(study: Any) -> list[str] | None:
    """The SHOWN_PARAMS parameters that mattered most (Optuna's fANOVA importances, over the
    parameters every finished trial has), else those the most trials had; None: all of them."""
    import optuna

    names: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            names = list(optuna.importance.get_param_importances(study))
    except Exception:  # too few finished trials, nothing varied
        pass
    counts: dict[str, int] = {}
    for trial in study.trials:
        for key in trial.params:
            counts[key] = counts.get(key, 0) + 1
    names += [k for k in sorted(counts, key=lambda k: -counts[k]) if k not in names]
    return names[:SHOWN_PARAMS] if len(names) > SHOWN_PARAMS else None
