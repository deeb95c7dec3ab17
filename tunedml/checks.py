"""Pre-flight probes: what a command will use exists and can be used, checked before any work.

Each probe takes a second or two at most and raises a :class:`~tunedml.errors.TunedMLError`
naming the option, the value and what to pass instead, so that bad input ends in one line and
exit code 2 with nothing written: no results folder, no MLflow run, no new database file. The
probes cover the places a command writes (``--storage``, output folders), ports, Ray addresses,
the nodes and the resources a trial or draw asks for (GPUs chosen for ``auto``), the models and
the few-shot draws. Each command puts them together beside itself: :mod:`tunedml.search.checks`,
:mod:`tunedml.retrain.checks`; the tracking store's check is :func:`tunedml.tracking.check_tracking`.

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

from .choices import AUTO
from .errors import ConfigError, DataError

PROBE_TIMEOUT_S = 3  # a host that does not answer in 3 s is unreachable for a pre-flight check
HOST_PATTERN = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]")  # a name, IPv4 or [IPv6]
STORAGE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")  # what pyarrow (Ray's storage) opens
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
MODEL_ADVICE = "pass --model minilm (embedded, no network), a local model folder, or give this machine network access"
DRAW_KEYS = (
    "data.protocol",
    "data.k",
    "data.sample_size",
    "data.folds",
    "data.fold",
    "data.seed",
    "data.test_size",
    "data.sampler",
    "data.m_per_class",
    "train.batch_size",
)  # the draw and the batches it must give
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
            raise ConfigError(
                f"--{dest.replace('_', '-')} {value!r}: an empty value; give one, or leave the option "
                "out for its default"
            )
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


def check_output_file(path: str | Path, what: str) -> None:
    """A file to write: not a folder, and its folder writable (or creatable)."""
    file = Path(path).expanduser()
    if file.is_dir():
        raise ConfigError(f"{what} {path}: is a folder; name a file")
    if file.exists():
        try:
            with open(file, "rb+"):  # opened for writing, nothing written
                pass
        except OSError as e:
            raise ConfigError(f"{what} {path}: cannot write it ({e.strerror})") from None
        return
    check_writable_folder(file.parent, f"{what} {path}")


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
        raise ConfigError(
            f"--storage {storage}: unknown scheme {scheme!r}; valid: a folder, file://, "
            + ", ".join(f"{s}://" for s in STORAGE_SCHEMES)
        )
    check_output_folder(storage, "--storage")


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


def gpus(text: str) -> float | str:
    """argparse type of GPUs per trial or draw: ``auto`` (see :func:`auto_gpus`) or a number."""
    if text == AUTO:
        return AUTO
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of GPUs; valid: auto, 0, a share below 1 such as 0.25, or a whole number"
        ) from None


def concurrency(text: str) -> int | str:
    """argparse type of trials (or draws) at a time: ``auto`` (see :func:`auto_concurrency`) or a whole number >= 1."""
    if text == AUTO:
        return AUTO
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of trials at a time; valid: auto or a whole number >= 1"
        )
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
    from .ray_init import init_ray

    try:
        init_ray(address, verbose)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = address or os.environ.get("RAY_ADDRESS", "")
        raise ConfigError(f"--address {where}: cannot join the Ray cluster ({str(e).splitlines()[0][:200]})") from None
    return ray_nodes() or []


def ray_nodes() -> list[Node] | None:
    """The live nodes of the Ray this process already runs (its logical resources, as a test's
    ``ray.init(num_gpus=2)`` declares them), or None when Ray is not running here."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    return [
        Node(float(n["Resources"].get("CPU", 0)), float(n["Resources"].get("GPU", 0)))
        for n in ray.nodes()
        if n.get("Alive")
    ]


def nodes_for(cluster: bool, address: str | None, verbose: bool = False) -> list[Node]:
    """What a command's tasks will run on: the Ray already running in this process, else the
    cluster it joins (``cluster``), else this machine."""
    running = ray_nodes()
    if running is not None:
        return running
    return join_cluster(address, verbose) if cluster else [local_node()]


