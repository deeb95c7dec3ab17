"""The record of a `tunedml study`: one run per study (keyed by its settings) in the experiment
``tunedml/study``, with a tag per completed stage naming the run that stage produced, and look-ups
of the search, final and report runs that the stages wrote (by the tags every such run carries);
every study recorded, as `tunedml searches` lists them.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from .store import client

STUDY_EXPERIMENT = "tunedml/study"
KEY_TAG = "tunedml.study_key"
STAGE_TAG = "tunedml.stage."  # + "<dataset>.<kind>" or "report": the run id that stage produced
REPORT_DATASETS_TAG = STAGE_TAG + "report_datasets"


@dataclass(frozen=True)
class StudyRecord:
    """One recorded study, as `tunedml searches` lists it."""

    key: str
    state: str  # MLflow's run status: RUNNING, FINISHED, FAILED or KILLED (Ctrl-C)
    datasets: list[str]  # those with a stage done
    stages: list[str]  # the stages done: sst2.cce, sst2.dml, sst2.retrain, report
    settings: dict[str, str]  # trials, seeds, repeats, space, set, model, scheduler, sampler seed, concurrency
    run_id: str
    started: str  # local time, YYYY-MM-DD HH:MM
    runs: dict[str, str] = field(default_factory=dict)  # stage -> the run it produced

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def list_studies(uri: str) -> list[StudyRecord]:
    """Every study recorded at ``uri``, oldest first (none where no store exists)."""
    from .uri import store_exists

    if not store_exists(uri):
        return []
    mlflow = client(uri)
    experiment = mlflow.get_experiment_by_name(STUDY_EXPERIMENT)
    if experiment is None:
        return []
    out = []
    for run in mlflow.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"], max_results=1000):
        tags = run.data.tags
        stages = {
            k[len(STAGE_TAG) :]: v for k, v in tags.items() if k.startswith(STAGE_TAG) and k != REPORT_DATASETS_TAG
        }
        datasets = list(dict.fromkeys(s.rsplit(".", 1)[0] for s in stages if s != "report"))
        settings = {k[len("study.") :]: v for k, v in run.data.params.items() if k.startswith("study.")}
        out.append(
            StudyRecord(
                tags.get(KEY_TAG, "")[:8],
                run.info.status,
                datasets,
                list(stages),
                settings,
                run.info.run_id,
                time.strftime("%Y-%m-%d %H:%M", time.localtime(run.info.start_time / 1000)),
                stages,
            )
        )
    return out


class Ledger:
    """The study's run in ``tunedml/study`` and the runs its stages wrote, found by their tags."""

    def __init__(self, uri: str, key: str):
        self.uri, self.key = uri, key
        self.client = client(uri)
        self.run_id: str | None = None

    def find(self) -> str | None:
        """This key's study run, if recorded; nothing is created (a dry run's look)."""
        experiment = self.client.get_experiment_by_name(STUDY_EXPERIMENT)
        if experiment is None:
            return None
        runs = self.client.search_runs(
            [experiment.experiment_id],
            f"tags.`{KEY_TAG}` = '{self.key}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        self.run_id = runs[0].info.run_id if runs else None
        return self.run_id

    def open(self, params: dict[str, Any], create: bool) -> bool:
        """Find this key's study run (True), or start one if ``create`` (False)."""
        experiment = self.client.get_experiment_by_name(STUDY_EXPERIMENT)
        if experiment is not None:
            runs = self.client.search_runs(
                [experiment.experiment_id],
                f"tags.`{KEY_TAG}` = '{self.key}'",
                order_by=["attributes.start_time DESC"],
                max_results=1,
            )
            if runs:
                self.run_id = runs[0].info.run_id
                self.client.update_run(self.run_id, status="RUNNING")
                return True
        if not create:
            raise ConfigError(
                f"--resume: no study with these settings (key {self.key}) recorded at {self.uri} "
                "(a study recorded by a tunedml with other defaults has another key); "
                "run the command without --resume to start it"
            )
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(STUDY_EXPERIMENT)
        run = self.client.create_run(
            experiment_id, run_name=f"study-{self.key[:8]}", tags={KEY_TAG: self.key, "tunedml.role": "study"}
        )
        self.run_id = run.info.run_id
        for k, v in params.items():
            self.client.log_param(self.run_id, f"study.{k}", str(v)[:6000])
        return False

    def done(self, stage: Any) -> str | None:
        """The run a stage recorded, if it is there and FINISHED."""
        run_id = self.client.get_run(self.run_id).data.tags.get(stage.tag)
        return run_id if run_id and self.finished(run_id) else None

    def finished(self, run_id: str) -> bool:
        try:
            run = self.client.get_run(run_id)
        except Exception:  # deleted from the store
            return False
        return run.info.status == "FINISHED" and run.info.lifecycle_stage == "active"

    def mark(self, stage: Any, run_id: str, **extra: str) -> None:
        self.client.set_tag(self.run_id, stage.tag, run_id)
        for k, v in extra.items():
            self.client.set_tag(self.run_id, k, v)

    def tag(self, name: str) -> str | None:
        return self.client.get_run(self.run_id).data.tags.get(name)

    def end(self, status: str) -> None:
        with contextlib.suppress(Exception):
            self.client.set_terminated(self.run_id, status)

    def _runs(self, filter_string: str, since_ms: int = 0) -> list[Any]:
        ids = [e.experiment_id for e in self.client.search_experiments()]
        if not ids:
            return []
        runs = self.client.search_runs(ids, filter_string, order_by=["attributes.start_time DESC"], max_results=50)
        return [r for r in runs if r.info.start_time >= since_ms and r.info.lifecycle_stage == "active"]

    def search_run(self, dataset: str, name: str) -> Any | None:
        """The latest search run of that name (any status), by the tags every search writes."""
        runs = self._runs(
            f"tags.`tunedml.role` = 'search' and tags.`tunedml.search` = '{name}' "
            f"and tags.`tunedml.dataset` = '{dataset}'"
        )
        finished = [r for r in runs if r.info.status == "FINISHED"]
        return (finished or runs or [None])[0]

    def final_run(self, dataset: str, search_run_id: str, since_ms: int) -> str | None:
        """The final run (best role) that a retrain of ``search_run_id`` wrote since ``since_ms``."""
        runs = self._runs(
            f"tags.`tunedml.role` = 'final' and tags.`tunedml.final_role` = 'best' "
            f"and tags.`tunedml.dataset` = '{dataset}' and tags.`tunedml.search_run_id` = '{search_run_id}'",
            since_ms,
        )
        return next((r.info.run_id for r in runs if r.info.status == "FINISHED"), None)

    def report_run(self, since_ms: int) -> Any | None:
        runs = self._runs("tags.`tunedml.role` = 'report'", since_ms)
        return next((r for r in runs if r.info.status == "FINISHED"), None)
