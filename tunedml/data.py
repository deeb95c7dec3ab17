"""Datasets and the few-shot protocols.

A dataset becomes one :class:`Corpus` (all texts and integer labels, with the official train and
test indices when the task has them). Draws are index arrays into it, so the corpus is read and
tokenized once per (dataset, model) and every draw, seed and trial reuses it.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from .errors import DataError, unknown_choice

DATA_DIR_ENV = "TUNEDML_DATA_DIR"
EMBEDDED = "senteval"  # package folder with <task>/<split>.jsonl.gz and labels.json (see its README)
HOLDOUT_SEED = 20_240_601  # fixed: the hold-out test set must not move with the draw seed
DEFAULT_TEST_SIZE = 2000  # data.test_size's default: cut to half the examples where there are fewer
NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")  # a label written as a number (CSV cells are text)
FOLD_SEED = 7  # fixed: fold membership must not move with the draw seed
_FORMATS = {".csv": "csv", ".tsv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


@dataclass(frozen=True)
class TaskSpec:
    """A registered SentEval task: its label names; its data ship with the package (``EMBEDDED``)."""

    name: str
    labels: tuple[str, ...]
    description: str
    has_test: bool = True


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in [
        TaskSpec("mr", ("negative", "positive"), "movie review snippets", has_test=False),
        TaskSpec("cr", ("negative", "positive"), "customer product reviews", has_test=False),
        TaskSpec("subj", ("subjective", "objective"), "subjectivity of movie sentences", has_test=False),
        TaskSpec("mpqa", ("negative", "positive"), "opinion polarity of short phrases", has_test=False),
        TaskSpec("sst2", ("negative", "positive"), "binary sentiment, sentence level"),
        TaskSpec("sst5", ("very negative", "negative", "neutral", "positive", "very positive"), "5-way sentiment"),
        TaskSpec("trec", ("DESC", "ENTY", "ABBR", "HUM", "LOC", "NUM"), "coarse question types"),
    ]
}


@dataclass
class Corpus:
    """All examples of a dataset; ``train_idx``/``test_idx`` mark the official splits (test may be None)."""

    name: str
    texts: list[str]
    labels: np.ndarray
    label_names: list[str]
    train_idx: np.ndarray
    test_idx: np.ndarray | None

    @property
    def num_classes(self) -> int:
        return len(self.label_names)


@dataclass(frozen=True)
class Draw:
    """One few-shot draw: index arrays into the corpus."""

    train: np.ndarray
    dev: np.ndarray
    test: np.ndarray


# ---------------------------------------------------------------- loading


def resolve_data_dir(data_dir: str | None) -> str | None:
    return data_dir or os.environ.get(DATA_DIR_ENV) or None


def environment_data_dir() -> str | None:
    """$TUNEDML_DATA_DIR as the command line passes it on (an absolute folder), or None."""
    value = os.environ.get(DATA_DIR_ENV)
    return os.path.abspath(value) if value else None


def has_official_test(dataset: str, data_dir: str | None = None) -> bool:
    """Whether ``dataset`` brings its own test split (a registered task that has one, or a folder
    with a test.* file): then kshot does not hold out data.test_size examples."""
    root = resolve_data_dir(data_dir) if dataset in TASKS else None
    if dataset in TASKS and not root:
        return TASKS[dataset].has_test
    folder = Path(root) / dataset if root else Path(dataset)
    return folder.is_dir() and any((folder / f"test{ext}").is_file() for ext in _FORMATS)


def check_dataset_name(dataset: str) -> None:
    """Fail early (before loading any model) on a name that is neither a task nor a path."""
    if dataset not in TASKS and not Path(dataset).exists():
        raise DataError(
            "data.dataset: "
            + unknown_choice("dataset", dataset, TASKS)
            + ", or a path to a CSV/JSONL/Parquet file or folder"
        )


def load_corpus(
    dataset: str, data_dir: str | None = None, text_column: str = "text", label_column: str = "label"
) -> Corpus:
    """Load a registered task (``data_dir``, else $TUNEDML_DATA_DIR, else the package's copy) or a user file/folder."""
    check_dataset_name(dataset)
    if dataset in TASKS:
        root = resolve_data_dir(data_dir)
        if root:
            if not Path(root).is_dir():
                raise DataError(f"data dir {root!r} is not a folder (--data-dir or ${DATA_DIR_ENV})")
            folder = Path(root) / dataset
            if not folder.is_dir():
                raise DataError(f"data dir {root!r} has no folder {dataset!r} (expected {folder}/<split>.jsonl)")
            return _from_folder(folder, dataset, "text", "label", TASKS[dataset].labels)
        return _from_package(TASKS[dataset])
    path = Path(dataset)
    if path.is_dir():
        return _from_folder(path, path.name, text_column, label_column, None)
    return _from_splits(path.stem, {"all": path}, text_column, label_column, None)


_SPLITS = ("train", "dev", "validation", "test", "all")  # a corpus's rows follow this order


def _from_folder(
    folder: Path, name: str, text_column: str, label_column: str, label_names: Sequence[str] | None
) -> Corpus:
    files: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.suffix in _FORMATS:
            if p.stem in files and p.stem in _SPLITS:  # one of them would be read, the other dropped
                raise DataError(f"{folder}: {files[p.stem].name} and {p.name} both hold the {p.stem} split; keep one")
            files[p.stem] = p
    labels_file = folder / "labels.json"
    if label_names is None and labels_file.exists():
        label_names = json.loads(labels_file.read_text())
    splits = {s: files[s] for s in _SPLITS if s in files}
    if not splits:
        raise DataError(f"{folder}: no train.*, test.* or all.* file (.csv, .jsonl, .json or .parquet)")
    return _from_splits(name, splits, text_column, label_column, label_names)


def _read_table(path: Path, text_column: str, label_column: str) -> tuple[list[str], list[Any]]:
    import datasets  # heavy import, only when data is really read

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    fmt = _FORMATS.get(path.suffix)
    if fmt is None:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; valid: {', '.join(_FORMATS)}")
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")
    kwargs = {"delimiter": "\t"} if path.suffix == ".tsv" else {}
    try:
        table = datasets.load_dataset(fmt, data_files=str(path), split="train", **kwargs)
    except Exception as e:  # the datasets library wraps parse errors in many types
        raise DataError(
            f"{path}: cannot be read as {fmt} ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        ) from None
    return _columns(table, str(path), text_column, label_column)


def _columns(table: Any, where: str, text_column: str, label_column: str) -> tuple[list[str], list[Any]]:
    if len(table) == 0:
        raise DataError(f"{where}: has no rows")
    for what, col in (("text", text_column), ("label", label_column)):
        if col not in table.column_names:
            raise DataError(
                f"{where}: no {what} column {col!r}; columns: {', '.join(table.column_names)} (set data.{what}_column)"
            )
    texts, labels = list(table[text_column]), list(table[label_column])
    _check_rows(where, texts, labels, text_column, label_column)
    return texts, labels


def _check_rows(where: str, texts: list[Any], labels: list[Any], text_column: str, label_column: str) -> None:
    """Every row has a text to train on and a label: a missing or blank cell is refused, not read
    as the text 'None' or 'nan', nor as a class of its own (rows count from 1, after any header)."""
    for row, text in enumerate(texts, 1):
        if text is None:
            raise DataError(
                f"{where}: row {row} has no text (column {text_column!r} is missing or null); fill it or remove the row"
            )
        if not isinstance(text, str):
            raise DataError(
                f"{where}: row {row}: text {text!r} in column {text_column!r} is not a string "
                f"({type(text).__name__}); is data.text_column the column of texts?"
            )
        if not text.strip():
            raise DataError(
                f"{where}: row {row}: the text in column {text_column!r} is empty; fill it or remove the row"
            )
    for row, label in enumerate(labels, 1):
        missing = label is None or isinstance(label, float) and math.isnan(label)
        if missing or isinstance(label, str) and not label.strip():
            raise DataError(
                f"{where}: row {row} has no label (column {label_column!r} is "
                f"{'missing or null' if missing else 'empty'}); fill it or remove the row"
            )


def _from_package(task: TaskSpec) -> Corpus:
    """A registered task from the copy inside the package: no folder, no network, same rows as the folder.

    Read with the standard library (JSON lines, gzip), not the datasets library: the files are
    ours, small and regular, and reading them this way takes a fraction of a second.
    """
    folder = resources.files("tunedml").joinpath(EMBEDDED, task.name)
    texts: dict[str, list[str]] = {}
    labels: dict[str, list[Any]] = {}
    for split in _SPLITS:
        member = folder.joinpath(f"{split}.jsonl.gz")
        if not member.is_file():
            continue
        with member.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as lines:
            rows = [json.loads(line) for line in lines if line.strip()]
        texts[split] = [str(r["text"]) for r in rows]
        labels[split] = [r["label"] for r in rows]
    if not texts:
        raise DataError(
            f"dataset {task.name!r}: the package has no embedded copy (tunedml/{EMBEDDED}/{task.name}); "
            f"reinstall tunedml or give --data-dir / ${DATA_DIR_ENV}"
        )
    return _assemble(task.name, texts, labels, task.labels, where=f"tunedml/{EMBEDDED}/{task.name}")


def _from_splits(
    name: str, files: dict[str, Path], text_column: str, label_column: str, label_names: Sequence[str] | None
) -> Corpus:
    texts: dict[str, list[str]] = {}
    labels: dict[str, list[Any]] = {}
    for split, path in files.items():
        texts[split], labels[split] = _read_table(path, text_column, label_column)
    paths = list(files.values())
    return _assemble(name, texts, labels, label_names, where=str(paths[0] if len(paths) == 1 else paths[0].parent))


def _assemble(
    name: str,
    texts: dict[str, list[str]],
    labels: dict[str, list[Any]],
    label_names: Sequence[str] | None,
    where: str | None = None,
) -> Corpus:
    """Concatenate splits, map labels to ids, and remember which rows are official train/test."""
    where = where or name
    all_labels = [v for split in labels.values() for v in split]
    ids, names = _label_ids(all_labels, label_names, where)
    order = list(texts)
    offsets = np.cumsum([0] + [len(texts[s]) for s in order])
    span = {s: np.arange(offsets[i], offsets[i + 1]) for i, s in enumerate(order)}
    test_idx = span.get("test")
    # kshot draws its own dev set from train, so an official dev split joins the pool only when
    # there is no train/all split
    pool = [s for s in order if s in ("train", "all")] or [s for s in order if s != "test"]
    if not pool:
        raise DataError(f"{where}: only a test split; a train.* or all.* file is needed to draw from")
    corpus = Corpus(
        name, [t for s in order for t in texts[s]], ids, names, np.concatenate([span[s] for s in pool]), test_idx
    )
    if corpus.num_classes < 2 or len(np.unique(ids)) < 2:
        raise DataError(f"{where}: only one class ({names[int(ids[0])]!r}); classification needs two or more")
    return corpus


def _label_ids(values: list[Any], label_names: Sequence[str] | None, where: str) -> tuple[np.ndarray, list[str]]:
    kinds = {type(v) for v in values}
    if kinds <= {int, np.int64} and not any(isinstance(v, bool) for v in values):
        if label_names is not None:
            bad = [v for v in values if not 0 <= v < len(label_names)]
            if bad:
                raise DataError(f"{where}: label {bad[0]} outside 0..{len(label_names) - 1} of labels.json")
            return np.asarray(values, dtype=np.int64), list(label_names)
        uniq = sorted(set(values))
        index = {v: i for i, v in enumerate(uniq)}
        return np.asarray([index[v] for v in values], dtype=np.int64), [str(v) for v in uniq]
    if kinds == {str}:
        _check_label_names(sorted(set(values)), where)
        if label_names is not None:  # names as labels.json (or the task) lists them, in its order
            unknown = sorted(set(values) - set(label_names))
            if unknown:
                raise DataError(
                    f"{where}: label {unknown[0]!r} is not one of labels.json's "
                    f"{', '.join(map(repr, label_names))}; fix the rows or labels.json"
                )
            index = {v: i for i, v in enumerate(label_names)}
            return np.asarray([index[v] for v in values], dtype=np.int64), list(label_names)
        uniq = sorted(set(values))
        index = {v: i for i, v in enumerate(uniq)}
        return np.asarray([index[v] for v in values], dtype=np.int64), uniq
    shown = ", ".join(sorted(t.__name__ for t in kinds))
    raise DataError(f"{where}: labels must be integers or strings, found {shown}")


def _check_label_names(names: list[str], where: str) -> None:
    """Text labels of one kind: all numbers or all words (a CSV reads labels 0, 1 and 'yes' as
    three names), and no two that differ only in spaces around them ('pos' and 'pos ')."""
    numbers = [n for n in names if NUMBER.fullmatch(n.strip())]
    words = [n for n in names if not NUMBER.fullmatch(n.strip())]
    if numbers and words:
        raise DataError(
            f"{where}: labels mix numbers ({', '.join(map(repr, numbers[:3]))}) and words "
            f"({', '.join(map(repr, words[:3]))}); a label column holds one kind: fix the rows"
        )
    stripped: dict[str, str] = {}
    for name in names:
        other = stripped.setdefault(name.strip(), name)
        if other != name:
            raise DataError(
                f"{where}: labels {other!r} and {name!r} differ only in spaces around them; "
                "fix the rows so that each class has one name"
            )


# ---------------------------------------------------------------- few-shot protocols


def draw(
    corpus: Corpus,
    protocol: str,
    *,
    k: int = 16,
    sample_size: int = 64,
    folds: int = 5,
    fold: int = 0,
    seed: int = 0,
    test_size: int = 2000,
) -> Draw:
    """A seeded few-shot draw; the same arguments give the same indices in any process."""
    if protocol == "kshot":
        return _kshot(corpus, k, seed, test_size)
    if protocol == "kfold":
        return _kfold(corpus, sample_size, folds, fold, seed)
    raise DataError("data.protocol: " + unknown_choice("protocol", protocol, ("kshot", "kfold")))


def holdout(corpus: Corpus, test_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(pool, test): the official split, or a fixed seeded hold-out that no draw ever touches."""
    if corpus.test_idx is not None:
        return corpus.train_idx, corpus.test_idx
    pool = corpus.train_idx
    size = min(test_size, len(pool) // 2)
    if test_size > size and test_size != DEFAULT_TEST_SIZE:
        raise DataError(
            f"{corpus.name}: data.test_size={test_size} is more than half of its {len(pool)} examples "
            f"(no official test split; the rest is what draws come from); lower data.test_size to "
            f"{size} or less"
        )
    perm = np.random.default_rng(HOLDOUT_SEED).permutation(len(pool))
    return np.sort(pool[perm[size:]]), np.sort(pool[perm[:size]])


def _kshot(corpus: Corpus, k: int, seed: int, test_size: int) -> Draw:
    pool, test = holdout(corpus, test_size)
    rng = np.random.default_rng(seed)
    train, dev = [], []
    for c, name in enumerate(corpus.label_names):
        members = pool[corpus.labels[pool] == c]
        if len(members) < 2 * k:
            raise DataError(
                f"{corpus.name}: class {name!r} has {len(members)} examples in the training pool; "
                f"kshot with k={k} needs {2 * k} (k train + k dev); lower data.k"
            )
        chosen = rng.permutation(members)[: 2 * k]
        train.append(chosen[:k])
        dev.append(chosen[k:])
    return Draw(np.concatenate(train), np.concatenate(dev), test)


def fold_assignment(corpus: Corpus, folds: int) -> np.ndarray:
    """The kfold part of every example, stratified and fixed for a corpus and fold count.

    Parts 0 .. folds-1 are the test folds; part ``folds`` (the draw part) is where every draw's
    training and dev examples come from; -1 marks the official test split, which is in no part.
    A search selects on dev scores of draws from the draw part only, so no example of any test
    fold was ever seen by a search, whatever the seeds or repeats it used.
    """
    rng = np.random.default_rng(FOLD_SEED)
    assignment = np.full(len(corpus.labels), -1, dtype=np.int64)
    pool = corpus.train_idx
    for c in range(corpus.num_classes):
        members = rng.permutation(pool[corpus.labels[pool] == c])
        assignment[members] = np.arange(len(members)) % (folds + 1)
    return assignment


def _stratified_sample(corpus: Corpus, candidates: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` examples with class proportions of ``candidates``, at least one of each class."""
    labels = corpus.labels[candidates]
    counts = np.bincount(labels, minlength=corpus.num_classes)
    want = np.maximum(1, np.floor(size * counts / counts.sum()).astype(int))
    while want.sum() < size and (want < counts).any():
        want[np.argmax(counts - want)] += 1
    picked = []
    for c, n in enumerate(want):
        members = candidates[labels == c]
        if len(members) < n:
            raise DataError(
                f"{corpus.name}: class {corpus.label_names[c]!r} has {len(members)} examples "
                f"in the kfold draw part; the draw needs {n}; lower data.sample_size"
            )
        picked.append(rng.permutation(members)[:n])
    return np.concatenate(picked)


def _kfold(corpus: Corpus, sample_size: int, folds: int, fold: int, seed: int) -> Draw:
    """Train and dev from the draw part, test on test fold ``fold`` (see :func:`fold_assignment`)."""
    assignment = fold_assignment(corpus, folds)
    rng = np.random.default_rng(seed)
    part = np.flatnonzero(assignment == folds)
    train = _stratified_sample(corpus, part, sample_size, rng)
    dev = _stratified_sample(corpus, np.setdiff1d(part, train), sample_size, rng)
    return Draw(train, dev, np.flatnonzero(assignment == fold))


# ---------------------------------------------------------------- tokens and batches


@dataclass
class TokenizedCorpus:
    """Token ids of every corpus text for one tokenizer and max length, computed once."""

    corpus: Corpus
    input_ids: list[np.ndarray]
    pad_token_id: int
    tokenizer_name: str
    max_length: int

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self.input_ids))

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """Dynamic padding: pad to the longest text in this batch only."""
        seqs = [self.input_ids[i] for i in indices]
        width = max(len(s) for s in seqs)
        ids = np.full((len(seqs), width), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(seqs), width), dtype=np.int64)
        for row, s in enumerate(seqs):
            ids[row, : len(s)] = s
            mask[row, : len(s)] = 1
        return {
            "input_ids": torch.from_numpy(ids),
            "attention_mask": torch.from_numpy(mask),
            "labels": torch.from_numpy(self.corpus.labels[np.asarray(indices)]),
        }

    def train_batches(
        self, indices: np.ndarray, batch_size: int, rng: np.random.Generator
    ) -> Iterator[dict[str, torch.Tensor]]:
        order = rng.permutation(indices)
        for start in range(0, len(order), batch_size):
            yield self.batch(order[start : start + batch_size])

    def eval_batches(
        self, indices: np.ndarray, batch_size: int
    ) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
        """Length-sorted batches (little padding); yields positions in ``indices`` to restore order."""
        positions = np.argsort(self.lengths[indices], kind="stable")
        for start in range(0, len(positions), batch_size):
            pos = positions[start : start + batch_size]
            yield pos, self.batch(indices[pos])


def tokenize(corpus: Corpus, tokenizer: Any, max_length: int, name: str = "") -> TokenizedCorpus:
    encoded = tokenizer(corpus.texts, truncation=True, max_length=max_length, add_special_tokens=True)
    ids = [np.asarray(x, dtype=np.int64) for x in encoded["input_ids"]]
    return TokenizedCorpus(corpus, ids, int(tokenizer.pad_token_id), name, max_length)
