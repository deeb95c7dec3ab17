"""Ray in this process: started or joined once, quietly, for a search's trials, a final
evaluation's draws and the pre-flight look at a cluster's nodes."""

from __future__ import annotations

import os
from typing import Any


def init_ray(address: str | None, verbose: bool) -> None:
    """Ray in this process, once: a cluster with ``address`` (or $RAY_ADDRESS, as `ray job submit`
    sets it), else a local Ray of its own; quiet unless ``verbose``."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    kwargs: dict[str, Any] = {
        "log_to_driver": verbose,
        "configure_logging": True,
        "logging_level": "INFO" if verbose else "ERROR",
    }
    if address:
        ray.init(address=address, **kwargs)
    elif os.environ.get("RAY_ADDRESS"):  # set by `ray job submit`: the job runs on its cluster
        ray.init(**kwargs)
    else:  # "local": without it Ray joins whatever cluster `ray start` last left on this machine
        ray.init(address="local", include_dashboard=False, **kwargs)
    from .interrupt import sigterm_as_ctrl_c

    sigterm_as_ctrl_c()  # ray.init replaced it with a handler that exits: a search would end FAILED
    if not verbose:  # failed trials are summarised by tunedml; Ray's tracebacks stay in the results folder
        import logging

        for name in ("ray", "ray.tune", "ray.train"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
