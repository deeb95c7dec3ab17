"""Recording a search while it runs: its parent run, and one nested run per trial written by a Ray
Tune callback in the driver. The only part of tracking that needs Ray.

Trials never open the store, so a SQLite file never sees concurrent writers, and the same code
works unchanged against an ``mlflow server``.
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from ray import tune

from .. import __version__
from ..config import from_flat
from ..search import experiment_path, read_state, trial_error, trial_status
from ..space import config_keys
from .plots import write_optuna_plots
from .searches import BEST_CONFIG
from .store import (
    ROLE_TAG,
    SEARCH_ROLE,
    TRIAL_ROLE,
    call,
    client,
    dataset_experiment,
    experiment_name,
    log_batch,
    metric,
    param_value,
    quietly,
    reason,
)

TRIAL_METRICS = ("train_loss", "stage", "batches_without_positives", "examples_without_positive")  # and dev_*, loss_*
RESCORE_ARTIFACT = "rescore.json"  # the re-scored leaders of a search (search --rescore)


@dataclass
class SearchTracker:
    """The parent run of one search; hands out the callback that records its trials."""

    uri: str
    client: Any
    experiment_id: str
    run_id: str
    base: dict[str, Any]  # the search's fixed flat keys, under every trial's searched values
    space: Any  # SearchSpace
    options: Any  # SearchOptions, with the search's name pinned
    notes: list[str] = field(default_factory=list)
    _recorder: "TrialRecorder | None" = None

    @classmethod
    def open(cls, uri: str, driver_cfg: Any, base: dict[str, Any], space: Any, options: Any) -> "SearchTracker":
        """Start the parent run, or with ``options.resume`` continue the one of that search."""
        storage, name = experiment_path(driver_cfg.data.dataset, space, options)
        options = replace(options, name=name)
        mlflow = client(uri)
        experiment_id = dataset_experiment(mlflow, uri, driver_cfg.data.dataset)
        run_id = None
        if options.resume:
            recorded = read_state(f"{storage.rstrip('/')}/{name}").get("mlflow", {})
            run_id = recorded.get("run_id") if recorded.get("tracking_uri") == uri else None
            run_id = run_id or _find_search_run(mlflow, uri, experiment_id, name)
        tracker = cls(uri, mlflow, experiment_id, run_id or "", base, space, options)
        if run_id:
            tracker._reopen()
        else:
            tracker._start(driver_cfg, name, f"{storage.rstrip('/')}/{name}")
        return tracker

    @property
    def state(self) -> dict[str, Any]:
        """What the search's state file keeps so that --resume continues this same parent run."""
        return {"mlflow": {"tracking_uri": self.uri, "experiment_id": self.experiment_id, "run_id": self.run_id}}

    def describe(self) -> dict[str, str]:
        return {
            "tracking_uri": self.uri,
            "experiment": experiment_name(self.base.get("data.dataset", "")),
            "run_id": self.run_id,
        }

    def callback(self) -> "TrialRecorder":
        if self._recorder is None:
            self._recorder = TrialRecorder(self)
        return self._recorder

    def __enter__(self) -> "SearchTracker":
        return self

    def __exit__(self, kind, error, tb) -> None:
        """A search that raised leaves its parent KILLED (interrupted) or FAILED, never RUNNING, and
        its unfinished trials KILLED with ``tunedml.interrupted=true`` (--resume starts them afresh)."""
        if error is None:
            return
        if self._recorder is not None:
            quietly(self._recorder.close_unfinished)
        interrupted = isinstance(error, KeyboardInterrupt)  # Ctrl-C: --resume continues this run
        tag, status = ("tunedml.interrupted", "KILLED") if interrupted else ("tunedml.error", "FAILED")
        quietly(lambda: self.client.set_tag(self.run_id, tag, (str(error) or "interrupted")[:500]))
        quietly(lambda: self.client.set_terminated(self.run_id, status))

    def finish(self, result: Any) -> None:
        """Record the outcome: best.* params, best_score, best_config.yaml, plots; end the parent."""
        counts = {s: sum(t.status == s for t in result.trials) for s in ("FINISHED", "KILLED", "FAILED")}
        self._set_tags(
            {
                "tunedml.trials_finished": counts["FINISHED"],
                "tunedml.trials_stopped_early": counts["KILLED"],
                "tunedml.trials_failed": counts["FAILED"],
                "tunedml.seconds": round(result.seconds, 1),
            }
        )
        if result.best is None:
            self._set_tags({"tunedml.error": "no trial produced a score"})
            self.client.set_terminated(self.run_id, "FAILED")
            return
        self._record_best(result)
        self._log_per_option(result)
        self._log_plots(result)
        if self.notes:
            self._set_tags({"tunedml.notes": "; ".join(self.notes)[:5000]})
        self.client.set_terminated(self.run_id, "FINISHED")

    def _log_per_option(self, result: Any) -> None:
        """How many trials each option of a searched choice (each loss) got, and its best score:
        ``per_option.<key>.<option>.trials`` / ``.finished`` / ``.best`` metrics."""
        metrics = []
        for key in result.choices:
            for option, row in result.per_option(key).items():
                name = re.sub(r"[^A-Za-z0-9_\-./ ]", "_", f"per_option.{key}.{option}")  # a loss set's '+'

                metrics += [metric(f"{name}.trials", row["trials"]), metric(f"{name}.finished", row["finished"])]
                if row["best"] is not None:
                    metrics.append(metric(f"{name}.best", row["best"]))
        log_batch(self.client, self.run_id, metrics=metrics)

    # -- parent run

    def _start(self, cfg: Any, name: str, results: str) -> None:
        o = self.options
        tags = {
            ROLE_TAG: SEARCH_ROLE,
            "tunedml.dataset": cfg.data.dataset,
            "tunedml.space": self.space.name,
            "tunedml.space_file": str(Path(self.space.path).resolve()),
            "tunedml.space_sha256": self.space.sha256,
            "tunedml.model": cfg.model.name,
            "tunedml.protocol": cfg.data.protocol,
            "tunedml.objective": o.objective,
            "tunedml.search": name,
            "tunedml.results": results,
            "tunedml.ray_address": o.address or "local",
            "tunedml.version": __version__,
            **(
                {"tunedml.k": cfg.data.k}
                if cfg.data.protocol == "kshot"
                else {
                    "tunedml.sample_size": cfg.data.sample_size,
                    "tunedml.folds": cfg.data.folds,
                    "tunedml.fold": cfg.data.fold,
                }
            ),
        }
        run = call(
            self.uri,
            lambda: self.client.create_run(
                self.experiment_id, run_name=name, tags={k: str(v) for k, v in tags.items()}
            ),
        )
        self.run_id = run.info.run_id
        params = {
            f"search.{k}": getattr(o, k)
            for k in (
                "trials",
                "scheduler",
                "metric",
                "repeats",
                "concurrency",
                "sampler_seed",
                "cpus_per_trial",
                "gpus_per_trial",
                "time_budget_s",
                "rescore",
                "rescore_draws",
            )
        }
        self._log_params({**params, **{f"base.{k}": v for k, v in self.base.items()}})
        for path, text in self.space.sources or [(self.space.path, self.space.text)]:  # the file and its includes
            self.client.log_text(self.run_id, text, f"space/{Path(path).name}")

    def _reopen(self) -> None:
        """--resume: the same parent run goes on; its children of interrupted trials are closed."""
        run = call(self.uri, lambda: self.client.get_run(self.run_id))
        self.client.update_run(self.run_id, status="RUNNING")
        for tag in ("tunedml.interrupted", "tunedml.error"):
            if tag in run.data.tags:
                self.client.delete_tag(self.run_id, tag)
        self._set_tags({"tunedml.resumed": int(run.data.tags.get("tunedml.resumed", 0)) + 1})
        for child in self._children():
            if child.info.status == "RUNNING":  # its driver died; Ray starts that trial afresh
                self.client.set_tag(child.info.run_id, "tunedml.interrupted", "true")
                self.client.set_terminated(child.info.run_id, "KILLED")

    def _children(self) -> list[Any]:
        return self.client.search_runs(
            [self.experiment_id], f"tags.`mlflow.parentRunId` = '{self.run_id}'", max_results=10_000
        )

    def _record_best(self, result: Any) -> None:
        best = result.best
        self._log_params({f"best.{k}": v for k, v in best.config.items()})
        metrics = {"best_score": best.score, f"best_{result.objective}": best.score}
        child = self.callback().runs.get(best.trial_id) or self._child_of(best.trial_id)
        if child:
            latest = self.client.get_run(child).data.metrics
            metrics.update({f"best_{k}": v for k, v in latest.items() if k.startswith("dev_")})
            metrics[f"best_{result.objective}"] = best.score
            self._set_tags({"tunedml.best_run_id": child})
        metrics[f"best_search_{result.objective}"] = best.score  # the chosen trial's own score in the search
        self._set_tags({"tunedml.best_trial": best.trial_id})
        if result.rescored:
            metrics.update(self._log_rescored(result))
        log_batch(self.client, self.run_id, metrics=[metric(k, v) for k, v in metrics.items()])
        header = (
            f"# best {result.objective} {best.score:.4f} on {result.dataset}: trial {best.trial_id} of search "
            f"{Path(result.path).name} (MLflow run {self.run_id})\n# use: tunedml train --config {BEST_CONFIG}\n"
        )
        self.client.log_text(
            self.run_id, header + from_flat(result.best_config, source="best trial").to_yaml(), BEST_CONFIG
        )

    def _log_rescored(self, result: Any) -> dict[str, float]:
        """The re-scored leaders: on each one's trial run its mean and std over the re-scoring draws
        and its rank; on the parent ``rescore.json``; returns the parent's metrics for the choice,
        whose re-scored mean becomes ``best_<objective>`` (what searches are ranked by)."""
        m, objective = result.metric, result.objective
        order = sorted(result.rescored, key=lambda r: (-r.mean(m), r.std(m)))
        for rank, r in enumerate(order, 1):
            child = self.callback().runs.get(r.trial_id) or self._child_of(r.trial_id)
            if child and r.draws:
                log_batch(
                    self.client,
                    child,
                    metrics=[metric(f"rescored_{objective}", r.mean(m)), metric(f"rescored_{objective}_std", r.std(m))],
                    tags={"tunedml.rescore_rank": rank},
                )
        self.client.log_text(
            self.run_id, json.dumps([r.to_dict(m) for r in result.rescored], indent=1), RESCORE_ARTIFACT
        )
        chosen = next(r for r in result.rescored if r.trial_id == result.best.trial_id)
        self._set_tags({"tunedml.rescored": f"{len(result.rescored)} trials x {self.options.rescore_draws} draws"})
        return {
            "best_score": chosen.mean(m),
            f"best_{objective}": chosen.mean(m),
            f"best_rescored_{objective}": chosen.mean(m),
            f"best_rescored_{objective}_std": chosen.std(m),
            "best_rescored_draws": len(chosen.draws),
        }

    def _child_of(self, trial_id: str) -> str | None:
        runs = [
            r
            for r in self._children()
            if r.data.tags.get("ray.trial_id") == trial_id and r.data.tags.get("tunedml.interrupted") != "true"
        ]
        return runs[0].info.run_id if runs else None

    def _log_plots(self, result: Any) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            made = write_optuna_plots(self.space, result.trials, Path(tmp), self.notes)
            if made:
                self.client.log_artifacts(self.run_id, tmp, "plots")

    def _log_params(self, params: dict[str, Any]) -> None:
        """Params never change in MLflow: on resume, keys already there keep their first value."""
        have = self.client.get_run(self.run_id).data.params
        changed = sorted(k for k, v in params.items() if k in have and have[k] != param_value(v))
        if changed:
            self.notes.append(f"params {', '.join(changed)} keep their first recorded values")
        log_batch(self.client, self.run_id, params={k: v for k, v in params.items() if k not in have})

    def _set_tags(self, tags: dict[str, Any]) -> None:
        log_batch(self.client, self.run_id, tags=tags)


