"""Pre-flight checks: what a command will use exists and can be used, checked before any work.

Each check takes a second or two at most and raises a :class:`~tunedml.errors.TunedMLError`
naming the option, the value and what to pass instead, so that bad input ends in one line and
exit code 2 with nothing written: no results folder, no MLflow run, no new database file. The
checks cover the places a command writes (tracking store, ``--storage``, output folders), names
that become folders, ports, Ray addresses, the resources a trial or draw asks for, the models and
the few-shot draws.

Nothing here trusts a permission bit: root passes ``os.access`` everywhere, even in ``/proc``, so
a place is writable when a file could really be created in it.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import re
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlparse

from .errors import ConfigError, DataError, TrackingError

PROBE_TIMEOUT_S = 3  # a host that does not answer in 3 s is unreachable for a pre-flight check
HOST_PATTERN = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]")  # a name, IPv4 or [IPv6]
STORAGE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")  # what pyarrow (Ray's storage) opens
DATABASE_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}
SQLITE_HEADER = b"SQLite format 3\x00"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
MODEL_ADVICE = "pass --model minilm (embedded, no network), a local model folder, or give this machine network access"
DRAW_KEYS = ("data.protocol", "data.k", "data.sample_size", "data.folds", "data.fold", "data.seed", "data.test_size",
             "data.sampler", "data.m_per_class", "train.batch_size")  # the draw and the batches it must give
GROWING_DRAW_KEYS = ("data.k", "data.sample_size", "data.test_size")  # the larger, the harder to draw
# options check_blank_options leaves alone: `--save-model` without a folder (its const "") is the
# default folder; `--name ""` gets check_name's line, which says what a name may be
BLANK_ELSEWHERE = ("save_model", "name")
ENVIRONMENT = ("TUNEDML_DATA_DIR", "MLFLOW_TRACKING_URI", "RAY_ADDRESS")  # read where an option is left out
OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "longformer", "data2vec-text")  # positions after padding


# ----------------------------------------------------------------- blank values

def check_blank_options(args: argparse.Namespace) -> None:
    """No option or environment variable given an empty or blank value: the commands read ``""``
    as the option left out (``args.model or ...``) and would use the default in its place. An
    empty environment variable is unset, as shells write it (``TUNEDML_DATA_DIR= tunedml ...``)."""
    for dest, value in vars(args).items():
        if isinstance(value, str) and not value.strip() and dest not in BLANK_ELSEWHERE:
            raise ConfigError(f"--{dest.replace('_', '-')} {value!r}: an empty value; give one, or leave the option "
                              "out for its default")
    for name in ENVIRONMENT:
        value = os.environ.get(name)
        if value and not value.strip():
            raise ConfigError(f"${name}={value!r} is blank; unset it or give a value")


# ----------------------------------------------------------------- places to write

def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable_folder(folder: str | Path, what: str) -> None:
    """``folder`` exists and a file can be created in it, or it can be created: tried, then undone."""
    folder = Path(folder).expanduser().absolute()
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        raise ConfigError(f"{what}: cannot create {folder}: {existing} is a file")
    try:
        if existing == folder:
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".tunedml-check-"):
                pass
        else:
            os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".tunedml-check-"))
    except OSError as e:
        verb = "write in" if existing == folder else "create"
        raise ConfigError(f"{what}: cannot {verb} {folder} ({e.strerror})") from None


def check_output_folder(path: str | Path, what: str) -> None:
    """An output folder: not an existing file, and writable (or creatable)."""
    if Path(path).expanduser().is_file():
        raise ConfigError(f"{what} {path}: is an existing file; name a folder")
    check_writable_folder(path, f"{what} {path}")


def check_storage(storage: str | None) -> None:
    """``--storage``: a local folder that can be written, or a bucket URI that Ray's storage opens."""
    if not storage:
        return
    scheme = urlparse(storage).scheme
    if scheme in STORAGE_SCHEMES:
        return  # a bucket: only the run itself can tell (credentials live on the nodes)
    if scheme == "file":
        storage = urlparse(storage).path
    elif "://" in storage:
        raise ConfigError(f"--storage {storage}: unknown scheme {scheme!r}; valid: a folder, file://, "
                          + ", ".join(f"{s}://" for s in STORAGE_SCHEMES))
    check_output_folder(storage, "--storage")