def auto_gpus(nodes: list[Node], at_once: int, unit: str, where: str) -> tuple[float, str]:
    """GPUs per task for ``auto``, and why: none where there is no GPU; one per task where the
    ``at_once`` tasks each get a GPU; else an equal share, so that they all run (1/n of a GPU for n
    tasks a GPU, rounded down to Ray's steps of 0.0001)."""
    count = int(sum(n.gpus for n in nodes))
    if count < 1:
        return 0.0, f"no GPU on {where}"
    if at_once <= count:
        return 1.0, f"{where} has {count} GPU{'s' * (count > 1)}"
    per_gpu = math.ceil(at_once / count)
    share = math.floor(10_000 / per_gpu) / 10_000
    return share, f"{at_once} {unit}s at a time share {where}'s {count} GPU{'s' * (count > 1)}"


def auto_concurrency(
    nodes: list[Node], cpus_per_task: float | None, gpus_per_task: float | str, most: int, unit: str
) -> tuple[int, str]:
    """Tasks at a time for ``--concurrency auto``, and why: one per CPU (``--cpus-per-trial`` CPUs
    each where given), no more than there are GPUs where tasks take GPUs (one each for ``auto``), and
    no more than ``most`` (the trials). One thread per task: on this project's 2-core machine two
    one-thread trials got through 100-step runs faster than one two-thread trial
    (docs/speed.md#trials-at-a-time), since a small encoder's kernels do not keep two threads busy.
    """
    per = cpus_per_task or 1.0
    by_cpu = sum(int(n.cpus // per) for n in nodes) or 1
    gpus = sum(n.gpus for n in nodes)
    if gpus_per_task == AUTO and gpus >= 1:
        at_once, why = min(by_cpu, int(gpus)), f"one per GPU, {int(gpus)} GPU{'s' * (gpus >= 2)}"
    elif gpus_per_task != AUTO and float(gpus_per_task) > 0:
        at_once = min(by_cpu, max(1, int(gpus // float(gpus_per_task))))
        why = f"{_num(float(gpus_per_task))} GPU per {unit} on {_num(gpus)} GPUs"
    else:
        at_once, why = (
            by_cpu,
            f"{_num(per)} CPU{'s' * (per != 1)} per {unit} on {_num(sum(n.cpus for n in nodes))} CPUs",
        )
    if at_once > most:
        at_once, why = most, f"{why}; no more than the {most} {unit}s"
    return max(1, at_once), why


def autoscaler_adds_gpus() -> bool:
    """On a cluster started by Ray's cluster launcher: whether a node type of its config has GPUs
    (the autoscaler adds such nodes while tasks wait for a GPU, so none may be up yet)."""
    import yaml

    try:
        config = yaml.safe_load(Path("~/ray_bootstrap_config.yaml").expanduser().read_text()) or {}
    except (OSError, yaml.YAMLError):
        return False
    types = (config.get("available_node_types") or {}).values()
    return any(float((t.get("resources") or {}).get("GPU", 0) or 0) > 0 for t in types if isinstance(t, dict))


def choose_gpus(
    requested: float | str, nodes: list[Node], at_once: int, unit: str, where: str, grows: bool = False
) -> tuple[float, str]:
    """GPUs per task as asked, or for ``auto`` as :func:`auto_gpus` chooses (one each where a
    growing cluster's autoscaler adds GPU nodes: the nodes up now do not tell); and why."""
    if requested != AUTO:
        return float(requested), ""
    if grows and autoscaler_adds_gpus():
        return 1.0, "the cluster's autoscaler adds GPU nodes"
    return auto_gpus(nodes, at_once, unit, where)


def describe_gpus(value: float, requested: float | str, reason: str, unit: str) -> str:
    """``1 GPU per trial (auto: this machine has 2 GPUs)``: what a command prints of its choice."""
    return f"{_num(value)} GPU{'s' * (value != 1)} per {unit}" + (f" (auto: {reason})" if requested == AUTO else "")


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
        raise ConfigError(
            f"{option} {_num(value)}: more than one GPU must be a whole number (a fraction below 1 shares one GPU)"
        )


def check_request(request: Request, nodes: list[Node], where: str, wait_ok: bool = False) -> None:
    """Refuse a request no node can ever grant (Ray would wait forever), or more tasks at once than
    the nodes hold (the option would be ignored). ``wait_ok``: an autoscaling cluster, where nodes
    may come: say so once on stderr and go on."""
    largest = Node(max(n.cpus for n in nodes), max(n.gpus for n in nodes)) if nodes else Node(0, 0)
    total = Node(sum(n.cpus for n in nodes), sum(n.gpus for n in nodes))
    problem = None
    if not any(n.cpus >= request.cpus and n.gpus >= request.gpus for n in nodes):
        cpus, gpus = f"{request.cpus_option} {_num(request.cpus)}", f"{request.gpus_option} {_num(request.gpus)}"
        asked = (
            cpus if request.gpus <= largest.gpus else gpus if request.cpus <= largest.cpus else f"{cpus} with {gpus}"
        )
        has = " has" if where == "this machine" else "'s largest node has"
        problem = f"{asked} can never be granted: {where}{has} {largest}"
    elif request.at_once > 1 and (
        request.at_once * request.cpus > total.cpus or request.at_once * request.gpus > total.gpus
    ):
        problem = (
            f"{request.at_once_option} {request.at_once} needs {_num(request.at_once * request.cpus)} CPUs"
            + (f" and {_num(request.at_once * request.gpus)} GPUs" if request.gpus else "")
            + f" (each {_num(request.cpus)} CPUs"
            + (f", {_num(request.gpus)} GPUs" if request.gpus else "")
            + f") but {where} has {total}; lower {request.at_once_option} or the share per task"
        )
    if problem is None:
        return
    if wait_ok:
        print(
            f"tunedml: waiting for the autoscaler: {problem}; the cluster may add nodes (Ctrl-C stops)",
            file=sys.stderr,
            flush=True,
        )
        return
    raise ConfigError(problem)


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
    offline = [
        v
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
        if os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
    ]
    if offline:
        raise ConfigError(
            f"model.name {name!r}: not a local folder and not in the Hugging Face cache, and "
            f"{offline[0]} forbids downloading it; {MODEL_ADVICE} (unset {offline[0]})"
        )
    from huggingface_hub import constants

    endpoint = urlparse(constants.ENDPOINT)
    try:
        probe(endpoint.hostname or "huggingface.co", endpoint.port or 443, "unreachable")
    except ConfigError as e:
        reason = str(e).rsplit(": ", 1)[-1]
        raise ConfigError(
            f"model.name {name!r}: not a local folder and not in the Hugging Face cache, and "
            f"{constants.ENDPOINT} cannot be reached ({reason}); {MODEL_ADVICE}"
        ) from None
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
        raise ConfigError(
            f"model.reinit_layers={reinit_layers} but model.name {name!r} has {layers} layers{note}; valid: 0..{layers}"
        )
    if isinstance(tokens, int) and max_length > tokens:
        raise ConfigError(
            f"data.max_length={max_length} but model.name {name!r} holds {tokens} tokens per text "
            f"(its position embeddings){note}; valid: 8..{tokens}"
        )


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
            drawn = draw(
                corpus,
                flat["data.protocol"],
                k=int(flat["data.k"]),
                sample_size=int(flat["data.sample_size"]),
                folds=int(flat["data.folds"]),
                fold=int(flat["data.fold"]),
                seed=int(flat["data.seed"]),
                test_size=int(flat["data.test_size"]),
            )
            _check_batches(corpus, drawn.train, flat)
        except DataError as e:
            raise DataError(f"{e}{f' ({source})' if source else ''}") from None


def _check_batches(corpus: Any, train: Any, flat: dict[str, Any]) -> None:
    """The draw's training examples give the batches of ``data.sampler`` (m_per_class: m of each class)."""
    from .sampling import build_sampler

    m = flat["data.m_per_class"]
    try:
        build_sampler(
            flat["data.sampler"],
            train,
            corpus.labels[train],
            corpus.label_names,
            int(flat["train.batch_size"]),
            None if m is None else int(m),
        )
    except DataError as e:
        raise DataError(f"{corpus.name}: {e}") from None
