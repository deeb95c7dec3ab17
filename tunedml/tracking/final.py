"""Final evaluations in MLflow: `tunedml retrain` writes one final run per configuration, `tunedml
report` reads the latest pair per dataset back and logs the report itself.

A final run (tag ``tunedml.role=final``, ``tunedml.final_role=best|baseline``, in the dataset's
experiment) holds the config as params, per-draw test and dev metrics (step = draw), their mean,
std and worst draw, the count of collapsed draws, the paired difference to the baseline with its
interval, method and p-values, the comparison as JSON and, on the best configuration's run, the
test embeddings behind the report's projection plot (and the saved model).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..config import from_flat
from ..data import TASKS
from ..errors import TrackingError
from ..results import ROLES, Comparison, Snapshot
from .searches import TRIALS_TAG
from .store import (
    EXPERIMENT_PREFIX,
    FINAL_ROLE,
    REPORT_ROLE,
    ROLE_TAG,
    call,
    client,
    dataset_experiment,
    ensure_experiment,
    experiment_name,
    log_batch,
    metric,
    quietly,
)

FINAL_ROLE_TAG = "tunedml.final_role"
COMPARISON_FILE, EMBEDDINGS_FILE, FINAL_CONFIG = "comparison.json", "embeddings.npz", "config.yaml"
REPORT_EXPERIMENT = EXPERIMENT_PREFIX + "report"


def log_final(uri: str, comparison: Comparison, model_dir: str | Path | None = None) -> dict[str, str]:
    """Record a final evaluation: one run per configuration. Returns ``{role: run_id}``.

    Runs are marked FAILED if writing them fails half-way.
    """
    mlflow = client(uri)
    experiment_id = dataset_experiment(mlflow, uri, comparison.dataset)
    group = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    run_ids: dict[str, str] = {}
    try:
        for role in ROLES:
            result = comparison.result(role)
            c = result.candidate
            tags = {
                ROLE_TAG: FINAL_ROLE,
                FINAL_ROLE_TAG: role,
                "tunedml.dataset": comparison.dataset,
                "tunedml.loss": c.loss,
                "tunedml.source": c.source[:5000],
                "tunedml.comparison": group,
                "tunedml.protocol": comparison.protocol,
                "tunedml.draws": str(len(result.draws)),
                "tunedml.untuned": str(c.untuned).lower(),
                **({TRIALS_TAG: str(c.trials)} if c.trials is not None else {}),
                **({"tunedml.search_run_id": c.run_id} if c.run_id else {}),
            }
            run = call(uri, lambda: mlflow.create_run(experiment_id, run_name=f"final-{role}-{c.loss}", tags=tags))
            run_ids[role] = run.info.run_id
            _log_final_run(mlflow, run.info.run_id, comparison, role, from_flat(c.config, source=c.source).to_yaml())
        mlflow.set_tag(run_ids["best"], "tunedml.baseline_run_id", run_ids["baseline"])
        mlflow.set_tag(run_ids["baseline"], "tunedml.best_run_id", run_ids["best"])
        mlflow.log_text(run_ids["best"], json.dumps(comparison.to_dict(), indent=1, default=str), COMPARISON_FILE)
        if comparison.snapshots:
            with tempfile.TemporaryDirectory() as tmp:
                arrays = {
                    k: v for role, snap in comparison.snapshots.items() for k, v in snap.arrays(f"{role}_").items()
                }
                np.savez_compressed(Path(tmp) / EMBEDDINGS_FILE, **arrays)
                mlflow.log_artifact(run_ids["best"], str(Path(tmp) / EMBEDDINGS_FILE))
        if model_dir is not None:
            mlflow.log_artifacts(run_ids["best"], str(model_dir), "model")
    except BaseException:
        for run_id in run_ids.values():
            quietly(lambda: mlflow.set_terminated(run_id, "FAILED"))
        raise
    for run_id in run_ids.values():
        mlflow.set_terminated(run_id, "FINISHED")
    comparison.run_id = run_ids["best"]
    return run_ids


def _log_final_run(mlflow: Any, run_id: str, comparison: Comparison, role: str, config_yaml: str) -> None:
    result = comparison.result(role)
    metrics = [
        metric(f"{split}_{m}", v, d.index)
        for d in result.draws
        if d.ok
        for split, scores in (("test", d.test), ("dev", d.dev))
        for m, v in scores.items()
    ]
    for m, s in result.summary().items():
        metrics += [metric(f"test_{m}_{stat}", value) for stat, value in s.items()]
    for m, interval in comparison.differences.items():
        metrics.append(metric(f"diff_{m}_pp", interval.mean))
        if interval.exists:
            metrics += [metric(f"diff_{m}_pp_low", interval.low), metric(f"diff_{m}_pp_high", interval.high)]
        metrics += [
            metric(f"diff_{m}_p_{test}", p)
            for test, p in (("t", interval.p_t), ("wilcoxon", interval.p_wilcoxon))
            if p is not None
        ]
    metrics += [
        metric("draws_failed", sum(not d.ok for d in result.draws)),
        metric("draws_collapsed", result.collapsed),
    ]
    interval = next(iter(comparison.differences.values()), None)
    tags = {"tunedml.interval": f"{interval.method} {interval.confidence:g}"} if interval else {}
    log_batch(mlflow, run_id, params=result.candidate.config, metrics=metrics, tags=tags)
    mlflow.log_text(run_id, config_yaml, FINAL_CONFIG)


def final_comparisons(uri: str, datasets: list[str] | None = None) -> list[Comparison]:
    """The latest final evaluation per dataset (all datasets with one when ``datasets`` is None),
    with the embeddings recorded for it. TrackingError naming the first dataset that has none."""
    mlflow = client(uri)
    explicit = datasets is not None
    if datasets is None:
        experiments = call(uri, lambda: mlflow.search_experiments(filter_string=f"name LIKE '{EXPERIMENT_PREFIX}%'"))
        datasets = _dataset_order(
            [e.name[len(EXPERIMENT_PREFIX) :] for e in experiments if e.name != REPORT_EXPERIMENT]
        )
    found = []
    for dataset in datasets:
        run = _latest_final(mlflow, uri, dataset)
        if run is None:
            if explicit:
                raise TrackingError(
                    f"no final evaluation recorded for dataset {dataset!r} at {uri}; "
                    f"run `tunedml retrain --dataset {dataset}` first"
                )
            continue
        found.append(run)
    if not found:
        raise TrackingError(f"no final evaluation recorded at {uri}; run `tunedml retrain --dataset DATASET` first")
    return [_read_comparison(mlflow, uri, run) for run in found]


def _read_comparison(mlflow: Any, uri: str, run: Any) -> Comparison:
    run_id = run.info.run_id
    with tempfile.TemporaryDirectory() as tmp:
        local = call(uri, lambda: mlflow.download_artifacts(run_id, COMPARISON_FILE, tmp))
        comparison = Comparison.from_dict(json.loads(Path(local).read_text()))
        names = {f.path for f in call(uri, lambda: mlflow.list_artifacts(run_id))}
        if EMBEDDINGS_FILE in names:
            local = call(uri, lambda: mlflow.download_artifacts(run_id, EMBEDDINGS_FILE, tmp))
            with np.load(local) as arrays:
                comparison.snapshots = {
                    role: Snapshot.from_arrays(arrays, f"{role}_") for role in ROLES if f"{role}_embeddings" in arrays
                }
    comparison.run_id = run_id
    return comparison


def _latest_final(mlflow: Any, uri: str, dataset: str) -> Any | None:
    experiment = call(uri, lambda: mlflow.get_experiment_by_name(experiment_name(dataset)))
    if experiment is None:
        return None
    runs = call(
        uri,
        lambda: mlflow.search_runs(
            [experiment.experiment_id],
            f"tags.`{ROLE_TAG}` = '{FINAL_ROLE}' and tags.`{FINAL_ROLE_TAG}` = 'best' and attributes.status = 'FINISHED'",
            max_results=1,
            order_by=["attributes.start_time DESC"],
        ),
    )
    return runs[0] if runs else None


def _dataset_order(names: list[str]) -> list[str]:
    """Registered tasks in their usual order (as in the papers' tables), then the rest by name."""
    return [t for t in TASKS if t in names] + sorted(n for n in names if n not in TASKS)


def log_report(uri: str, folder: str | Path, comparisons: list[Comparison]) -> str:
    """Log a written report folder as a run of the experiment ``tunedml/report``; returns its id."""
    mlflow = client(uri)
    experiment_id = ensure_experiment(mlflow, uri, REPORT_EXPERIMENT)
    tags = {
        ROLE_TAG: REPORT_ROLE,
        "tunedml.datasets": ",".join(c.dataset for c in comparisons),
        "tunedml.final_runs": ",".join(c.run_id or "" for c in comparisons),
    }
    run = call(
        uri, lambda: mlflow.create_run(experiment_id, run_name=f"report-{time.strftime('%Y%m%d-%H%M%S')}", tags=tags)
    )
    log_batch(
        mlflow,
        run.info.run_id,
        metrics=[
            metric(f"diff_{m}_pp.{_metric_key(c.dataset)}", i.mean)
            for c in comparisons
            for m, i in c.differences.items()
        ],
    )
    mlflow.log_artifacts(run.info.run_id, str(folder))
    mlflow.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def _metric_key(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", Path(str(name)).name)


def download_model(uri: str, run_id: str, destination: str | Path) -> Path:
    """The model a final run saved (`tunedml retrain --save-model`), as a local folder for
    :func:`tunedml.retrain.load_model`."""
    mlflow = client(uri)
    Path(destination).mkdir(parents=True, exist_ok=True)
    return Path(call(uri, lambda: mlflow.download_artifacts(run_id, "model", str(destination))))
