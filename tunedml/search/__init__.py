"""Searches: Optuna's TPE proposes loss configurations, Ray Tune runs and early-stops them.

Modules: :mod:`.options` (what a search is asked to do), :mod:`.prepare` (a dataset's search made
ready: keys, space, driver config), :mod:`.checks` (everything checked before it starts),
:mod:`.trainable` (one trial, in a Ray worker), :mod:`.schedule` (TPE and ASHA on the step clock),
:mod:`.lines` (progress lines and the callback relay), :mod:`.run` (running or resuming a search,
its summary), :mod:`.results` (the summary as data). Data are read and tokenized once in the
driver and reach every trial through Ray's object store. Nothing here talks to MLflow: tracking plugs in as a Tune callback.
"""

from ..ray_init import init_ray
from .lines import Relay, TrialLines, describe, trial_error, trial_status
from .options import DEFAULT_STORAGE, SCHEDULERS, SearchOptions, check_name, check_per_option, parse_per_option
from .results import SearchInterrupted, SearchResult, TrialSummary, best_trial
from .run import STATE_FILE, experiment_path, gpus_per_trial, read_state, run_search
from .schedule import RunBounds, make_scheduler, make_searcher, run_bounds
from .trainable import repeat_config, trainable

__all__ = [
    "DEFAULT_STORAGE",
    "SCHEDULERS",
    "STATE_FILE",
    "Relay",
    "RunBounds",
    "SearchInterrupted",
    "SearchOptions",
    "SearchResult",
    "TrialLines",
    "TrialSummary",
    "best_trial",
    "check_name",
    "check_per_option",
    "describe",
    "experiment_path",
    "gpus_per_trial",
    "init_ray",
    "make_scheduler",
    "make_searcher",
    "parse_per_option",
    "read_state",
    "repeat_config",
    "run_bounds",
    "run_search",
    "trainable",
    "trial_error",
    "trial_status",
]