def check_tracking_store(uri: str, must_exist: bool = False) -> None:
    """A local tracking store (SQLite file, file store folder) can be created and written, or for
    ``must_exist`` (commands that only read) exists; a database server answers. In a second, where
    MLflow itself retries for minutes. Other schemes are left to the tracking module's check."""
    scheme = urlparse(uri).scheme.split("+")[0]
    where = f"cannot use MLflow tracking URI {uri}"
    if scheme == "file" and not _file_store_allowed():
        folder = Path(urlparse(uri).path)
        raise TrackingError(f"{where}: {folder} names a folder (an MLflow file store), which this MLflow opens only "
                            f"with MLFLOW_ALLOW_FILE_STORE=true; name a database file, e.g. {folder}.db")
    if scheme == "sqlite":
        path = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else uri[len("sqlite://"):]
        if path not in ("", ":memory:"):
            _check_sqlite_file(Path(path), uri, where, must_exist)
    elif scheme == "file":
        folder = Path(urlparse(uri).path)
        if folder.is_file():
            raise TrackingError(f"{where}: {folder} is a file; a file store is a folder")
        if must_exist and not folder.is_dir():
            raise TrackingError(f"nothing recorded at {uri}: {folder} does not exist; run `tunedml search` first "
                                "or pass --tracking-uri")
        _writable(folder, where)
    elif scheme in DATABASE_PORTS:
        parsed = urlparse(uri)
        if parsed.hostname:
            probe(parsed.hostname, parsed.port or DATABASE_PORTS[scheme], f"cannot reach MLflow at {uri}")


def _file_store_allowed() -> bool:
    """Whether this MLflow opens a file store (newer versions refuse one unless told to)."""
    try:
        from mlflow.environment_variables import MLFLOW_ALLOW_FILE_STORE
    except ImportError:  # a version from before the switch: file stores open
        return True
    return bool(MLFLOW_ALLOW_FILE_STORE.get())


def _check_sqlite_file(path: Path, uri: str, where: str, must_exist: bool) -> None:
    if path.is_dir():
        raise TrackingError(f"{where}: {path} is a folder; name a database file, e.g. sqlite:///{path}/mlflow.db")
    if not path.exists():
        if must_exist:
            raise TrackingError(f"nothing recorded at {uri}: {path} does not exist; run `tunedml search` first "
                                "or pass --tracking-uri")
        _writable(path.parent, where)
        return
    try:
        with open(path, "rb+") as f:  # opened for writing, nothing written
            header = f.read(len(SQLITE_HEADER))
    except OSError as e:
        raise TrackingError(f"{where}: cannot write {path} ({e.strerror})") from None
    if header and header != SQLITE_HEADER:
        raise TrackingError(f"{where}: {path} is not an SQLite database")


def _writable(folder: Path, where: str) -> None:
    try:
        check_writable_folder(folder, where)
    except ConfigError as e:
        raise TrackingError(str(e)) from None


# ----------------------------------------------------------------- names, ports, addresses

def port(text: str) -> int:
    """argparse type of a TCP port to listen on: an integer in 1..65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number; valid: an integer in 1..65535") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number; valid: an integer in 1..65535")
    return value


def probe(host: str, port_number: int, what: str) -> None:
    """A TCP connection to ``host:port`` opens within PROBE_TIMEOUT_S, else ``what`` and the reason."""
    try:
        with socket.create_connection((host, port_number), timeout=PROBE_TIMEOUT_S):
            pass
    except socket.gaierror as e:
        raise ConfigError(f"{what}: {host}: {e.strerror}") from None
    except TimeoutError:
        raise ConfigError(f"{what}: {host}:{port_number} did not answer within {PROBE_TIMEOUT_S}s") from None
    except OSError as e:
        raise ConfigError(f"{what}: {host}:{port_number}: {e.strerror}") from None


def check_address(address: str | None) -> None:
    """``--address``: auto, local, ray://host:port or host:port, and something answers there."""
    if address is None or address in ("auto", "local"):
        return
    valid = "valid: auto, ray://HOST:PORT (Ray client, port 10001) or HOST:PORT (the head's GCS, port 6379)"
    scheme = urlparse(address).scheme if "://" in address else ""
    if scheme not in ("", "ray"):
        raise ConfigError(f"--address {address}: unknown scheme {scheme!r}; {valid}")
    rest = address.split("://", 1)[-1].rstrip("/")
    host, sep, port_text = rest.rpartition(":")
    if not sep:
        host, port_text = rest, "10001" if scheme else "6379"
    if not HOST_PATTERN.fullmatch(host) or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ConfigError(f"--address {address}: not an address; {valid}")
    probe(host, int(port_text), f"--address {address}: no Ray cluster answers")


