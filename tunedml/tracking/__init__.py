"""MLflow tracking: every search browsable, the best configuration per dataset recorded, the final
evaluations and reports kept. The only package that talks to MLflow.

Layout in the tracking store:

- one experiment per dataset, ``tunedml/<dataset>``, so that the MLflow UI's compare view puts
  every search of a dataset (any space, model or budget) side by side;
- one parent run per search (tag ``tunedml.role=search``) with the search's settings as tags and
  params, the space file as an artifact and, when it ends, the best trial as ``best.*`` params,
  ``best_score``, ``best_config.yaml`` and Optuna's plots;
- one nested child run per trial (tag ``mlflow.parentRunId``) with the trial's full flat config as
  params and its dev metrics at every dev evaluation (step = optimizer steps);
- final runs (``tunedml.role=final``) from `tunedml retrain`, report runs in ``tunedml/report``.

Modules: :mod:`.store` (client, errors, experiments, batched writes), :mod:`.uri` (where the
store is, can it be written), :mod:`.ui` (`tunedml ui`), :mod:`.searches` (reading searches back),
:mod:`.search_runs` (writing a running search: the Ray Tune callback, the only Ray-dependent part,
not imported here), :mod:`.plots` (Optuna's plots), :mod:`.final` (final and report runs).
"""

from .final import download_model, final_comparisons, log_final, log_report
from .plots import PLOTS
from .searches import BEST_CONFIG, BestRecord, best_searches, find_best, run_config, space_name
from .store import experiment_name
from .ui import UI_ENV, serve_ui, ui_command
from .uri import check_tracking, resolve_tracking_uri, store_exists

__all__ = [
    "BEST_CONFIG",
    "PLOTS",
    "UI_ENV",
    "BestRecord",
    "best_searches",
    "check_tracking",
    "download_model",
    "experiment_name",
    "final_comparisons",
    "find_best",
    "log_final",
    "log_report",
    "resolve_tracking_uri",
    "run_config",
    "serve_ui",
    "space_name",
    "store_exists",
    "ui_command",
]
