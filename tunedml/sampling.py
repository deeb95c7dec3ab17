"""How training batches are drawn from a few-shot draw: random passes, or m examples per class.

Pair and proxy losses learn from the positives and negatives inside a batch. Random batches of a
multi-class draw often hold a class once or not at all (TREC has 6 classes, SST-5 has 5), so the
metric-learning literature builds batches with ``m`` examples of each class in them;
pytorch-metric-learning's :class:`~pytorch_metric_learning.samplers.MPerClassSampler` does it, and
this module only wires it to a draw. Samplers yield index arrays into the corpus, endlessly: the
trainer takes as many batches as its run has steps.

``data.sampler`` names one of :data:`SAMPLERS`; ``random`` is the sampler every run used before,
batch for batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .errors import ConfigError, DataError

Batches = Iterator[np.ndarray]  # index arrays into the corpus, one per optimizer step


def has_positive_pair(labels: np.ndarray) -> bool:
    """Whether some class has two examples or more in ``labels`` (a batch's): a positive pair."""
    return len(labels) > 1 and int(np.bincount(labels).max()) >= 2


def without_positive(labels: np.ndarray) -> int:
    """How many examples of ``labels`` (a batch's) are alone of their class: anchors that a pair or
    contrastive loss can only push away. A batch larger than the task's classes always has a
    positive pair, yet may leave several of its examples without one."""
    return int((np.bincount(labels) == 1).sum())


@dataclass(frozen=True)
class RandomBatches:
    """Passes over the draw, each in a new order from ``rng``, cut into batches (the last may be
    short): exactly the batches of :meth:`tunedml.data.TokenizedCorpus.train_batches`."""

    indices: np.ndarray
    batch_size: int

    @classmethod
    def for_draw(
        cls, indices: np.ndarray, labels: np.ndarray, label_names: list[str], batch_size: int, m: int | None
    ) -> "RandomBatches":
        return cls(indices, batch_size)

    def __call__(self, rng: np.random.Generator) -> Batches:
        while True:
            order = rng.permutation(self.indices)
            for start in range(0, len(order), self.batch_size):
                yield order[start : start + self.batch_size]


def auto_m(batch_size: int, num_classes: int) -> int | None:
    """The ``m`` of an unset ``data.m_per_class``: the batch split evenly over as many classes as
    divide it (at most the task's, and at least two examples each); None when no split exists.

    A binary task gets half the batch per class at every batch size; TREC (6 classes) with batches
    of 16 gets 4 classes of 4. So one space can search the batch size and the sampler together.
    """
    fits = [c for c in range(2, min(num_classes, batch_size // 2) + 1) if batch_size % c == 0]
    return batch_size // max(fits) if fits else None


def check_m_per_class(batch_size: int, m: int | None, source: str = "config") -> None:
    """The rules that need no data: ``m`` divides the batch into two classes or more (pml's
    sampler takes whole blocks of m; a one-class batch has no negative pairs)."""
    if m is None:
        if batch_size < 4:
            raise ConfigError(
                f"{source}: data.sampler=m_per_class with train.batch_size={batch_size}: a batch needs two "
                "classes of two examples or more (4); raise train.batch_size or use data.sampler=random"
            )
        return
    if batch_size % m:
        raise ConfigError(
            f"{source}: train.batch_size={batch_size} is not a multiple of data.m_per_class={m} "
            "(a batch holds whole blocks of m examples of a class); change either, or leave "
            "data.m_per_class unset to split the batch evenly"
        )
    if batch_size // m < 2:
        raise ConfigError(
            f"{source}: train.batch_size={batch_size} with data.m_per_class={m} holds one class per "
            f"batch: no negative pairs; use a batch of {2 * m} or more, or a smaller data.m_per_class"
        )


@dataclass(frozen=True)
class MPerClassBatches:
    """Batches of ``m`` examples from each of ``batch_size / m`` classes, drawn by
    pytorch-metric-learning's ``MPerClassSampler`` (without repeats, since every class of the draw
    has ``m`` examples or more: see :func:`check_draw`).

    A pass is as many steps as a random pass over the draw, so ``train.epochs`` means the same
    number of steps with either sampler. The sampler draws from NumPy's global generator, which a
    trainer swaps for its own seeded state while it trains (``Trainer.own_rng``).
    """

    indices: np.ndarray
    labels: np.ndarray  # of ``indices``
    batch_size: int
    m: int

    @classmethod
    def for_draw(
        cls, indices: np.ndarray, labels: np.ndarray, label_names: list[str], batch_size: int, m: int | None
    ) -> "MPerClassBatches":
        """Raises DataError when the draw cannot give these batches (see :func:`resolve_m`)."""
        return cls(indices, labels, batch_size, resolve_m(batch_size, m, labels, label_names))

    def __call__(self, rng: np.random.Generator) -> Batches:
        from pytorch_metric_learning.samplers import MPerClassSampler

        steps = math.ceil(len(self.indices) / self.batch_size)
        sampler = MPerClassSampler(
            self.labels, self.m, batch_size=self.batch_size, length_before_new_iter=steps * self.batch_size
        )
        while True:
            positions = np.fromiter(iter(sampler), dtype=np.int64)
            for start in range(0, len(positions), self.batch_size):
                yield self.indices[positions[start : start + self.batch_size]]


def resolve_m(batch_size: int, m: int | None, labels: np.ndarray, label_names: list[str]) -> int:
    """``m`` for a draw whose training labels are ``labels``: checked against the draw's classes
    and the examples of each; DataError naming what to change otherwise."""
    classes, counts = np.unique(labels, return_counts=True)
    taken = m if m is not None else auto_m(batch_size, len(classes))
    if taken is None:
        raise DataError(
            f"train.batch_size={batch_size} cannot be split evenly over 2 to {len(classes)} classes of "
            "two examples or more (data.sampler=m_per_class); use an even train.batch_size"
        )
    if taken * len(classes) < batch_size:
        fits = auto_m(batch_size, len(classes))
        raise DataError(
            f"data.m_per_class={taken} with train.batch_size={batch_size} needs {batch_size // taken} "
            f"classes per batch, but the draw has {len(classes)}; "
            + (
                f"use data.m_per_class={fits} (or leave it unset) or lower train.batch_size"
                if fits
                else "lower train.batch_size"
            )
        )
    if counts.min() < taken:
        name = label_names[int(classes[counts.argmin()])]
        given = f"data.m_per_class={taken}" if m is not None else f"a batch of {batch_size} takes {taken} of each class"
        raise DataError(
            f"class {name!r} has {counts.min()} examples in the training draw; {given}, which it cannot "
            f"meet without repeats; lower train.batch_size or data.m_per_class, or raise data.k"
        )
    return taken


Sampler = RandomBatches | MPerClassBatches
SAMPLERS: dict[str, type[RandomBatches] | type[MPerClassBatches]] = {
    "random": RandomBatches,
    "m_per_class": MPerClassBatches,
}


def build_sampler(
    name: str, indices: np.ndarray, labels: np.ndarray, label_names: list[str], batch_size: int, m: int | None = None
) -> Sampler:
    """The batches of ``data.sampler`` over a draw's training ``indices`` (``labels``: theirs);
    call the result with a generator for an endless stream of index arrays.

    Raises DataError (m_per_class) when the draw cannot give the batches asked for.
    """
    return SAMPLERS[name].for_draw(np.asarray(indices), np.asarray(labels), list(label_names), batch_size, m)