def on_cluster(address: str | None) -> bool:
    """Whether Ray will join a cluster (``--address``, or RAY_ADDRESS as set by `ray job submit`)."""
    return bool(address and address != "local") or (address is None and bool(os.environ.get("RAY_ADDRESS")))


# ----------------------------------------------------------------- resources

@dataclass(frozen=True)
class Node:
    cpus: float
    gpus: float

    def __str__(self) -> str:
        return f"{_num(self.cpus)} CPUs and {_num(self.gpus)} GPUs"


def _num(x: float) -> str:
    return f"{x:g}"


def local_node() -> Node:
    """This machine as Ray sees it: the CPUs this process may use and the CUDA devices."""
    import torch

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return Node(float(cpus), float(torch.cuda.device_count()))


def join_cluster(address: str | None, verbose: bool = False) -> list[Node]:
    """Connect to the cluster (as the command will anyway) and list its live nodes."""
    import ray

    from .search import init_ray

    try:
        init_ray(address, verbose)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = address or os.environ.get("RAY_ADDRESS", "")
        raise ConfigError(f"--address {where}: cannot join the Ray cluster ({str(e).splitlines()[0][:200]})") from None
    return [Node(float(n["Resources"].get("CPU", 0)), float(n["Resources"].get("GPU", 0)))
            for n in ray.nodes() if n.get("Alive")]


def autoscaling() -> bool:
    """A cluster started by Ray's cluster launcher (it may add nodes): the head has its bootstrap
    config, which is what Ray Tune itself goes by."""
    return Path("~/ray_bootstrap_config.yaml").expanduser().exists()


@dataclass(frozen=True)
class Request:
    """What each task (a trial, a draw) asks for, how many run at once, and the options' names."""

    cpus: float
    gpus: float
    at_once: int
    cpus_option: str
    gpus_option: str
    at_once_option: str


def check_quantity(value: float | None, option: str) -> None:
    """Ray's rules for one request: a GPU share below 1 packs tasks on one GPU; above 1, whole GPUs."""
    if value is None or value == 0:
        return
    if not math.isfinite(value):
        raise ConfigError(f"{option} {value}: not a finite number")
    if value < 1e-4:
        raise ConfigError(f"{option} {_num(value)}: too small; Ray counts resources in steps of 0.0001")
    if "gpus" in option and value > 1 and value != int(value):
        raise ConfigError(f"{option} {_num(value)}: more than one GPU must be a whole number "
                          "(a fraction below 1 shares one GPU)")


