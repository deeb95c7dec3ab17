"""Batch samplers on real draws: the random one is the batches every run took before; m_per_class
gives every class it holds m examples, and refuses what the draw cannot give."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tunedml.data import draw, load_corpus
from tunedml.errors import DataError
from tunedml.sampling import MPerClassBatches, RandomBatches, auto_m, build_sampler, has_positive_pair, without_positive


@pytest.fixture(scope="module")
def trec(data_dir):
    return load_corpus("trec", data_dir)


def sampler_for(corpus, k: int, batch_size: int, m: int | None, name: str = "m_per_class", protocol: str = "kshot"):
    d = draw(corpus, protocol, k=k, sample_size=64, seed=0)
    return d, build_sampler(name, d.train, corpus.labels[d.train], corpus.label_names, batch_size, m)


def take(batches, n: int) -> list[np.ndarray]:
    return list(itertools.islice(batches, n))


def test_random_batches_are_the_batches_train_batches_gives(data_dir, tiny_roberta):
    from tunedml.data import tokenize
    from tunedml.model import load_tokenizer

    tokens = tokenize(load_corpus("trec", data_dir), load_tokenizer(tiny_roberta), max_length=32)
    d = draw(tokens.corpus, "kshot", k=4, seed=3)
    sampler = build_sampler("random", d.train, tokens.corpus.labels[d.train], tokens.corpus.label_names, 10)
    assert isinstance(sampler, RandomBatches)
    ours = take(sampler(np.random.default_rng(7)), 9)  # 24 examples: 3 batches a pass (10, 10, 4), 3 passes
    rng = np.random.default_rng(7)
    before = [b for _ in range(3) for b in tokens.train_batches(d.train, 10, rng)]
    assert [len(b) for b in ours] == [10, 10, 4] * 3
    for indices, batch in zip(ours, before, strict=True):
        again = tokens.batch(indices)
        assert all(np.array_equal(again[k].numpy(), batch[k].numpy()) for k in batch)


def test_m_per_class_gives_every_class_of_the_task_m_examples_when_the_batch_holds_them_all(trec):
    d, sampler = sampler_for(trec, k=16, batch_size=24, m=4)  # 6 classes of 4
    np.random.seed(0)
    batches = take(sampler(np.random.default_rng(0)), 12)  # 96 examples: 4 steps a pass, 3 passes
    for batch in batches:
        counts = np.bincount(trec.labels[batch], minlength=6)
        assert counts.tolist() == [4] * 6 and len(set(batch.tolist())) == 24  # no example twice in a batch
    assert set(np.concatenate(batches).tolist()) <= set(d.train.tolist())


def test_m_per_class_batches_hold_batch_size_over_m_classes_of_m_each(trec):
    _, sampler = sampler_for(trec, k=16, batch_size=16, m=None)  # unset: 4 classes of 4 (6 does not divide 16)
    assert isinstance(sampler, MPerClassBatches) and sampler.m == 4
    np.random.seed(1)
    seen = set()
    for batch in take(sampler(np.random.default_rng(0)), 30):
        labels = trec.labels[batch]
        classes, counts = np.unique(labels, return_counts=True)
        assert len(batch) == 16 and counts.tolist() == [4] * 4 and has_positive_pair(labels)
        seen.update(classes.tolist())
    assert seen == set(range(6))


def test_m_per_class_draws_from_numpys_global_state(trec):
    # Trainer.own_rng swaps the trainer's seeded state in: the same state, the same batches
    _, sampler = sampler_for(trec, k=16, batch_size=12, m=2)
    np.random.seed(5)
    a = take(sampler(np.random.default_rng(0)), 6)
    np.random.seed(5)
    b = take(sampler(np.random.default_rng(1)), 6)
    np.random.seed(6)
    c = take(sampler(np.random.default_rng(0)), 6)
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and not all(np.array_equal(x, y) for x, y in zip(a, c))


@pytest.mark.parametrize(
    "batch_size, classes, m",
    [(16, 2, 8), (8, 2, 4), (16, 6, 4), (32, 6, 8), (12, 6, 2), (30, 5, 6), (9, 6, 3), (5, 2, None), (6, 6, 2)],
)
def test_an_unset_m_splits_the_batch_over_as_many_classes_as_divide_it(batch_size, classes, m):
    assert auto_m(batch_size, classes) == m


@pytest.mark.parametrize(
    "k, batch_size, m, fragment",
    [
        (
            16,
            16,
            2,
            "data.m_per_class=2 with train.batch_size=16 needs 8 classes per batch, but the draw has 6; "
            "use data.m_per_class=4 (or leave it unset) or lower train.batch_size",
        ),
        (4, 36, None, "class 'DESC' has 4 examples in the training draw; a batch of 36 takes 6 of each class"),
        (4, 10, 5, "has 4 examples in the training draw; data.m_per_class=5, which it cannot meet without repeats"),
    ],
)
def test_batches_the_draw_cannot_give_are_refused_in_one_line(trec, k, batch_size, m, fragment):
    with pytest.raises(DataError) as error:
        sampler_for(trec, k=k, batch_size=batch_size, m=m)
    assert fragment in str(error.value) and "\n" not in str(error.value), str(error.value)


def test_a_kfold_draw_is_checked_by_its_smallest_class(trec):
    # kfold keeps the task's class proportions: ABBR is rare in TREC, so 64 examples hold 1 of it
    with pytest.raises(DataError, match="class 'ABBR' has 1 examples in the training draw"):
        sampler_for(trec, k=0, batch_size=12, m=2, protocol="kfold")


def test_a_positive_pair_is_a_class_twice():
    assert has_positive_pair(np.array([0, 1, 0])) and not has_positive_pair(np.array([0, 1, 2]))
    assert not has_positive_pair(np.array([3]))


def test_examples_without_a_positive_are_alone_of_their_class():
    assert without_positive(np.array([0, 1, 0, 2, 2, 3])) == 2 and without_positive(np.array([4, 4])) == 0
