"""Optuna's plots of a finished search (history, importances, parallel coordinates, slices), from
an in-memory study rebuilt out of the search's trials."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from ..optuna_space import optuna_distributions
from .store import reason

PLOTS = {  # artifact name -> optuna.visualization function
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
    states = {"FINISHED": optuna.trial.TrialState.COMPLETE, "KILLED": optuna.trial.TrialState.PRUNED,
              "FAILED": optuna.trial.TrialState.FAIL}
    for t in trials:
        params = space.root.params(t.config, space.path)
        state = states[t.status] if t.score is not None or t.status == "FAILED" else optuna.trial.TrialState.FAIL
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={k: dists[k] for k in params}, state=state,
            value=t.score if state == optuna.trial.TrialState.COMPLETE else None,
            intermediate_values={t.steps: t.score} if state == optuna.trial.TrialState.PRUNED else None))
    return study


def write_optuna_plots(space: Any, trials: list[Any], folder: Path, notes: list[str]) -> list[str]:
    """Write each plot as an HTML file; a plot that cannot be made (too few trials, nothing varied)
    is skipped with a note, never failing the search."""
    import optuna.visualization as vis

    try:
        study = optuna_study(space, trials)
    except Exception as e:
        notes.append(f"no Optuna plots: {reason(e)}")
        return []
    made = []
    for name, fn in PLOTS.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                getattr(vis, fn)(study).write_html(str(folder / f"{name}.html"), include_plotlyjs="cdn")
            made.append(name)
        except Exception as e:
            notes.append(f"plot {name} skipped: {reason(e)}")
    return made
