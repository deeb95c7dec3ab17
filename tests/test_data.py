"""Datasets, few-shot draws, user files and dynamic padding, on the real SentEval files."""

from __future__ import annotations

import gzip
import json
from importlib import resources

import numpy as np
import pytest

from tunedml.data import (
    DATA_DIR_ENV,
    DEFAULT_TEST_SIZE,
    EMBEDDED,
    TASKS,
    Corpus,
    check_dataset_name,
    draw,
    fold_assignment,
    holdout,
    load_corpus,
    tokenize,
)
from tunedml.errors import DataError
from tunedml.model import load_tokenizer


@pytest.fixture(scope="module")
def sst2(data_dir) -> Corpus:
    return load_corpus("sst2", data_dir)


@pytest.fixture(scope="module")
def mr(data_dir) -> Corpus:
    return load_corpus("mr", data_dir)


@pytest.fixture(scope="module")
def trec(data_dir) -> Corpus:
    return load_corpus("trec", data_dir)


@pytest.fixture
def corpora(sst2, mr, trec) -> dict[str, Corpus]:
    return {"sst2": sst2, "mr": mr, "trec": trec}


# ---------------------------------------------------------------- registered tasks


def test_sst2_keeps_its_official_test_split(sst2):
    assert sst2.label_names == ["negative", "positive"]
    assert len(sst2.texts) == 6920 + 872 + 1821
    assert len(sst2.train_idx) == 6920  # the official dev split does not join the pool
    assert len(sst2.test_idx) == 1821
    assert set(np.unique(sst2.labels)) == {0, 1}
    pool, test = holdout(sst2, test_size=2000)
    assert np.array_equal(pool, sst2.train_idx) and np.array_equal(test, sst2.test_idx)


def test_trec_has_six_named_classes(trec):
    assert trec.label_names == list(TASKS["trec"].labels) == ["DESC", "ENTY", "ABBR", "HUM", "LOC", "NUM"]
    assert trec.num_classes == 6
    assert (len(trec.train_idx), len(trec.test_idx)) == (5452, 500)
    assert set(np.unique(trec.labels)) == set(range(6))


def test_mr_without_test_split_gets_a_fixed_seeded_hold_out(mr):
    assert mr.label_names == ["negative", "positive"]
    assert mr.test_idx is None and len(mr.train_idx) == 10662
    pool, test = holdout(mr, test_size=2000)
    assert len(test) == 2000 and len(pool) == 10662 - 2000
    assert not np.intersect1d(pool, test).size
    assert np.array_equal(holdout(mr, 2000)[1], test)  # no seed involved: always the same rows
    with pytest.raises(DataError, match=r"mr: data.test_size=100000 is more than half of its 10662 examples"):
        holdout(mr, 100_000)  # never more than half the data: a value given is refused, not cut


def test_the_default_hold_out_is_cut_to_half_a_small_task():
    cr = load_corpus("cr")  # 3771 examples: the default 2000 would leave fewer than half to draw from
    assert len(holdout(cr, DEFAULT_TEST_SIZE)[1]) == len(cr.train_idx) // 2


def test_unknown_dataset_suggests_the_closest_task():
    with pytest.raises(DataError, match=r"unknown dataset 'sst-2' \(did you mean 'sst2'\?\); valid: mr, cr"):
        check_dataset_name("sst-2")