def check_request(request: Request, nodes: list[Node], where: str, wait_ok: bool = False) -> None:
    """Refuse a request no node can ever grant (Ray would wait forever), or more tasks at once than
    the nodes hold (the option would be ignored). ``wait_ok``: an autoscaling cluster, where nodes
    may come: say so once on stderr and go on."""
    largest = Node(max(n.cpus for n in nodes), max(n.gpus for n in nodes)) if nodes else Node(0, 0)
    total = Node(sum(n.cpus for n in nodes), sum(n.gpus for n in nodes))
    problem = None
    if not any(n.cpus >= request.cpus and n.gpus >= request.gpus for n in nodes):
        cpus, gpus = f"{request.cpus_option} {_num(request.cpus)}", f"{request.gpus_option} {_num(request.gpus)}"
        asked = cpus if request.gpus <= largest.gpus else gpus if request.cpus <= largest.cpus else f"{cpus} with {gpus}"
        has = " has" if where == "this machine" else "'s largest node has"
        problem = f"{asked} can never be granted: {where}{has} {largest}"
    elif request.at_once > 1 and (request.at_once * request.cpus > total.cpus or request.at_once * request.gpus > total.gpus):
        problem = (f"{request.at_once_option} {request.at_once} needs {_num(request.at_once * request.cpus)} CPUs"
                   + (f" and {_num(request.at_once * request.gpus)} GPUs" if request.gpus else "")
                   + f" (each {_num(request.cpus)} CPUs" + (f", {_num(request.gpus)} GPUs" if request.gpus else "")
                   + f") but {where} has {total}; lower {request.at_once_option} or the share per task")
    if problem is None:
        return
    if wait_ok:
        print(f"tunedml: waiting for the autoscaler: {problem}; the cluster may add nodes (Ctrl-C stops)",
              file=sys.stderr, flush=True)
        return
    raise ConfigError(problem)


