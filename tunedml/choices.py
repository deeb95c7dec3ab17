"""The names an option can take, in a module light enough for the command line's parser: argparse
lists them in ``--help`` and refuses anything else, and the validators behind the Python API read
the same tuples (the metrics live in :mod:`tunedml.metrics`, with their meaning)."""

from __future__ import annotations

SCHEDULERS = ("asha", "hyperband", "none")  # early stopping of a search's trials
INTERVALS = ("t", "bootstrap")  # the paired difference's interval in a final evaluation
PROJECTIONS = ("pca", "tsne")  # the report's 2-D view of the embeddings
AUTO = "auto"  # GPUs per trial or draw: one where there are GPUs, none otherwise; trials at a time: what fits


def is_concurrency(value: object) -> bool:
    """Trials (or draws) at a time: ``auto`` or a whole number >= 1."""
    return value == AUTO or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)


def is_gpus(value: object) -> bool:
    """GPUs per trial or draw: ``auto`` or a number >= 0 (a share below 1 packs tasks on a GPU)."""
    if value == AUTO:
        return True
    try:
        return float(value) >= 0  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
