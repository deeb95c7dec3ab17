"""tunedml: find the CCE + metric-learning loss that fine-tunes an encoder best, per dataset.

The operations, as the `tunedml` commands run them (:mod:`tunedml.api`)::

    import tunedml

    result = tunedml.fit(dataset="mpqa", sets={"train.steps": 4})    # tunedml train

:func:`fit` (`tunedml train`), :func:`optimize` (`tunedml search`), :func:`compare` (`tunedml
retrain`), :func:`make_report` (`tunedml report`), :func:`best`, :func:`searches`; bad input raises
a :class:`TunedMLError`. Importing tunedml loads none of torch, Ray or MLflow: each function
imports what it needs when it runs.
"""

from .api import best, compare, fit, make_report, optimize, run_config, searches
from .errors import ConfigError, DataError, RunFailed, TrackingError, TunedMLError

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DataError",
    "RunFailed",
    "TrackingError",
    "TunedMLError",
    "__version__",
    "best",
    "compare",
    "fit",
    "make_report",
    "optimize",
    "run_config",
    "searches",
]
