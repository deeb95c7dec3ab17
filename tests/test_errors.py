"""Bad input, kind by kind (issue 11): one line on stderr, exit code 2, in seconds, nothing written.

Most cases run `tunedml` in this process (`main([...])`, imports paid once); a few run it as a
subprocess, as a user would, where only a fresh process shows the behaviour (argparse's output, an
unreachable model hub, SIGTERM). "Nothing written" means: the working directory (where the default
results folder and database would go) and the named places stay as they were, no MLflow database
is created, and Ray was never started.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tunedml.cli import main

REPO = Path(__file__).resolve().parents[1]
SPACES = REPO / "search_spaces"
CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
pytestmark = pytest.mark.timeout(300)  # a check that hangs fails the test instead of the suite


def has_gpu() -> bool:
    import torch

    return torch.cuda.device_count() > 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tunedml(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    """`tunedml` as a subprocess; a hang past ``timeout`` fails the test."""
    full = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", **(env or {})}
    full = {k: v for k, v in full.items() if v is not None}
    return subprocess.run(
        [sys.executable, "-m", "tunedml.cli", *args], capture_output=True, text=True, env=full, cwd=cwd, timeout=timeout
    )


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    """An empty working directory: the default results folder and mlflow.db would land here."""
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


@pytest.fixture
def refused(work, capsys):
    """Run `tunedml ARGS` in this process; assert it refused with one line naming every fragment,
    and that nothing was written."""

    def run(*args: str, fragments: tuple[str, ...] = (), unchanged: tuple[Path, ...] = ()) -> str:
        before = {p: sorted(p.rglob("*")) if p.is_dir() else p.exists() for p in (work, *unchanged)}
        code = main(list(args))
        out, err = capsys.readouterr()
        assert code == 2, err
        assert out == "" and err.count("\n") == 1 and err.startswith(f"tunedml {args[0]}: error: "), err
        assert "Traceback" not in err
        for fragment in fragments:
            assert fragment in err, (fragment, err)
        after = {p: sorted(p.rglob("*")) if p.is_dir() else p.exists() for p in (work, *unchanged)}
        assert after == before, "something was written"
        assert not ray_started(), "Ray was started"
        return err.strip()

    return run


def ray_started() -> bool:
    ray = sys.modules.get("ray")
    return bool(ray and ray.is_initialized())


@pytest.fixture
def search(work, data_dir, tiny_roberta):
    """The arguments of a small search that would run, with a database in the working directory."""

    def args(*extra: str, dataset: str = "sst2", space: str = str(SPACES / "cce.yaml")) -> list[str]:
        return [
            "search",
            "--datasets",
            dataset,
            "--data-dir",
            data_dir,
            "--model",
            tiny_roberta,
            "--space",
            space,
            "--trials",
            "2",
            "--set",
            "data.k=4",
            "--tracking-uri",
            str(work / "mlflow.db"),
            *extra,
        ]

    return args


@pytest.fixture
def run_config(tmp_path, data_dir) -> str:
    path = tmp_path / "best.yaml"
    path.write_text(f"data:\n  dataset: sst2\n  data_dir: {data_dir}\n  k: 4\ntrain:\n  epochs: 1\n")
    return str(path)


# ----------------------------------------------------------------- 1. requests that can never be granted


def test_search_asking_more_cpus_than_the_machine_has(refused, search):
    msg = refused(*search("--cpus-per-trial", str(CPUS * 50)))
    assert f"--cpus-per-trial {CPUS * 50} can never be granted: this machine has {CPUS} CPUs" in msg


@pytest.mark.skipif("has_gpu()")
def test_search_asking_a_gpu_on_a_machine_without_one(refused, search):
    refused(*search("--gpus-per-trial", "1"), fragments=("--gpus-per-trial 1 can never be granted", "0 GPUs"))
    refused(*search("--gpus-per-trial", "0.25"), fragments=("--gpus-per-trial 0.25 can never be granted",))


def test_search_asking_more_at_once_than_fits(refused, search):
    at_once = CPUS * 2
    refused(
        *search("--trials", str(at_once), "--concurrency", str(at_once)),
        fragments=(f"--concurrency {at_once} needs {at_once} CPUs", f"this machine has {CPUS} CPUs"),
    )
    refused(*search("--concurrency", "3"), fragments=("--concurrency 3 is more than --trials 2",))


def test_gpu_requests_ray_cannot_place(refused, search):
    refused(*search("--gpus-per-trial", "1.5"), fragments=("more than one GPU must be a whole number",))
    refused(*search("--cpus-per-trial", "0.00001"), fragments=("steps of 0.0001",))


@pytest.mark.skipif("has_gpu()")
def test_cuda_device_without_a_gpu_request(refused, search):
    refused(
        *search("--set", "train.device=cuda"),
        fragments=("train.device=cuda with --gpus-per-trial auto (no GPU on this machine)",),
    )
    refused(
        *search("--set", "train.device=cuda", "--gpus-per-trial", "0"),
        fragments=("train.device=cuda with --gpus-per-trial 0: Ray hides the GPUs",),
    )


# ----------------------------------------------------------------- 2. unwritable or unreachable places


@pytest.mark.parametrize("command", ["search", "ui", "retrain"])
def test_tracking_store_that_cannot_be_created(refused, search, run_config, command):
    uri = "sqlite:////proc/tunedml-x.db"
    args = {
        "search": search()[:-2],
        "ui": ["ui"],
        "retrain": ["retrain", "--config", run_config, "--baseline", "defaults"],
    }[command]
    refused(*args, "--tracking-uri", uri, fragments=(f"cannot use MLflow tracking URI {uri}: cannot write in /proc",))


@pytest.mark.parametrize("command", ["best", "report"])
def test_reading_commands_create_no_database(refused, work, command):
    db = work / "nothing.db"
    args = ["best", "--dataset", "sst2"] if command == "best" else ["report", "--out", str(work / "out")]
    refused(*args, "--tracking-uri", str(db), fragments=(f"nothing recorded at sqlite:///{db}", "does not exist"))
    refused(*args, "--tracking-uri", "sqlite:////proc/tunedml-x.db", fragments=("/proc/tunedml-x.db does not exist",))


def test_tracking_store_that_is_a_folder_or_not_a_database(refused, search, work, tmp_path):
    refused(*search()[:-2], "--tracking-uri", f"sqlite:///{tmp_path}", fragments=(f"{tmp_path} is a folder",))
    text = tmp_path / "notes.db"
    text.write_text("not a database")
    refused(*search()[:-2], "--tracking-uri", str(text), fragments=(f"{text} is not an SQLite database",))
    assert text.read_text() == "not a database"


def test_database_server_that_does_not_answer(refused, search):
    uri = f"postgresql://user@127.0.0.1:{free_port()}/mlflow"
    refused(*search()[:-2], "--tracking-uri", uri, fragments=(f"cannot reach MLflow at {uri}", "refused"))


def test_storage_that_cannot_be_written(refused, search, tmp_path):
    refused(
        *search("--storage", "/proc/tunedml-results"), fragments=("--storage /proc/tunedml-results: cannot create",)
    )
    file = tmp_path / "results.txt"
    file.write_text("")
    refused(*search("--storage", str(file)), fragments=(f"--storage {file}: is an existing file",))
    refused(*search("--storage", str(file / "sub")), fragments=(f"{file} is a file",))
    refused(*search("--storage", "ftp://host/results"), fragments=("unknown scheme 'ftp'", "s3://"))


def test_report_out_and_save_model_that_cannot_be_written(refused, work, tmp_path, run_config):
    db = work / "mlflow.db"
    file = tmp_path / "taken"
    file.write_text("")
    refused(
        "retrain",
        "--config",
        run_config,
        "--baseline",
        "defaults",
        "--save-model",
        str(file),
        "--tracking-uri",
        str(db),
        fragments=(f"--save-model {file}: is an existing file",),
    )
    refused(
        "retrain",
        "--config",
        run_config,
        "--baseline",
        "defaults",
        "--save-model",
        "/proc/tunedml-model",
        "--tracking-uri",
        str(db),
        fragments=("--save-model /proc/tunedml-model: cannot create",),
    )
    import sqlite3

    sqlite3.connect(db).close()  # an empty database: report reads it
    refused("report", "--out", str(file), "--tracking-uri", str(db), fragments=(f"--out {file}: is an existing file",))
    refused("report", "--out", "/proc/tunedml-report", "--tracking-uri", str(db), fragments=("cannot create",))


# ----------------------------------------------------------------- 3. nothing recorded before the inputs are checked


def test_one_class_dataset_stops_before_mlflow_and_ray(refused, search, tmp_path):
    data = tmp_path / "one.csv"
    data.write_text("text,label\n" + "".join(f"text {i},yes\n" for i in range(40)))
    args = search(dataset=str(data))
    i = args.index("--data-dir")
    del args[i : i + 2]  # a file is no task of the folder: --data-dir would be refused as unused
    refused(*args, fragments=("only one class ('yes')",))


def test_resume_of_a_search_that_does_not_exist(refused, search, work):
    refused(
        *search("--resume", "--name", "nothere", "--storage", str(work / "results")),
        fragments=("--resume --name nothere: no search to resume",),
    )
    refused(*search("--resume", "--storage", str(work / "results")), fragments=("--resume: no search sst2-cce-*",))


@pytest.mark.parametrize(
    "address, fragment",
    [
        ("http://127.0.0.1:8265", "unknown scheme 'http'"),
        ("ray//host", "not an address"),
        ("ray://127.0.0.1:{port}", "no Ray cluster answers"),
        ("127.0.0.1:{port}", "no Ray cluster answers"),
    ],
)
def test_address_that_cannot_be_a_ray_cluster(refused, search, address, fragment):
    address = address.format(port=free_port())
    refused(*search("--address", address), fragments=(f"--address {address}", fragment))


# ----------------------------------------------------------------- 4. names that escape


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", ".", "", "with space", "-rf", "x" * 201, "/abs"])
def test_search_name_is_one_plain_folder_name(refused, search, name):
    refused(*search(f"--name={name}"), fragments=(f"--name {name!r}: not a valid name",))


def test_names_that_would_collide(refused, search, work):
    (work / "results" / "taken").mkdir(parents=True)
    refused(
        *search("--name", "taken", "--storage", str(work / "results")),
        fragments=("--name taken: a search of that name is already in", "--resume --name taken"),
    )
    refused(*search("--name", "both", dataset="sst2,trec"), fragments=("--name names one search; with 2 datasets",))
    refused(*search(dataset="sst2,sst2"), fragments=("--datasets lists sst2 twice",))


# ----------------------------------------------------------------- 5. draws checked for every dataset, first


def test_every_dataset_is_checked_before_the_first_search(refused, search):
    args = search(dataset="sst2,trec")
    args[args.index("data.k=4")] = "data.k=50"
    refused(*args, fragments=("trec: class 'ABBR'", "k=50 needs 100", "lower data.k"))


def test_impossible_draw_of_a_single_dataset_is_exit_2(refused, search):
    args = search()
    args[args.index("data.k=4")] = "data.k=5000"
    refused(*args, fragments=("sst2: class", "k=5000 needs 10000"))


def test_draw_at_the_largest_value_the_space_searches(refused, search, tmp_path):
    space = tmp_path / "wide_k.yaml"
    space.write_text("loss.name: none\ntrain.epochs: 1\ndata.k: {categorical: [2, 60, 4]}\n")
    args = search(dataset="trec", space=str(space))
    i = args.index("--set")
    del args[i : i + 2]
    refused(*args, fragments=("trec: class 'ABBR'", "k=60", f"{space} searches data.k=60"))


def test_batches_per_class_the_draw_cannot_give_at_the_spaces_extremes(refused, search):
    args = search(space=str(SPACES / "recipes.yaml"))
    args[args.index("data.k=4")] = "data.k=8"  # a batch of 32 takes 16 of each of sst2's two classes
    refused(
        *args,
        fragments=(
            "sst2: class 'negative' has 8 examples in the training draw; a batch of 32 takes 16 of each class",
            "recipes.yaml searches",
            "train.batch_size=32",
            "data.sampler=m_per_class",
        ),
    )


# ----------------------------------------------------------------- 6. a model that cannot be loaded


def test_folder_without_a_model(refused, search, tmp_path, tiny_roberta, data_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    refused(*search("--model", str(empty)), fragments=(f"{empty} has no config.json", "--model minilm"))
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text(Path(tiny_roberta, "config.json").read_text())
    refused(
        "train",
        "--dataset",
        "sst2",
        "--data-dir",
        data_dir,
        "--model",
        str(no_weights),
        fragments=(f"{no_weights} has no weights",),
    )
    file = tmp_path / "model.bin"
    file.write_text("")
    refused(
        "train",
        "--dataset",
        "sst2",
        "--data-dir",
        data_dir,
        "--model",
        str(file),
        fragments=("is a file, not a model folder",),
    )


def test_hub_id_offline(refused, search, run_config, work, capsys):
    refused(
        *search("--model", "roberta-base"), fragments=("model.name 'roberta-base'", "HF_HUB_OFFLINE", "--model minilm")
    )
    # retrain knows its models once it has read its configurations (the tracking store is opened for that)
    code = main(
        [
            "retrain",
            "--config",
            run_config,
            "--baseline",
            "defaults",
            "--model",
            "roberta-base",
            "--tracking-uri",
            str(work / "m.db"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "model.name 'roberta-base'" in err and "Hugging Face cache" in err
    assert not ray_started()


def test_hub_id_without_network(work, data_dir):
    """No network: the hub endpoint refuses; one line in seconds instead of a minute of retries.
    (A subprocess: the hub's endpoint is read when huggingface_hub is imported.)"""
    endpoint = f"http://127.0.0.1:{free_port()}"
    args = ["--dataset", "sst2", "--data-dir", data_dir, "--model", "no-such-org/no-such-model"]
    run = tunedml("train", *args, cwd=work, timeout=60, env={"HF_HUB_OFFLINE": None, "HF_ENDPOINT": endpoint})
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
    assert f"{endpoint} cannot be reached (Connection refused)" in run.stderr and "--model minilm" in run.stderr
    assert list(work.iterdir()) == []


# ----------------------------------------------------------------- 7. options accepted, then ignored


@pytest.mark.skipif("has_gpu()")
def test_retrain_gpu_request_without_a_gpu(refused, run_config, work):
    refused(
        "retrain",
        "--config",
        run_config,
        "--baseline",
        "defaults",
        "--gpus-per-draw",
        "1",
        "--tracking-uri",
        str(work / "m.db"),
        fragments=("--gpus-per-draw 1 can never be granted: this machine has", "0 GPUs"),
    )


def test_retrain_cpu_and_concurrency_requests_beyond_the_machine(refused, run_config, work):
    db = str(work / "m.db")
    refused(
        "retrain",
        "--config",
        run_config,
        "--baseline",
        "defaults",
        "--cpus-per-draw",
        str(CPUS * 50),
        "--tracking-uri",
        db,
        fragments=(f"--cpus-per-draw {CPUS * 50} can never be granted",),
    )
    refused(
        "retrain",
        "--config",
        run_config,
        "--baseline",
        "defaults",
        "--concurrency",
        str(CPUS + 1),
        "--seeds",
        str(CPUS + 1),
        "--tracking-uri",
        db,
        fragments=(f"--concurrency {CPUS + 1} needs {CPUS + 1} CPUs",),
    )
    refused(
        "retrain",
        "--config",
        run_config,
        "--baseline",
        "defaults",
        "--concurrency",
        "2",
        "--address",
        "auto",
        "--tracking-uri",
        db,
        fragments=("--concurrency has no effect on a cluster",),
    )


def test_retrain_concurrency_beyond_the_draws(work, run_config, capsys):
    """Known only once the configuration is read (the tracking store is opened for that)."""
    code = main(
        [
            "retrain",
            "--config",
            run_config,
            "--baseline",
            "defaults",
            "--seeds",
            "1",
            "--concurrency",
            "3",
            "--cpus-per-draw",
            "0.1",
            "--tracking-uri",
            str(work / "m.db"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--concurrency 3 is more than the 2 draws to train" in err
    assert not ray_started()


def test_retrain_impossible_draw(work, run_config, capsys):
    code = main(
        [
            "retrain",
            "--config",
            run_config,
            "--baseline",
            "defaults",
            "--set",
            "data.k=5000",
            "--tracking-uri",
            str(work / "m.db"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "k=5000 needs 10000" in err and "(the best configuration)" in err


# ----------------------------------------------------------------- 8. port numbers


@pytest.mark.parametrize("value", ["99999", "-1", "0", "http", "5000.5"])
def test_ui_port_out_of_range(work, capsys, value):
    with pytest.raises(SystemExit) as exit_:
        main(["ui", "--port", value])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith("tunedml ui: error: argument --port: ") and "valid: an integer in 1..65535" in err


def test_argparse_errors_are_one_line_from_the_shell(work):
    run = tunedml("ui", "--port", "99999", cwd=work, timeout=60)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr == (
        "tunedml ui: error: argument --port: 99999 is not a port number; valid: an integer in "
        "1..65535 (see tunedml ui --help)\n"
    )
    run = tunedml("search", "--datasets", "sst2", cwd=work, timeout=60)  # --space is required
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "--space" in run.stderr


# ----------------------------------------------------------------- 9. what is given is used or refused (issue 26)
# Each case below ran to the end with exit 0 before (or ended in a traceback): the value was dropped,
# replaced by a default, or trained on. The runs are made cheap (tiny model, a few steps), so that a
# case that is not refused finishes quickly and fails its test.


@pytest.fixture
def train(tiny_roberta):
    """The arguments of a `tunedml train` that would run in seconds."""

    def args(*extra: str, dataset: str = "sst2") -> list[str]:
        return [
            "train",
            "--dataset",
            dataset,
            "--model",
            tiny_roberta,
            "--set",
            "train.steps=1",
            "--set",
            "data.k=2",
            *extra,
        ]

    return args


@pytest.mark.parametrize("option, value", [("--dataset", ""), ("--model", ""), ("--config", ""), ("--data-dir", " ")])
def test_blank_option_is_not_taken_for_the_default(refused, train, option, value):
    # was: `--dataset ""` trained on sst2, `--model ""` on minilm, `--config ""` without the file
    refused(
        *train(option, value), fragments=(f"{option} {value!r}: an empty value; give one, or leave the option out",)
    )


@pytest.mark.parametrize("option", ["--tracking-uri", "--out"])
def test_blank_place_is_not_taken_for_the_default(refused, work, option):
    db = work / "m.db"
    import sqlite3

    sqlite3.connect(db).close()
    args = {
        "--tracking-uri": ["report", "--tracking-uri", "", "--out", str(work / "r")],
        "--out": ["report", "--tracking-uri", str(db), "--out", ""],
    }[option]
    refused(*args, fragments=(f"{option} '': an empty value",))


def test_blank_environment_variable(refused, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "  ")  # was: a traceback from MLflow's file store, exit 1
    refused("best", "--dataset", "sst2", fragments=("$MLFLOW_TRACKING_URI='  ' is blank; unset it or give a value",))


@pytest.mark.parametrize(
    "line, fragment",
    [
        ("data:\n  data_dir: ''\n", "data.data_dir='' is blank; leave it out (or null) for its default"),
        ("model:\n  name: '  '\n", "model.name='  ' is blank"),
        ("data:\n  text_column: ''\n", "data.text_column='' is blank"),
    ],
)
def test_blank_value_in_a_config(refused, train, tmp_path, line, fragment):
    config = tmp_path / "blank.yaml"
    config.write_text(line)
    refused(*train("--config", str(config)), fragments=(f"{config}: {fragment}",))


def test_empty_name_in_a_list_of_datasets(refused, search):
    refused(*search(dataset=","), fragments=("--datasets ',': an empty name in the list",))  # was: exit 0, no search
    refused(*search(dataset="sst2,,trec"), fragments=("--datasets 'sst2,,trec': an empty name",))


def write_rows(path: Path, rows: list[dict]) -> None:
    """``rows`` as JSONL, CSV or Parquet by the file's suffix (None: a missing cell)."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps({k: v for k, v in r.items() if v is not None}) + "\n" for r in rows))
    elif path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path)


def good_rows(n: int = 40, labels: tuple = ("neg", "pos")) -> list[dict]:
    return [{"text": f"example number {i} of class {labels[i % 2]}", "label": labels[i % 2]} for i in range(n)]


@pytest.mark.parametrize(
    "split, fmt, row, fragment",
    [
        ("train", "jsonl", {"text": None}, "row 4 has no text (column 'text' is missing or null)"),
        ("train", "csv", {"text": ""}, "row 4 has no text"),  # an empty CSV cell reads as missing
        ("test", "jsonl", {"text": "   "}, "row 4: the text in column 'text' is empty"),
        ("dev", "parquet", {"text": None}, "row 4 has no text"),
        ("test", "csv", {"label": None}, "row 4 has no label"),
    ],
)
def test_rows_without_a_text_or_label(refused, train, tmp_path, split, fmt, row, fragment):
    folder = tmp_path / "rows"
    folder.mkdir()
    if split != "train":
        write_rows(folder / "train.jsonl", good_rows())
    rows = good_rows()
    rows[3] = {**rows[3], **row}
    write_rows(folder / f"{split}.{fmt}", rows)
    where = folder / f"{split}.{fmt}"
    refused(*train(dataset=str(folder)), fragments=(f"{where}: {fragment}",))


def test_two_files_of_one_split(refused, train, tmp_path):
    folder = tmp_path / "two"  # was: train.jsonl read, train.csv dropped
    folder.mkdir()
    write_rows(folder / "train.csv", good_rows())
    write_rows(folder / "train.jsonl", good_rows())
    refused(*train(dataset=str(folder)), fragments=(f"{folder}: train.csv and train.jsonl both hold the train split",))


def test_texts_that_are_not_strings(refused, train, tmp_path):
    data = tmp_path / "numbers.jsonl"  # the text column holds ids: the wrong column, trained on as '123'
    write_rows(data, [{"text": 100 + i, "label": i % 2} for i in range(40)])
    refused(*train(dataset=str(data)), fragments=("row 1: text 100 in column 'text' is not a string (int)",))


@pytest.mark.parametrize(
    "labels, fragment",
    [
        (("0", "1", "yes"), "labels mix numbers ('0', '1') and words ('yes')"),
        (("pos", "neg", "pos "), "labels 'pos' and 'pos ' differ only in spaces around them"),
    ],
)
def test_labels_of_more_than_one_kind(refused, train, tmp_path, labels, fragment):
    data = tmp_path / "labels.csv"  # was: a third class trained on
    write_rows(data, [{"text": f"example {i}", "label": labels[i % 3]} for i in range(60)])
    refused(*train(dataset=str(data)), fragments=(fragment,))


def test_text_labels_outside_labels_json(refused, train, tmp_path):
    folder = tmp_path / "named"  # was: labels.json ignored, the classes named by the rows
    folder.mkdir()
    (folder / "labels.json").write_text('["negative", "positive"]')
    write_rows(folder / "train.jsonl", good_rows(labels=("neg", "pos")))
    refused(*train(dataset=str(folder)), fragments=("label 'neg' is not one of labels.json's 'negative', 'positive'",))


@pytest.mark.parametrize(
    "sets, fragment",
    [
        (["data.text_column=sentence"], "data.text_column=sentence does nothing with data.dataset=sst2"),
        (
            ["data.folds=3"],
            "data.folds=3 does nothing with data.protocol=kshot; it applies only with data.protocol=kfold",
        ),
        (["data.test_size=50"], "data.test_size=50 does nothing with data.protocol=kshot, data.dataset=sst2"),
        (["inference.mix_weight=0.3"], "inference.mix_weight=0.3 does nothing with inference.mode=head"),
        (["loss.name=supcon", "train.proxy_lr=0.1"], "train.proxy_lr=0.1 does nothing with loss.name=supcon"),
        (["adversarial.mode=fgm", "adversarial.steps=5"], "adversarial.steps=5 does nothing with adversarial.mode=fgm"),
        (["data.protocol=kfold", "data.k=4"], "data.k=4 does nothing with data.protocol=kfold"),
    ],
)
def test_a_value_the_run_does_not_use(refused, train, sets, fragment):
    args = train()
    del args[args.index("data.k=2") - 1 : args.index("data.k=2") + 1]
    refused(*args, *(x for s in sets for x in ("--set", s)), fragments=(f"--set: {fragment}", "leave it out"))


def test_an_unused_value_in_a_config_file_or_a_flag(refused, train, tmp_path, data_dir):
    config = tmp_path / "kshot.yaml"
    config.write_text("data:\n  folds: 3\n")
    refused(*train("--config", str(config)), fragments=(f"{config}: data.folds=3 does nothing",))
    data = tmp_path / "file.csv"
    write_rows(data, good_rows())
    refused(
        *train("--data-dir", data_dir, dataset=str(data)),
        fragments=("--data-dir: data.data_dir=", "does nothing with data.dataset=", "only with a registered task"),
    )


def test_a_default_value_or_the_environments_folder_is_not_refused(
    work, train, tmp_path, data_dir, monkeypatch, capsys
):
    """A full config (every key, unused ones at their defaults, as `tunedml best` writes it) goes in;
    so does $TUNEDML_DATA_DIR with a data file, which it does not serve."""
    from tunedml.config import build_config

    full = tmp_path / "full.yaml"
    full.write_text(build_config(sets=["train.steps=1", "data.k=2"]).to_yaml())
    data = tmp_path / "file.csv"
    write_rows(data, good_rows())
    monkeypatch.setenv("TUNEDML_DATA_DIR", data_dir)
    assert main(train("--config", str(full), dataset=str(data))) == 0, capsys.readouterr().err


def test_an_unused_value_in_a_search(refused, search, tmp_path):
    refused(
        *search("--set", "data.folds=3"),
        fragments=("data.folds=3 does nothing with data.protocol=kshot", "no branch of the space uses it"),
    )
    space = tmp_path / "fixed.yaml"
    space.write_text("loss.name: none\ntrain.steps: 2\ninference.proxy_scale: 8.0\n")
    refused(
        *search(space=str(space)), fragments=(f"{space}: inference.proxy_scale=8.0 does nothing", "fixed in this space")
    )


def test_a_value_used_by_one_dataset_of_a_search_is_not_refused(search, tmp_path, capsys):
    """--data-dir serves sst2 only; with a data file beside it, it is used: the search is not refused
    for it (it goes on to refuse the file's single class, which shows it got that far)."""
    data = tmp_path / "one.csv"
    data.write_text("text,label\n" + "".join(f"text {i},yes\n" for i in range(40)))
    assert main(search(dataset=f"sst2,{data}")) == 2
    assert "only one class ('yes')" in capsys.readouterr().err


def test_retrain_bootstrap_resamples_without_the_bootstrap_interval(refused, run_config, work):
    refused(
        "retrain",
        "--config",
        run_config,
        "--baseline",
        "defaults",
        "--bootstrap",
        "500",
        "--tracking-uri",
        str(work / "m.db"),
        fragments=("--bootstrap 500 does nothing with --interval t",),
    )


def test_retrain_config_with_an_unused_value(work, tmp_path, data_dir, capsys):
    config = tmp_path / "best.yaml"
    config.write_text(f"data:\n  dataset: sst2\n  data_dir: {data_dir}\n  k: 4\n  folds: 3\ntrain:\n  steps: 1\n")
    code = main(
        [
            "retrain",
            "--config",
            str(config),
            "--baseline",
            "defaults",
            "--seeds",
            "1",
            "--concurrency",
            "1",
            "--tracking-uri",
            str(work / "m.db"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"{config}: data.folds=3 does nothing" in err, err
    assert not ray_started()


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("data:\n  k: 4\n  k: 8\n", "line 3 is not valid YAML (key 'k' is given twice, first on line 2; keep one)"),
        ("data:\n  k: 4\ndata.k: 8\n", "data.k is given twice (4 and 8), nested and dotted; keep one"),
        ("loss:\n  name: proxy_anchor\n  margin: 0.1\nloss.margin: 0.3\n", "loss.margin is given twice"),
    ],
)
def test_one_key_twice_in_one_file(refused, train, tmp_path, text, fragment):
    config = tmp_path / "twice.yaml"
    config.write_text(text)
    refused(*train("--config", str(config)), fragments=(f"{config}: {fragment}",))


def test_one_key_twice_in_a_space(refused, search, tmp_path):
    space = tmp_path / "twice.yaml"
    space.write_text("loss.name: none\ntrain.steps: 2\ntrain.lr: 0.001\ntrain.lr: 0.01\n")
    refused(*search(space=str(space)), fragments=(f"{space}: line 4 is not valid YAML (key 'train.lr' is given twice",))


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_nan_and_infinity_for_a_count(refused, train, value):
    refused(*train("--set", f"data.k={value}"), fragments=("data.k=", "is not a int"))  # was: a traceback


def test_set_value_that_is_no_yaml(refused, train):
    refused(*train("--set", "data.k=["), fragments=("--set: data.k='[' is not a int",))  # was: a YAML traceback


@pytest.mark.skipif("has_gpu()")
def test_infinite_resource_request(refused, search):
    refused(
        *search("--gpus-per-trial", "inf"), fragments=("--gpus-per-trial inf: not a finite number",)
    )  # was: a traceback


def test_data_test_size_beyond_half_the_examples(refused, train):
    args = train(dataset="cr")  # 3771 examples: was cut to 1885 in silence
    refused(*args, "--set", "data.test_size=3000", fragments=("cr: data.test_size=3000 is more than half of its 3771",))


def test_a_device_that_is_no_device(refused, search):
    refused(
        *search("--set", "train.device=gpu"), fragments=("train.device: unknown device 'gpu'",)
    )  # was: every trial failed, exit 0


def test_more_than_the_model_has(refused, search, train):
    refused(
        *search("--set", "model.reinit_layers=3"),  # was: every trial failed, exit 0
        fragments=("model.reinit_layers=3 but model.name", "has 2 layers", "valid: 0..2"),
    )
    refused(
        *train("--set", "data.max_length=200"),  # was: trained; a longer text fails inside the encoder
        fragments=("data.max_length=200 but model.name", "holds 159 tokens per text"),
    )


def test_tracking_store_in_a_folder(refused, work, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    folder = tmp_path / "runs"
    folder.mkdir()
    refused(
        "best",
        "--dataset",
        "sst2",
        "--tracking-uri",
        str(folder),  # was: MLflow's traceback, exit 1
        fragments=(f"{folder} names a folder (an MLflow file store)", f"{folder}.db"),
    )
    refused("ui", "--tracking-uri", str(tmp_path / "new"), fragments=("names a folder",), unchanged=(tmp_path / "new",))


# ----------------------------------------------------------------- SIGTERM: recorded KILLED like Ctrl-C


@pytest.mark.slow
def test_sigterm_ends_a_search_killed_not_failed(work, tmp_path, data_dir, tiny_roberta):
    from mlflow import MlflowClient

    db = work / "mlflow.db"
    space = tmp_path / "long.yaml"
    space.write_text("loss.name: none\ntrain.lr: {loguniform: [1.0e-4, 1.0e-3]}\ntrain.epochs: 200\n")
    args = [
        "search",
        "--datasets",
        "sst2",
        "--data-dir",
        data_dir,
        "--model",
        tiny_roberta,
        "--space",
        str(space),
        "--trials",
        "2",
        "--set",
        "data.k=2",
        "--scheduler",
        "none",
        "--name",
        "term",
        "--storage",
        str(work / "results"),
        "--tracking-uri",
        str(db),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunedml.cli", *args],
        cwd=work,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 240
        client = MlflowClient(f"sqlite:///{db}")
        while time.monotonic() < deadline and proc.poll() is None:  # a trial's child run: trials are running
            time.sleep(1)
            if db.exists():
                exp = client.get_experiment_by_name("tunedml/sst2")
                if exp and any("mlflow.parentRunId" in r.data.tags for r in client.search_runs([exp.experiment_id])):
                    break
        assert proc.poll() is None, proc.communicate()[1]
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stderr
    assert "tunedml search: terminated (SIGTERM)" in stderr and "--resume --name term" in stderr
    (parent,) = client.search_runs([exp.experiment_id], "tags.`tunedml.role` = 'search'")
    assert parent.info.status == "KILLED" and "tunedml.interrupted" in parent.data.tags
    assert all(r.info.status != "RUNNING" for r in client.search_runs([exp.experiment_id]))

    # resumed with options that the saved search would ignore: refused before anything is recorded
    run = tunedml(*args, "--resume", "--trials", "5", "--sampler-seed", "3", cwd=work, timeout=120)
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
    assert (
        "--resume continues term with the options it started with; leave out --trials 5 (it has 2), --sampler-seed 3"
        in run.stderr
    )
    assert client.get_run(parent.info.run_id).info.status == "KILLED"
