"""The cluster path: `cluster.yaml` passes Ray's own validator, and a real two-node Ray cluster on
this machine runs searches submitted with `ray job submit`, survives losing a node, and records every
trial in an MLflow server.

The cluster is two `ray start` processes (a head and a worker node, one CPU each) on loopback, with
their own temp dirs, ports and authentication token, so that nothing leaks into the plain local
`ray.init()` other tests use: no RAY_* variable is set in this process, the token travels only in
the subprocesses' environment, and `--temp-dir` keeps the head's address out of /tmp/ray.
"""

from __future__ import annotations

import copy
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER_YAML = REPO / "cluster.yaml"
ON_PREMISE_MARKER = "on-premise variant"


# ----------------------------------------------------------------- cluster.yaml and Ray's validator


def ray_validate(config: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` does before it touches a cloud: fill Ray's defaults, then validate the result."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    full = prepare_config(copy.deepcopy(config))
    validate_config(full)
    return full


def load_cluster_yaml() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def on_premise_variant() -> dict[str, Any]:
    """cluster.yaml edited as its closing comment says: the commented block replaces provider/auth."""
    text = CLUSTER_YAML.read_text()
    assert ON_PREMISE_MARKER in text, "cluster.yaml lost its on-premise section"
    comment = text.split(ON_PREMISE_MARKER, 1)[1].splitlines()
    start = comment.index("# provider:")
    replacement = yaml.safe_load("\n".join(ln[2:] for ln in comment[start:] if ln.startswith("# ")))
    config = load_cluster_yaml()
    for key in ("available_node_types", "head_node_type"):
        del config[key]
    config.update(replacement)
    return config


def test_cluster_yaml_passes_rays_validator():
    full = ray_validate(load_cluster_yaml())
    head = full["available_node_types"][full["head_node_type"]]
    workers = {k: v for k, v in full["available_node_types"].items() if k != full["head_node_type"]}
    assert full["provider"]["type"] == "aws"
    assert head["resources"].get("GPU", 0) == 0 and head["max_workers"] == 0
    assert any(w["resources"].get("GPU", 0) >= 1 and w["max_workers"] >= w["min_workers"] for w in workers.values())
    assert any("pip install" in c and "tunedml" in c for c in full["worker_setup_commands"])
    assert "~/tunedml" in full["file_mounts"] and "~/.ray/auth_token" in full["file_mounts"]
    assert all(
        "RAY_AUTH_MODE=token" in " ".join(full[k]) for k in ("head_start_ray_commands", "worker_start_ray_commands")
    )


def test_on_premise_variant_in_the_comments_passes_rays_validator():
    full = ray_validate(on_premise_variant())
    assert full["provider"]["type"] == "local"
    assert full["provider"]["worker_ips"] and full["provider"]["head_ip"]


def test_rays_validator_rejects_a_misspelt_key():
    import jsonschema

    config = load_cluster_yaml()
    config["max_worker"] = config.pop("max_workers")
    with pytest.raises(jsonschema.ValidationError, match="max_worker"):
        ray_validate(config)


# ----------------------------------------------------------------- restarts of lost trials


def test_failed_trials_are_restarted_once_on_a_cluster_and_never_on_one_machine():
    from tunedml.search import SearchOptions

    assert SearchOptions().retries == 0  # a raising trial would only fail again
    assert SearchOptions(address="auto").retries == 1  # a trial lost with its node runs again elsewhere
    assert SearchOptions(address="auto", max_failures=0).retries == 0
    assert SearchOptions(max_failures=3).retries == 3


def test_a_negative_max_failures_stops_the_search_before_it_starts(capsys):
    from tunedml.cli import main

    assert main(["search", "--space", "search_spaces/cce.yaml", "--max-failures", "-1"]) == 2
    assert "--max-failures must be >= 0" in capsys.readouterr().err


# ----------------------------------------------------------------- a real two-node cluster on loopback

LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 180  # a busy 2-core CI machine starts a Ray node in 10-60 s
JOIN_TIMEOUT_S = 120  # a worker node joins in 4-15 s; one that has not in 120 s is started again


def _ephemeral_start() -> int:
    """The lowest port the kernel hands to outgoing connections (and to bind to 0)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


RAY_WORKER_PORTS = range(10002, 20000)  # Ray's --min/--max-worker-port defaults: its workers bind these


def free_port() -> int:
    """A port free now, below the ephemeral range and outside Ray's worker-port range.

    A port taken with bind(("", 0)) and released is drawn from the ephemeral range, which every
    outgoing connection (and every Ray component that binds port 0) also draws from: in the seconds
    before Ray binds it, one of the many connections a starting node makes can take it. Below the
    ephemeral range only a process asking for that very port can.
    """
    candidates = range(RAY_WORKER_PORTS.stop, min(_ephemeral_start(), 65536)) or range(1024, RAY_WORKER_PORTS.start)
    for _ in range(200):
        port = random.choice(candidates)
        with socket.socket() as s:
            try:
                s.bind((LOOPBACK, port))
            except OSError:
                continue
            return port
    pytest.fail("no free port below the ephemeral range")


def wait_for(
    what: str,
    check: Callable[[], Any],
    timeout: float = START_TIMEOUT_S,
    every: float = 1.0,
    diagnose: Callable[[], str] | None = None,
) -> Any:
    """Poll ``check`` until it returns something truthy; fail the test with ``what`` on timeout,
    and with what ``diagnose`` says (logs), since a timeout alone tells nothing of the cause."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f"\n{diagnose()}" if diagnose else ""
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(every)


@dataclass
class Process:
    """A command in its own process group, so that stopping it stops everything it started."""

    name: str
    popen: subprocess.Popen
    log: Path

    @classmethod
    def start(cls, name: str, cmd: list[str], env: dict[str, str], log: Path, cwd: Path | None = None) -> "Process":
        out = open(log, "w")
        try:
            popen = subprocess.Popen(
                cmd,
                env=env,
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            out.close()
        return cls(name, popen, log)

    def running(self) -> bool:
        return self.popen.poll() is None

    def kill(self, grace_s: float = 3.0) -> None:
        """SIGTERM to the whole group, SIGKILL to whatever is left after ``grace_s`` (0: SIGKILL at once)."""
        steps = [(signal.SIGTERM, grace_s)] if grace_s > 0 else []
        for sig, wait in [*steps, (signal.SIGKILL, 10.0)]:
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while _group_alive(self.popen.pid) and time.monotonic() < deadline:
                self.popen.poll()
                time.sleep(0.2)
            if not _group_alive(self.popen.pid):
                break
        self.popen.poll()

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group still runs (zombies, already dead, do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


@dataclass
class LocalCluster:
    """A Ray head and worker node, and an MLflow server, all bound to 127.0.0.1 under ``root``."""

    root: Path
    token: str = field(default_factory=lambda: secrets.token_hex(32))
    processes: dict[str, Process] = field(default_factory=dict)
    temp_dirs: list[str] = field(default_factory=list)
    gcs_port: int = 0
    dashboard_port: int = 0
    mlflow_port: int = 0
    node_ids: dict[str, str] = field(default_factory=dict)  # "head", "worker" -> Ray node id

    @property
    def env(self) -> dict[str, str]:
        """The environment of every cluster process and client: the token, no outside RAY_*."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN=self.token,
            RAY_USAGE_STATS_ENABLED="0",
            HF_HUB_OFFLINE="1",
            TOKENIZERS_PARALLELISM="false",
            PYTHONUNBUFFERED="1",
        )
        return env

    @property
    def dashboard(self) -> str:
        return f"http://{LOOPBACK}:{self.dashboard_port}"

    @property
    def tracking_uri(self) -> str:
        return f"http://{LOOPBACK}:{self.mlflow_port}"

    def _temp_dir(self, prefix: str) -> str:
        # Short, because Ray's unix sockets live under it (a socket path has at most 107 bytes).
        path = tempfile.mkdtemp(prefix=f"tunedml-{prefix}-")
        self.temp_dirs.append(path)
        return path

    def _ray_start(self, name: str, args: list[str]) -> None:
        cmd = [
            "ray",
            "start",
            "--block",
            "--node-ip-address",
            LOOPBACK,
            "--num-cpus",
            "1",
            "--object-store-memory",
            str(200 * 1024 * 1024),
            "--temp-dir",
            self._temp_dir(name),
            "--dashboard-agent-listen-port",
            str(free_port()),
            "--disable-usage-stats",
            *args,
        ]
        self.processes[name] = Process.start(name, cmd, self.env, self.root / f"{name}.log")

    def start_head(self) -> None:
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self._ray_start(
            "head",
            [
                "--head",
                "--port",
                str(self.gcs_port),
                "--dashboard-host",
                LOOPBACK,
                "--dashboard-port",
                str(self.dashboard_port),
                "--ray-client-server-port",
                str(free_port()),
            ],
        )
        self.node_ids["head"] = wait_for(
            "the head node", lambda: self._check_alive("head") and self._new_node(), diagnose=self.diagnose
        )

    def start_worker(self) -> None:
        """Start the worker node; if it has not joined within JOIN_TIMEOUT_S, start it once more.

        A second start is set-up, not the behaviour under test (the searches are): the first
        attempt's logs go out as a warning, so a node that often needs two starts shows in CI's log.
        """
        for attempt in (1, 2):
            self._ray_start("worker", ["--address", f"{LOOPBACK}:{self.gcs_port}"])
            try:
                self.node_ids["worker"] = wait_for(
                    "the worker node to join",
                    lambda: self._check_alive("worker") and self._new_node(),
                    timeout=JOIN_TIMEOUT_S,
                    diagnose=self.diagnose,
                )
                return
            except pytest.fail.Exception as e:
                if attempt == 2:
                    raise
                warnings.warn(f"the worker node is started again: {e}", stacklevel=1)
                self.processes.pop("worker").kill()
                # had it registered just now, it must be gone before a fresh node can be told from it
                wait_for("the stopped worker node to leave", lambda: self._new_node() is None, diagnose=self.diagnose)

    def diagnose(self) -> str:
        """What the cluster's processes and Ray's own logs say, for a failure message."""
        parts = [f"--- {name} (exit code {p.popen.poll()}):\n{p.tail(15)}" for name, p in self.processes.items()]
        try:
            states = [(n["node_id"][:8], n["state"]) for n in self.api("/api/v0/nodes")["data"]["result"]["result"]]
            parts.append(f"--- nodes: {states}")
        except (OSError, ValueError, KeyError) as e:
            parts.append(f"--- nodes: the state API did not answer ({e})")
        for temp_dir in self.temp_dirs:
            for log in sorted(Path(temp_dir).glob("session_*/logs/*")):
                if log.name in ("raylet.out", "raylet.err", "gcs_server.out", "gcs_server.err", "dashboard_agent.log"):
                    tail = "\n".join(log.read_text(errors="replace").splitlines()[-8:])
                    parts.append(f"--- {log}:\n{tail}")
        return "\n".join(parts)

    def _new_node(self) -> str | None:
        """The id of an alive node not seen before, if one has joined."""
        fresh = [n["node_id"] for n in self.nodes() if n["node_id"] not in self.node_ids.values()]
        return fresh[0] if fresh else None

    def start_mlflow(self) -> None:
        self.mlflow_port = free_port()
        store = self.root / "mlflow"
        store.mkdir()
        cmd = [
            "mlflow",
            "server",
            "--host",
            LOOPBACK,
            "--port",
            str(self.mlflow_port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{store / 'mlflow.db'}",
            "--artifacts-destination",
            str(store / "artifacts"),
        ]
        self.processes["mlflow"] = Process.start("mlflow", cmd, self.env, self.root / "mlflow.log", cwd=store)

    def wait_mlflow(self) -> None:
        wait_for("the MLflow server", lambda: self._check_alive("mlflow") and self._mlflow_healthy())

    def _check_alive(self, name: str) -> bool:
        p = self.processes[name]
        if not p.running():
            pytest.fail(f"{name} exited with code {p.popen.returncode}:\n{p.tail()}")
        return True

    def _mlflow_healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.tracking_uri}/health", timeout=5) as r:
                return r.status == 200
        except OSError:
            return False

    def ray(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        """The `ray` CLI as a client of this cluster."""
        done = subprocess.run(["ray", *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            pytest.fail(f"ray {' '.join(args)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done

    def api(self, path: str) -> Any:
        """GET from the dashboard's REST API (what `ray job` and `ray list` use), with the token."""
        request = urllib.request.Request(self.dashboard + path, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=30) as r:
            return json.loads(r.read())

    def nodes(self) -> list[dict[str, Any]]:
        """The alive nodes, from the state API ([] while the dashboard is not up)."""
        try:
            found = self.api("/api/v0/nodes?filter_keys=state&filter_predicates=%3D&filter_values=ALIVE")
        except OSError:
            return []
        return found["data"]["result"]["result"]

    def ensure_worker(self) -> None:
        """A worker node, started again if a test stopped it."""
        if "worker" not in self.processes:
            self.start_worker()

    def kill_worker(self) -> None:
        """The worker node dies at once, its raylet and trial processes with it (a crash, not a drain)."""
        self.processes.pop("worker").kill(grace_s=0)  # its id stays in node_ids: a restart is a new node

    def stop(self) -> None:
        for name in ("worker", "head", "mlflow"):
            if name in self.processes:
                self.processes.pop(name).kill()
        for path in self.temp_dirs:
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head and a worker node (1 CPU each) and an MLflow server on loopback; all stopped at the end."""
    c = LocalCluster(tmp_path_factory.mktemp("cluster"))
    try:
        c.start_mlflow()  # starts while the Ray nodes do
        c.start_head()
        c.start_worker()
        c.wait_mlflow()
        yield c
    finally:
        c.stop()


# ----------------------------------------------------------------- searches submitted as Ray jobs

# Epochs after the first take ~30 ms with tiny_roberta and data.k=2: 300 of them keep a trial
# running for seconds after it reports its first epoch. Long enough for the other trial's resources to
# come up on the other node (Tune hands a freed slot to a waiting trial otherwise), and for the fault
# test's kill to land while the trial trains.
EPOCHS = 300
SPACE = """\
# A small space for the cluster tests: plain CCE, only the learning rate searched.
loss.name: none
train.lr: {loguniform: [1.0e-4, 1.0e-3]}
"""


@dataclass
class Job:
    """One `tunedml search` submitted with `ray job submit`, and where its results go."""

    cluster: LocalCluster
    submission_id: str
    name: str  # the search's name: its folder under storage
    storage: Path

    def status(self) -> str:
        """PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED."""
        return self.cluster.api(f"/api/jobs/{self.submission_id}")["status"]

    def wait(self, timeout: float = 600) -> str:
        """Block until the job ends; its final status (SUCCEEDED, FAILED or STOPPED)."""

        def ended() -> str | None:
            status = self.status()
            return status if status in ("SUCCEEDED", "FAILED", "STOPPED") else None

        return wait_for(f"job {self.submission_id} to end", ended, timeout=timeout)

    def logs(self) -> str:
        return self.cluster.api(f"/api/jobs/{self.submission_id}/logs")["logs"]

    def summary(self) -> dict[str, Any]:
        """The JSON line `tunedml search --json` printed."""
        logs = self.logs()
        lines = [ln for ln in logs.splitlines() if ln.startswith("{") and '"trials"' in ln]
        assert lines, f"no JSON summary in the job's output:\n{logs[-4000:]}"
        return json.loads(lines[-1])

    def trial_results(self) -> dict[str, list[dict[str, Any]]]:
        """Every trial's reported results (Ray's result.json lines), by trial folder."""
        folders = [p for p in (self.storage / self.name).iterdir() if (p / "result.json").exists()]
        return {
            p.name: [json.loads(ln) for ln in (p / "result.json").read_text().splitlines() if ln.strip()]
            for p in folders
        }


def submit_search(
    cluster: LocalCluster, workdir: Path, model: str, data_dir: str, name: str, *, epochs: int, trials: int = 2
) -> Job:
    """`ray job submit --working-dir DIR -- tunedml search ... --address auto`, as docs/cluster.md says.

    Two trials at a time with one CPU each on two one-CPU nodes: Ray must place one on each node.
    The storage folder is shared by both nodes (they are on one machine), as S3 would be.
    """
    workdir.mkdir(exist_ok=True)
    (workdir / "space.yaml").write_text(SPACE)
    storage = cluster.root / "results"
    submission_id = f"{name}-{secrets.token_hex(3)}"
    search = [
        "tunedml",
        "search",
        "--datasets",
        "sst2",
        "--data-dir",
        data_dir,
        "--model",
        model,
        "--space",
        "space.yaml",
        "--trials",
        str(trials),
        "--concurrency",
        "2",
        "--cpus-per-trial",
        "1",
        "--scheduler",
        "none",
        "--set",
        "data.k=2",
        "--set",
        f"train.epochs={epochs}",
        "--storage",
        str(storage),
        "--name",
        name,
        "--address",
        "auto",
        "--tracking-uri",
        cluster.tracking_uri,
        "--json",
    ]
    cluster.ray(
        "job",
        "submit",
        "--address",
        cluster.dashboard,
        "--submission-id",
        submission_id,
        "--working-dir",
        str(workdir),
        "--no-wait",
        "--",
        *search,
    )
    return Job(cluster, submission_id, name, storage)


def mlflow_search(cluster: LocalCluster, search: str) -> tuple[Any, dict[str, Any]]:
    """The search's parent run in the MLflow server (None before it starts) and its child runs by
    Ray trial id."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=cluster.tracking_uri)
    experiment = client.get_experiment_by_name("tunedml/sst2")
    parents = (
        client.search_runs([experiment.experiment_id], f"tags.`tunedml.search` = '{search}'") if experiment else []
    )
    if not parents:
        return None, {}
    assert len(parents) == 1, f"{len(parents)} MLflow runs for search {search}"
    children = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'")
    return parents[0], {run.data.tags["ray.trial_id"]: run for run in children}


def recorded_trials(cluster: LocalCluster, search: str) -> dict[str, Any]:
    return mlflow_search(cluster, search)[1]


@pytest.mark.slow
def test_search_job_spreads_trials_over_both_nodes_and_records_each_in_mlflow(
    cluster, tiny_roberta, data_dir, tmp_path
):
    cluster.ensure_worker()
    nodes = dict(cluster.node_ids)
    job = submit_search(cluster, tmp_path / "job", tiny_roberta, data_dir, "spread", epochs=EPOCHS)
    assert job.wait() == "SUCCEEDED", job.logs()[-4000:]
    summary = job.summary()
    assert summary["trials"] == summary["finished"] == 2 and not summary["failed"]

    # Ray's own record: every result names the node that produced it.
    results = job.trial_results()
    assert len(results) == 2
    ran_on = {rs[-1]["trial_id"]: {r["node_id"] for r in rs} for rs in results.values()}
    assert all(len(n) == 1 for n in ran_on.values()), ran_on
    assert set().union(*ran_on.values()) == {nodes["head"], nodes["worker"]}

    # MLflow's: one finished child run per trial, each tagged with the node it ran on.
    runs = recorded_trials(cluster, "spread")
    assert set(runs) == set(ran_on)
    assert all(run.info.status == "FINISHED" for run in runs.values())
    assert {t: {run.data.tags.get("ray.node_id")} for t, run in runs.items()} == ran_on
    assert all(run.data.metrics.get("dev_accuracy") is not None for run in runs.values())


@pytest.mark.slow
def test_search_job_outlives_a_lost_worker_node(cluster, tiny_roberta, data_dir, tmp_path):
    """The worker node dies mid-trial: its trial starts again on the head, the search finishes, and
    MLflow has every trial, finished."""
    cluster.ensure_worker()
    nodes = dict(cluster.node_ids)
    epochs = EPOCHS
    job = submit_search(cluster, tmp_path / "job", tiny_roberta, data_dir, "fault", epochs=epochs)

    def worker_trial() -> str | None:
        parent, runs = mlflow_search(cluster, "fault")
        if parent is not None and parent.info.status != "RUNNING":
            pytest.fail(f"the search ended before a trial ran on the worker node:\n{job.logs()[-4000:]}")
        on_worker = [t for t, run in runs.items() if run.data.tags.get("ray.node_id") == nodes["worker"]]
        return on_worker[0] if on_worker else None

    lost = wait_for("a trial reporting from the worker node", worker_trial, every=0.2)
    cluster.kill_worker()
    assert job.wait() == "SUCCEEDED", job.logs()[-4000:]
    assert f"trial {lost} failed" in job.logs()  # the search saw the loss and restarted the trial
    summary = job.summary()
    assert summary["trials"] == summary["finished"] == 2 and not summary["failed"]

    results = job.trial_results()
    by_id = {rs[-1]["trial_id"]: rs for rs in results.values()}
    assert set(by_id) == set(recorded_trials(cluster, "fault"))
    lost_results = by_id[lost]
    assert lost_results[-1]["epoch"] == epochs and lost_results[-1]["node_id"] == nodes["head"]
    cut_short = [r["epoch"] for r in lost_results if r["node_id"] == nodes["worker"]]
    assert cut_short and max(cut_short) < epochs  # it was training on the worker when the node died
    assert all(rs[-1]["epoch"] == epochs for rs in by_id.values())
    runs = recorded_trials(cluster, "fault")
    assert all(run.info.status == "FINISHED" for run in runs.values()), {t: r.info.status for t, r in runs.items()}
    assert runs[lost].data.metrics["dev_accuracy"] == pytest.approx(lost_results[-1]["dev_accuracy"])