def _find_search_run(mlflow: Any, uri: str, experiment_id: str, name: str) -> str | None:
    runs = call(
        uri,
        lambda: mlflow.search_runs(
            [experiment_id], f"tags.`{ROLE_TAG}` = '{SEARCH_ROLE}' and tags.`tunedml.search` = '{name}'", max_results=1
        ),
    )
    return runs[0].info.run_id if runs else None


class TrialRecorder(tune.Callback):
    """Ray Tune callback, run in the driver: one nested MLflow run per trial.

    A tracking failure in the middle of a search is reported once and the search goes on: losing
    hours of trials to a network hiccup would be worse than a gap in the record (Ray keeps every
    result in its own folder).
    """

    def __init__(self, tracker: SearchTracker):
        self.tracker = tracker
        self.client = tracker.client
        self.runs: dict[str, str] = {}  # trial id -> child run id
        self.unfinished: set[str] = set()  # trial ids started and not yet ended
        self.node: dict[str, str] = {}  # trial id -> the node it last reported from
        self.warned = False
        for run in tracker._children() if tracker.options.resume else []:
            if run.data.tags.get("tunedml.interrupted") != "true" and "ray.trial_id" in run.data.tags:
                self.runs[run.data.tags["ray.trial_id"]] = run.info.run_id

    def on_trial_start(self, iteration, trials, trial, **info):
        self._safely(self._start, trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._safely(self._result, trial, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        status = trial_status(trial)
        tags = {"tunedml.stopped_early": "true"} if status == "KILLED" else {}
        self._safely(self._end, trial, status, tags)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._safely(self._end, trial, "FAILED", {"tunedml.error": trial_error(trial)})

    # --

    def _start(self, trial: Any) -> None:
        self.unfinished.add(trial.trial_id)
        if trial.trial_id in self.runs:  # restarted (resumed or unpaused): same run goes on
            self.client.update_run(self.runs[trial.trial_id], status="RUNNING")
            return
        tags = {
            "mlflow.parentRunId": self.tracker.run_id,
            ROLE_TAG: TRIAL_ROLE,
            "ray.trial_id": trial.trial_id,
            "tunedml.dataset": str(self.tracker.base.get("data.dataset", "")),
        }
        run = self.client.create_run(self.tracker.experiment_id, run_name=trial.trial_id, tags=tags)
        self.runs[trial.trial_id] = run.info.run_id
        log_batch(self.client, run.info.run_id, params=self._flat_config(trial.config))

    def _flat_config(self, config: dict[str, Any]) -> dict[str, Any]:
        merged = {**self.tracker.base, **config_keys(config)}
        try:
            return from_flat(merged, source="trial config").to_flat()
        except Exception:  # the trial will fail on it too, and say why; record what it was given
            return merged

    def _result(self, trial: Any, result: dict[str, Any]) -> None:
        run_id = self.runs.get(trial.trial_id)
        if run_id is None or result.get("step") is None:
            return
        step = int(result["step"])  # optimizer steps: the same clock for every trial, whatever its batch size
        metrics = [
            metric(k, v, step)
            for k, v in result.items()
            if (k in TRIAL_METRICS or k.startswith(("dev_", "loss_"))) and isinstance(v, (int, float))
        ]
        tags = {}
        if "dev_collapsed" in result:  # dev predictions all one class at this evaluation (the last one tells)
            tags["tunedml.collapsed"] = "true" if result["dev_collapsed"] else "false"
        node = str(result.get("node_id") or "")
        if node and self.node.get(trial.trial_id) != node:  # first result, or restarted elsewhere
            tags["ray.node_id"] = node
            self.node[trial.trial_id] = node
        log_batch(self.client, run_id, metrics=metrics, tags=tags)

    def _end(self, trial: Any, status: str, tags: dict[str, str]) -> None:
        self.unfinished.discard(trial.trial_id)
        run_id = self.runs.get(trial.trial_id)
        if run_id is None:
            return
        log_batch(self.client, run_id, tags=tags)
        self.client.set_terminated(run_id, status)

    def close_unfinished(self) -> None:
        """The search stopped under these trials: mark their runs interrupted (KILLED)."""
        for trial_id in sorted(self.unfinished):
            run_id = self.runs.pop(trial_id, None)
            if run_id:
                self.client.set_tag(run_id, "tunedml.interrupted", "true")
                self.client.set_terminated(run_id, "KILLED")
        self.unfinished.clear()

    def _safely(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as e:
            if not self.warned:
                self.warned = True
                print(
                    f"tunedml: warning: MLflow at {self.tracker.uri} failed ({reason(e)}); the search goes on, "
                    "its results stay in Ray's folder",
                    file=sys.stderr,
                    flush=True,
                )
