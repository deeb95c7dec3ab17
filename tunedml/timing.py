"""Where a process's training seconds go: model set-up, batches, forward and backward passes, the optimizer
step, dev evaluation, test evaluation, tokenization.

Off unless ``$TUNEDML_TIMING`` names a file. Then every process that trains (the driver, each Ray
worker) appends one JSON line per flush with the seconds spent in each phase since its last flush,
so that a trial stopped early by the scheduler has still recorded what it spent.
``benchmarks/bench_study.py`` sums the lines against a study's wall time. The clocks are the
host's: on a GPU, kernels run ahead of them and waiting lands in whichever phase synchronises
first (the optimizer step, the evaluation's copy to the host).
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

ENV = "TUNEDML_TIMING"
PHASES = ("tokenize", "setup", "batches", "forward_backward", "optimizer", "evaluation", "test")

_seconds: dict[str, float] = defaultdict(float)


def enabled() -> bool:
    return bool(os.environ.get(ENV))


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Count the seconds of the block under ``name`` (one of :data:`PHASES`)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        add(name, time.perf_counter() - start)


def add(name: str, seconds: float) -> None:
    if enabled():  # off: nothing is kept, so nothing leaks into a later flush
        _seconds[name] += seconds


def flush() -> None:
    """Append the seconds counted since the last flush to ``$TUNEDML_TIMING`` (one line; a single
    write, so lines from processes sharing the file do not interleave), then start again from zero."""
    path = os.environ.get(ENV)
    if not path or not _seconds:
        _seconds.clear()
        return
    line = json.dumps({"pid": os.getpid(), "seconds": dict(_seconds)}) + "\n"
    _seconds.clear()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read(path: str) -> dict[str, float]:
    """Seconds per phase summed over every line of a timing file."""
    total: dict[str, float] = dict.fromkeys(PHASES, 0.0)
    with open(path) as f:
        for line in f:
            for name, seconds in json.loads(line)["seconds"].items():
                total[name] = total.get(name, 0.0) + seconds
    return total