def check_search_resources(options: Any) -> None:
    """The search's per-trial request against this machine, or the cluster it joins."""
    check_quantity(options.cpus_per_trial, "--cpus-per-trial")
    check_quantity(options.gpus_per_trial, "--gpus-per-trial")
    if options.concurrency > options.trials:
        raise ConfigError(f"--concurrency {options.concurrency} is more than --trials {options.trials}; "
                          f"at most {options.trials} trials can run at once")
    cluster = on_cluster(options.address)
    nodes = join_cluster(options.address, options.verbose) if cluster else [local_node()]
    cpus = options.cpus_per_trial
    if cpus is None:  # the default: the CPUs shared among concurrent trials, at least 1
        cpus = max(1.0, float(min(sum(n.cpus for n in nodes) // options.concurrency, max(n.cpus for n in nodes))))
    request = Request(cpus, options.gpus_per_trial, options.concurrency, "--cpus-per-trial", "--gpus-per-trial",
                      "--concurrency")
    check_request(request, nodes, "the cluster" if cluster else "this machine", wait_ok=cluster and autoscaling())


def check_retrain_resources(options: Any) -> None:
    """Retrain's per-draw request: refused where ``retrain._plan`` would silently drop it."""
    check_quantity(options.cpus_per_draw, "--cpus-per-draw")
    check_quantity(options.gpus_per_draw, "--gpus-per-draw")
    cluster = bool(options.address)  # as retrain plans it: RAY_ADDRESS alone does not make a cluster run
    if cluster and options.parallel is not None:
        raise ConfigError("--parallel has no effect on a cluster (--address): Ray runs as many draws as the "
                          "nodes fit; leave it out, or set --cpus-per-draw / --gpus-per-draw")
    nodes = join_cluster(options.address, options.verbose) if cluster else [local_node()]
    gpus = options.gpus_per_draw
    if gpus is None:
        gpus = 1.0 if not cluster and nodes[0].gpus else 0.0
    request = Request(options.cpus_per_draw or 1.0, gpus, options.parallel or 1, "--cpus-per-draw",
                      "--gpus-per-draw", "--parallel")
    check_request(request, nodes, "the cluster" if cluster else "this machine", wait_ok=cluster and autoscaling())


# ----------------------------------------------------------------- models

@functools.lru_cache(maxsize=None)  # a model that loaded once loads again: train, search and its space share it
def check_model(name: str) -> None:
    """``model.name`` loads: its config and tokenizer (seconds), before any data or trial.

    A local folder must hold a Hugging Face model (config, weights, tokenizer); a hub id must be in
    the local cache or downloadable, which is probed in seconds instead of retried for minutes.
    """
    from .model import resolve_model

    path = resolve_model(name)
    folder = Path(path).expanduser()
    if folder.exists():
        _check_model_folder(name, folder)
        return
    if _loads(path, local_files_only=True) is None:
        return  # in the local Hugging Face cache
    offline = [v for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") if os.environ.get(v, "").lower() in ("1", "true", "yes", "on")]
    if offline:
        raise ConfigError(f"model.name {name!r}: not a local folder and not in the Hugging Face cache, and "
                          f"{offline[0]} forbids downloading it; {MODEL_ADVICE} (unset {offline[0]})")
    from huggingface_hub import constants

    endpoint = urlparse(constants.ENDPOINT)
    try:
        probe(endpoint.hostname or "huggingface.co", endpoint.port or 443, "unreachable")
    except ConfigError as e:
        reason = str(e).rsplit(": ", 1)[-1]
        raise ConfigError(f"model.name {name!r}: not a local folder and not in the Hugging Face cache, and "
                          f"{constants.ENDPOINT} cannot be reached ({reason}); {MODEL_ADVICE}") from None
    error = _loads(path, local_files_only=False)
    if error:
        raise ConfigError(f"model.name {name!r}: cannot load it from {constants.ENDPOINT} ({error}); {MODEL_ADVICE}")


@functools.lru_cache(maxsize=None)
def model_limits(name: str) -> tuple[int | None, int | None]:
    """(encoder layers, tokens per text that its position embeddings hold) from the model's config,
    None where the config does not say; read from the local copy, which :func:`check_model` made sure of."""
    from transformers import AutoConfig

    from .model import resolve_model

    try:
        config = AutoConfig.from_pretrained(resolve_model(name), local_files_only=True)
    except Exception:  # check_model reports a model that does not load
        return None, None
    layers = getattr(config, "num_hidden_layers", None)
    tokens = getattr(config, "max_position_embeddings", None)
    if tokens and getattr(config, "model_type", "") in OFFSET_POSITIONS:  # position ids start after the padding id
        tokens -= int(getattr(config, "pad_token_id", 0) or 0) + 1
    return layers, tokens


def check_model_fits(name: str, reinit_layers: int, max_length: int, source: str = "") -> None:
    """model.reinit_layers and data.max_length within what ``name`` has: more layers than it has
    fail every trial when the model is built, a longer text than its positions hold fails at the
    first long text (an index error inside the encoder), minutes into a search."""
    layers, tokens = model_limits(name)
    note = f" ({source})" if source else ""
    if isinstance(layers, int) and reinit_layers > layers:
        raise ConfigError(f"model.reinit_layers={reinit_layers} but model.name {name!r} has {layers} layers{note}; "
                          f"valid: 0..{layers}")
    if isinstance(tokens, int) and max_length > tokens:
        raise ConfigError(f"data.max_length={max_length} but model.name {name!r} holds {tokens} tokens per text "
                          f"(its position embeddings){note}; valid: 8..{tokens}")


def _check_model_folder(name: str, folder: Path) -> None:
    where = f"model.name {name!r}: {folder}"
    if not folder.is_dir():
        raise ConfigError(f"{where} is a file, not a model folder; {MODEL_ADVICE}")
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{where} has no config.json, so it holds no Hugging Face model; {MODEL_ADVICE}")
    if not any((folder / f).is_file() for f in WEIGHT_FILES):
        raise ConfigError(f"{where} has no weights ({' or '.join(WEIGHT_FILES[::2])}); {MODEL_ADVICE}")
    error = _loads(str(folder), local_files_only=True)
    if error:
        raise ConfigError(f"{where} cannot be loaded ({error}); {MODEL_ADVICE}")


def _loads(path: str, local_files_only: bool) -> str | None:
    """None when the config and the tokenizer of ``path`` load, else the reason, in one line."""
    from transformers import AutoConfig, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    try:
        AutoConfig.from_pretrained(path, local_files_only=local_files_only)
        AutoTokenizer.from_pretrained(path, local_files_only=local_files_only)
    except Exception as e:  # OSError, ValueError, KeyError: transformers' errors are of every kind
        text = str(e).strip() or type(e).__name__
        return text.splitlines()[0][:300]
    return None


def space_values(space: Any, key: str) -> set[Any]:
    """Every value a search space can give ``key``: fixed, categorical or as a choice's option."""
    values: set[Any] = set()
    if key in space.fixed:
        values.add(space.fixed[key])
    values.update(v for d in space.dists if d.key == key and d.kind == "categorical" for v in d.choices)
    for branch_key, (_, options) in space.branches.items():
        if branch_key == key:
            values.update(options)
        for sub in options.values():
            values |= space_values(sub, key)
    return values


# ----------------------------------------------------------------- few-shot draws

def draw_settings(flat: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(flat[k] for k in DRAW_KEYS)


def check_draws(corpus: Any, settings: Iterable[dict[str, Any]], source: str = "") -> None:
    """Every few-shot draw the command will make can be made from ``corpus``, and gives the batches
    its sampler asks for (as train refuses them)."""
    from .data import draw

    seen: set[tuple[Any, ...]] = set()
    for flat in settings:
        key = draw_settings(flat)
        if key in seen:
            continue
        seen.add(key)
        try:
            drawn = draw(corpus, flat["data.protocol"], k=int(flat["data.k"]), sample_size=int(flat["data.sample_size"]),
                         folds=int(flat["data.folds"]), fold=int(flat["data.fold"]), seed=int(flat["data.seed"]),
                         test_size=int(flat["data.test_size"]))
            _check_batches(corpus, drawn.train, flat)
        except DataError as e:
            raise DataError(f"{e}{f' ({source})' if source else ''}") from None


def _check_batches(corpus: Any, train: Any, flat: dict[str, Any]) -> None:
    """The draw's training examples give the batches of ``data.sampler`` (m_per_class: m of each class)."""
    from .sampling import build_sampler

    m = flat["data.m_per_class"]
    try:
        build_sampler(flat["data.sampler"], train, corpus.labels[train], corpus.label_names,
                      int(flat["train.batch_size"]), None if m is None else int(m))
    except DataError as e:
        raise DataError(f"{corpus.name}: {e}") from None


def search_draws(space: Any, driver_flat: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """The draws a search can ask for: each branch at both ends of its ranges, and every key that
    grows the draw at its largest; each with a note of where the values come from."""
    out = []
    for example in space.root.examples(0) + space.root.examples(-1):
        flat = {**driver_flat, **example}
        searched = {k: flat[k] for k in DRAW_KEYS if k in example and k not in space.root.fixed}
        out.append((flat, _note(space.path, searched)))
    largest = {k: max(int(v) for v in space.root.largest(k, driver_flat[k])) for k in GROWING_DRAW_KEYS}
    grown = {k: v for k, v in largest.items() if v != driver_flat[k]}
    out.append(({**driver_flat, **grown}, _note(space.path, grown)))
    return out


def _note(path: str, searched: dict[str, Any]) -> str:
    shown = ", ".join(f"{k}={v}" for k, v in searched.items())
    return f"{path} searches {shown}" if searched else ""


# ----------------------------------------------------------------- a whole command

def check_search(prepared: list[tuple[str, dict[str, Any], Any, Any]], options: Any, uri: str) -> None:
    """Everything `tunedml search` will use, for every dataset, before MLflow or Ray is touched:
    where it writes, the names of its searches, its models, its data and draws, and the resources
    its trials ask for (a cluster is joined to see its nodes)."""
    from .data import load_corpus
    from .search import experiment_path

    check_tracking_store(uri)
    check_storage(options.storage)
    check_address(options.address)
    datasets = [p[0] for p in prepared]
    if len(set(datasets)) < len(datasets):
        raise ConfigError(f"--dataset lists {next(d for d in datasets if datasets.count(d) > 1)} twice")
    if options.name and len(datasets) > 1:
        raise ConfigError(f"--name names one search; with {len(datasets)} datasets leave it out "
                          "(each search is named <dataset>-<space>-<time>)")
    for dataset, _, space, driver_cfg in prepared:
        _check_search_folder(*experiment_path(driver_cfg.data.dataset, space, options), options)
        devices = {driver_cfg.train.device} | space_values(space.root, "train.device")
        if options.gpus_per_trial == 0 and any(str(d).startswith("cuda") for d in devices):
            raise ConfigError("train.device=cuda with --gpus-per-trial 0: Ray hides the GPUs from a trial that asks "
                              "for none; pass --gpus-per-trial (e.g. 1, or 0.25 to share a GPU) or train.device=auto")
        flat = driver_cfg.to_flat()
        for name in sorted({driver_cfg.model.name} | space_values(space.root, "model.name"), key=str):
            check_model(str(name))
            largest = [int(max(space.root.largest(k, flat[k]))) for k in ("model.reinit_layers", "data.max_length")]
            check_model_fits(str(name), *largest, source=space.path)
        d = driver_cfg.data
        corpus = load_corpus(d.dataset, d.data_dir, d.text_column, d.label_column)
        for settings, note in search_draws(space, flat):
            check_draws(corpus, [settings], note)
    check_search_resources(options)  # on a cluster: joins it, as the search would next


def _check_search_folder(storage: str, name: str, options: Any) -> None:
    """--resume finds the search it continues; a new search does not land in an existing one's folder."""
    from .search import read_state

    if "://" in storage and not storage.startswith("file://"):
        return
    folder = Path(urlparse(storage).path if storage.startswith("file://") else storage) / name
    if options.resume:
        from ray import tune

        if not folder.is_dir() or not tune.Tuner.can_restore(str(folder)):
            raise ConfigError(f"--resume --name {name}: no search to resume in {folder.parent} "
                              "(run it first, or check --name and --storage)")
        _check_resumed_options(options, read_state(str(folder)).get("options", {}), name)
    elif folder.exists():
        raise ConfigError(f"--name {name}: a search of that name is already in {folder.parent}; continue it "
                          f"with --resume --name {name}, or choose another name")


def check_retrain_start(options: Any, uri: str, save_model: str | None) -> None:
    """What `tunedml retrain` will use, known from its options alone: where it writes (tracking
    store, --save-model), the cluster it joins and what each draw asks for."""
    check_tracking_store(uri)
    check_address(options.address)
    if save_model is not None:
        check_output_folder(save_model or "tunedml_models", "--save-model")
    check_retrain_resources(options)


def check_retrain(best: Any, baseline: Any, options: Any) -> None:
    """The rest, once its two configurations are known: their models, every draw of both (fresh
    seeds, every fold) and their number against --parallel."""
    from .data import load_corpus
    from .retrain import align_baseline, draw_configs

    baseline = align_baseline(best, baseline)  # as retrain will: the same draws for both
    configs = {c.role: draw_configs(c.run_config, options.seeds) for c in (best, baseline)}
    for candidate in (best, baseline):
        check_model(candidate.run_config.model.name)
        cfg = candidate.run_config
        check_model_fits(cfg.model.name, cfg.model.reinit_layers, cfg.data.max_length,
                         f"the {candidate.role} configuration")
    d = best.run_config.data
    corpus = load_corpus(d.dataset, d.data_dir, d.text_column, d.label_column)
    for role, cfgs in configs.items():
        check_draws(corpus, [c.to_flat() for c in cfgs], f"the {role} configuration")
    draws = sum(len(c) for c in configs.values())
    if options.parallel is not None and options.parallel > draws:
        raise ConfigError(f"--parallel {options.parallel} is more than the {draws} draws to train "
                          "(best and baseline); at most that many run at once")


RESUMED_AS_SAVED = {"trials": "--trials", "scheduler": "--scheduler", "metric": "--metric", "repeats": "--repeats",
                    "seed": "--seed", "concurrency": "--concurrency", "time_budget_s": "--time-budget",
                    "rescore": "--rescore", "rescore_draws": "--rescore-draws"}


def _check_resumed_options(options: Any, saved: dict[str, Any], name: str) -> None:
    """--resume continues a search as Ray saved it (its searcher, scheduler, sample count, budget):
    an option given another value than the search started with would be ignored, or (--repeats)
    would change the search halfway. Options left at their defaults are not compared."""
    from .search import SearchOptions

    default = SearchOptions()
    changed = [f"{flag} {getattr(options, key)} (it has {saved[key]})" for key, flag in RESUMED_AS_SAVED.items()
               if key in saved and getattr(options, key) not in (getattr(default, key), saved[key])]
    if changed:
        raise ConfigError(f"--resume continues {name} with the options it started with; leave out "
                          + ", ".join(changed))