@pytest.mark.parametrize("task", list(TASKS))
def test_every_task_loads_from_the_package_as_from_a_folder(task, data_dir):
    """No folder and no network: the embedded copy gives the folder's texts, order, labels and draws."""
    embedded, folder = load_corpus(task), load_corpus(task, data_dir)
    assert embedded.texts == folder.texts
    assert np.array_equal(embedded.labels, folder.labels)
    assert embedded.label_names == folder.label_names == list(TASKS[task].labels)
    assert np.array_equal(embedded.train_idx, folder.train_idx)
    assert (embedded.test_idx is None) == (folder.test_idx is None) == (not TASKS[task].has_test)
    if folder.test_idx is not None:
        assert np.array_equal(embedded.test_idx, folder.test_idx)
    a, b = draw(embedded, "kshot", k=4, seed=11), draw(folder, "kshot", k=4, seed=11)
    assert all(np.array_equal(x, y) for x, y in zip((a.train, a.dev, a.test), (b.train, b.dev, b.test)))
    labels_json = resources.files("tunedml").joinpath(EMBEDDED, task, "labels.json").read_text()
    assert json.loads(labels_json) == list(TASKS[task].labels)


def test_a_data_folder_takes_precedence_over_the_package(tmp_path, monkeypatch):
    def folder(name: str, text: str):
        (tmp_path / name / "sst2").mkdir(parents=True)
        rows = [{"text": f"{text} {i}", "label": i % 2} for i in range(8)]
        (tmp_path / name / "sst2" / "all.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(tmp_path / name)

    env, given = folder("env", "from the environment"), folder("arg", "from --data-dir")
    assert (
        load_corpus("sst2").texts[0] == "a stirring , funny and finally transporting re-imagining of "
        "beauty and the beast and 1930s horror films"
    )
    monkeypatch.setenv(DATA_DIR_ENV, env)
    assert load_corpus("sst2").texts[0] == "from the environment 0"
    assert load_corpus("sst2", given).texts[0] == "from --data-dir 0"


def test_the_embedded_files_are_compressed_json_lines():
    """The package ships .jsonl.gz only (about 2.3 MB for the seven tasks), each line one example."""
    root = resources.files("tunedml").joinpath(EMBEDDED)
    files = [f for task in TASKS for f in root.joinpath(task).iterdir() if f.name != "labels.json"]
    assert files and all(f.name.endswith(".jsonl.gz") for f in files)
    with root.joinpath("trec", "test.jsonl.gz").open("rb") as raw, gzip.open(raw, "rt") as lines:
        assert sum(1 for _ in lines) == 500


def test_data_dir_without_the_task_folder(tmp_path):
    with pytest.raises(DataError, match="has no folder 'sst2'"):
        load_corpus("sst2", str(tmp_path))
    with pytest.raises(DataError, match="nowhere"):
        load_corpus("sst2", str(tmp_path / "nowhere"))


# ---------------------------------------------------------------- kshot


@pytest.mark.parametrize("name, k", [("sst2", 8), ("mr", 16), ("trec", 4)])
def test_kshot_draw_is_disjoint_and_stratified(corpora, name, k):
    corpus = corpora[name]
    d = draw(corpus, "kshot", k=k, seed=1)
    assert not np.intersect1d(d.train, d.dev).size
    assert not np.intersect1d(d.train, d.test).size
    assert not np.intersect1d(d.dev, d.test).size
    per_class = [k] * corpus.num_classes
    assert np.bincount(corpus.labels[d.train], minlength=corpus.num_classes).tolist() == per_class
    assert np.bincount(corpus.labels[d.dev], minlength=corpus.num_classes).tolist() == per_class


def test_kshot_draw_is_reproducible_and_moves_with_the_seed(mr):
    a, b, c = (draw(mr, "kshot", k=8, seed=s) for s in (0, 0, 1))
    assert np.array_equal(a.train, b.train) and np.array_equal(a.dev, b.dev)
    assert not np.array_equal(np.sort(a.train), np.sort(c.train))
    assert not np.array_equal(np.sort(a.dev), np.sort(c.dev))
    assert np.array_equal(a.test, c.test)  # the hold-out test does not move with the seed


def test_hold_out_test_never_overlaps_any_draw(mr):
    test = draw(mr, "kshot", k=8, seed=0).test
    for seed in range(20):
        d = draw(mr, "kshot", k=64, seed=seed)
        assert np.array_equal(d.test, test)
        assert not np.intersect1d(np.concatenate([d.train, d.dev]), test).size


def test_kshot_asking_for_more_than_a_class_has(trec):
    # ABBR is TREC's rarest class (86 training questions)
    with pytest.raises(DataError, match=r"class 'ABBR' has 86 examples .* kshot with k=50 needs 100 .*lower data.k"):
        draw(trec, "kshot", k=50)


def test_unknown_protocol(mr):
    with pytest.raises(DataError, match=r"unknown protocol 'kshots' \(did you mean 'kshot'\?\)"):
        draw(mr, "kshots")


# ---------------------------------------------------------------- kfold


def test_folds_partition_the_data_stratified(trec):
    assignment = fold_assignment(trec, folds=5)
    assert sorted(set(assignment[trec.train_idx].tolist())) == [0, 1, 2, 3, 4, 5]  # 5 test folds and the draw part
    assert (assignment[trec.test_idx] == -1).all()  # the official test split is in no fold
    tests = [draw(trec, "kfold", folds=5, fold=f, sample_size=32).test for f in range(5)]
    parts = np.concatenate(tests + [np.flatnonzero(assignment == 5)])
    assert np.array_equal(np.sort(parts), np.sort(trec.train_idx))  # each training row in one part
    for c in range(trec.num_classes):  # every fold holds a fifth of every class (+-1)
        counts = [np.sum(trec.labels[t] == c) for t in tests]
        assert max(counts) - min(counts) <= 1


@pytest.mark.parametrize("name, sample_size", [("mr", 64), ("trec", 48)])
def test_kfold_draw_comes_from_the_training_folds(corpora, name, sample_size):
    corpus = corpora[name]
    assignment = fold_assignment(corpus, folds=4)
    d = draw(corpus, "kfold", folds=4, fold=2, sample_size=sample_size, seed=3)
    assert np.array_equal(d.test, np.flatnonzero(assignment == 2))  # the held-out fold is the test
    assert len(d.train) == len(d.dev) == sample_size
    assert not np.intersect1d(d.train, d.dev).size
    assert (assignment[d.train] != 2).all() and (assignment[d.dev] != 2).all()
    assert set(corpus.labels[d.train].tolist()) == set(range(corpus.num_classes))  # every class drawn


def test_kfold_draw_is_reproducible_and_moves_with_the_seed(mr):
    a, b, c = (draw(mr, "kfold", folds=5, fold=0, sample_size=32, seed=s) for s in (0, 0, 1))
    assert np.array_equal(a.train, b.train) and np.array_equal(a.dev, b.dev)
    assert not np.array_equal(np.sort(a.train), np.sort(c.train))
    assert np.array_equal(a.test, c.test)


@pytest.mark.parametrize("name", ["sst2", "mr"])
def test_kfold_test_folds_never_hold_what_a_search_selected_on(corpora, name):
    """A search draws fold 0 with seeds 0, 1, ... (--repeats); the final evaluation tests on every fold."""
    corpus = corpora[name]
    search = [draw(corpus, "kfold", folds=5, fold=0, sample_size=32, seed=s) for s in range(10)]
    seen = np.concatenate([np.concatenate([d.train, d.dev]) for d in search])
    final_tests = np.concatenate(
        [draw(corpus, "kfold", folds=5, fold=f, sample_size=32, seed=1000 + f).test for f in range(5)]
    )
    assert not np.intersect1d(seen, final_tests).size
    if corpus.test_idx is not None:  # the official test split is in no fold, nor in any draw
        assert not np.intersect1d(np.concatenate([final_tests, seen]), corpus.test_idx).size


def test_kfold_sample_larger_than_the_training_folds(trec):
    message = r"class '\w+' has \d+ examples in the kfold draw part; the draw needs \d+; lower data.sample_size"
    with pytest.raises(DataError, match=message):
        draw(trec, "kfold", folds=5, sample_size=5000)


# ---------------------------------------------------------------- user files

ROWS = [
    ("great fun", "pos"),
    ("dull and slow", "neg"),
    ("a joy", "pos"),
    ("boring", "neg"),
    ("loved it", "pos"),
    ("awful", "neg"),
    ("superb acting", "pos"),
    ("a mess", "neg"),
]


def write_csv(path, rows, header=("sentence", "category")):
    lines = [",".join(header)] + [f'"{t}",{label}' for t, label in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_jsonl(path, rows, text="sentence", label="category"):
    path.write_text("".join(json.dumps({text: t, label: y}) + "\n" for t, y in rows))
    return path


def assert_user_corpus(corpus: Corpus, rows=ROWS):
    assert corpus.label_names == ["neg", "pos"]  # string labels, sorted, become ids 0 and 1
    assert corpus.texts == [t for t, _ in rows]
    assert corpus.labels.tolist() == [corpus.label_names.index(y) for _, y in rows]
    assert corpus.test_idx is None


def test_csv_with_custom_columns_and_string_labels(tmp_path):
    path = write_csv(tmp_path / "reviews.csv", ROWS)
    corpus = load_corpus(str(path), text_column="sentence", label_column="category")
    assert corpus.name == "reviews"
    assert_user_corpus(corpus)


def test_jsonl_with_custom_columns(tmp_path):
    path = write_jsonl(tmp_path / "reviews.jsonl", ROWS)
    assert_user_corpus(load_corpus(str(path), text_column="sentence", label_column="category"))


def test_parquet_with_custom_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "reviews.parquet"
    pq.write_table(pa.table({"sentence": [t for t, _ in ROWS], "category": [y for _, y in ROWS]}), path)
    assert_user_corpus(load_corpus(str(path), text_column="sentence", label_column="category"))


def test_folder_with_train_and_test_files(tmp_path):
    folder = tmp_path / "my_task"
    folder.mkdir()
    write_csv(folder / "train.csv", ROWS, header=("text", "label"))
    test_rows = [("what a film", "pos"), ("terrible", "neg")]
    write_csv(folder / "test.csv", test_rows, header=("text", "label"))
    corpus = load_corpus(str(folder))
    assert corpus.name == "my_task"
    assert corpus.label_names == ["neg", "pos"]
    assert corpus.texts == [t for t, _ in ROWS + test_rows]
    assert corpus.train_idx.tolist() == list(range(8)) and corpus.test_idx.tolist() == [8, 9]
    d = draw(corpus, "kshot", k=2, seed=0)
    assert d.test.tolist() == [8, 9]
    assert (d.train < 8).all() and (d.dev < 8).all()


def test_integer_labels_with_a_labels_file(tmp_path):
    folder = tmp_path / "task"
    folder.mkdir()
    write_jsonl(folder / "all.jsonl", [(t, int(y == "pos")) for t, y in ROWS], text="text", label="label")
    (folder / "labels.json").write_text(json.dumps(["bad", "good"]))
    corpus = load_corpus(str(folder))
    assert corpus.label_names == ["bad", "good"]
    assert corpus.labels.tolist() == [int(y == "pos") for _, y in ROWS]


def test_missing_column_lists_the_columns(tmp_path):
    path = write_csv(tmp_path / "reviews.csv", ROWS)
    with pytest.raises(DataError, match=r"no text column 'text'; columns: sentence, category \(set data.text_column\)"):
        load_corpus(str(path))
    with pytest.raises(DataError, match=r"no label column 'label'.*\(set data.label_column\)"):
        load_corpus(str(path), text_column="sentence")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(DataError, match="file is empty"):
        load_corpus(str(path))


def test_one_class_only(tmp_path):
    path = write_jsonl(tmp_path / "pos.jsonl", [(t, "pos") for t, _ in ROWS], text="text", label="label")
    with pytest.raises(DataError, match="only one class \\('pos'\\); classification needs two or more"):
        load_corpus(str(path))


def test_class_smaller_than_the_draw(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", ROWS, text="text", label="label")  # 4 examples per class
    write_jsonl(tmp_path / "test.jsonl", ROWS[:2], text="text", label="label")
    corpus = load_corpus(str(tmp_path))
    assert len(draw(corpus, "kshot", k=2).train) == 4
    with pytest.raises(DataError, match=r"class 'neg' has 4 examples .* k=3 needs 6"):
        draw(corpus, "kshot", k=3)


@pytest.mark.parametrize("labels, kind", [([0.5, 1.5], "float"), ([True, False], "bool")])
def test_labels_must_be_integers_or_strings(tmp_path, labels, kind):
    rows = [(t, labels[i % 2]) for i, (t, _) in enumerate(ROWS)]
    path = write_jsonl(tmp_path / "odd.jsonl", rows, text="text", label="label")
    with pytest.raises(DataError, match=f"labels must be integers or strings, found {kind}"):
        load_corpus(str(path))


def test_unreadable_file(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"text": "fine", "label": 0}\n{"text": oops\n')
    with pytest.raises(DataError, match="cannot be read as json"):
        load_corpus(str(path))


# ---------------------------------------------------------------- tokens and batches


@pytest.fixture(scope="module")
def tokens(sst2, tiny_roberta):
    return tokenize(sst2, load_tokenizer(tiny_roberta), max_length=64)


def test_tokenize_truncates_to_max_length(tokens):
    assert tokens.lengths.max() == 64
    assert len(tokens.input_ids) == len(tokens.corpus.texts)


def test_batch_pads_to_the_longest_text_in_the_batch(tokens):
    indices = np.argsort(tokens.lengths)[[0, 100, 5000]]  # a short, a middle and a long text
    lengths = tokens.lengths[indices]
    batch = tokens.batch(indices)
    assert batch["input_ids"].shape == (3, lengths.max())
    assert batch["attention_mask"].sum(1).tolist() == lengths.tolist()
    for row, (i, n) in enumerate(zip(indices, lengths)):
        assert batch["input_ids"][row, :n].tolist() == tokens.input_ids[i].tolist()
        assert (batch["input_ids"][row, n:] == tokens.pad_token_id).all()
    assert batch["labels"].tolist() == tokens.corpus.labels[indices].tolist()


def test_train_batches_cover_the_draw_once_in_seeded_order(tokens):
    indices = np.arange(100, 150)

    def labels(seed):
        return [b["labels"] for b in tokens.train_batches(indices, 16, np.random.default_rng(seed))]

    batches = labels(0)
    assert [len(b) for b in batches] == [16, 16, 16, 2]
    assert sorted(np.concatenate(batches).tolist()) == sorted(tokens.corpus.labels[indices].tolist())
    assert all((a == b).all() for a, b in zip(batches, labels(0)))


def test_eval_batches_are_length_sorted_and_restore_order(tokens):
    indices = np.random.default_rng(0).choice(len(tokens.input_ids), size=90, replace=False)
    widths, seen = [], np.zeros(len(indices), dtype=int)
    rows: dict[int, list[int]] = {}
    for pos, batch in tokens.eval_batches(indices, batch_size=32):
        assert len(pos) <= 32
        widths.append(batch["input_ids"].shape[1])
        lengths = batch["attention_mask"].sum(1)
        assert (lengths[:-1] <= lengths[1:]).all()  # sorted within the batch
        assert lengths.max() == widths[-1]  # padded only to its own longest text
        for p, ids, n in zip(pos, batch["input_ids"], lengths):
            rows[int(p)] = ids[:n].tolist()
        seen[pos] += 1
    assert widths == sorted(widths) and widths[0] < widths[-1]
    assert (seen == 1).all()  # every position once
    for p, i in enumerate(indices):  # position p holds text indices[p]
        assert rows[p] == tokens.input_ids[i].tolist()
