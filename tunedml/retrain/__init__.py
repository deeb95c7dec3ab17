"""Final evaluation: retrain a chosen configuration and the CCE baseline on the same fresh draws.

A search picks a configuration on dev scores of the draws it saw; this package answers the question
that matters afterwards: on *other* draws, scored on the test split, is it better than a tuned
cross-entropy model, and by how much? Both configurations are trained on identical draws (same data
keys, same ``data.seed``/``train.seed`` offsets, same folds), so the comparison is paired: the
per-draw differences ``best_i - baseline_i`` cancel what comes from the draw itself.

Modules: :mod:`.selection` (which two configurations), :mod:`.draws` (the draws and where they run),
:mod:`.stats` (intervals and tests), :mod:`.saved` (saved models), :mod:`.options`; the results
themselves are plain data in :mod:`tunedml.results`. MLflow is reached only through
:mod:`tunedml.tracking`.
"""

from __future__ import annotations

import time
from typing import Any

from ..results import ROLES, Candidate, Comparison, ConfigResult, DrawResult, Interval, Snapshot
from .draws import (
    DEFAULT_DRAWS,
    FRESH_OFFSET,
    DrawCallback,
    Job,
    describe_protocol,
    draw_configs,
    drop_weaker_state,
    fetch,
    plan,
    run_local,
    run_ray,
    train_draw,
)
from .options import INTERVALS, RetrainOptions
from .saved import SavedModel, load_model, save_model, save_top_model
from .selection import (
    UNTUNED,
    Selection,
    align_baseline,
    apply_overrides,
    candidate_from_file,
    cce_defaults,
    read_yaml_config,
    select,
)
from .stats import MIN_PAIRED, bootstrap_interval, compare, paired_differences, paired_p_values, t_interval


def retrain(
    tokens: Any, best: Candidate, baseline: Candidate, options: RetrainOptions, on_draw: DrawCallback | None = None
) -> Comparison:
    """Train both configurations on the same draws; compare them draw by draw."""
    options.validate()
    baseline = align_baseline(best, baseline)
    start = time.perf_counter()
    per_role = {c.role: draw_configs(c.run_config, options.seeds) for c in (best, baseline)}
    jobs = [Job(role, i, cfgs[i]) for i in range(len(per_role["best"])) for role, cfgs in per_role.items()]
    how = plan(options, len(jobs))
    stream = (
        run_ray(jobs, tokens, options.keep_model, options, how)
        if how.ray
        else run_local(jobs, tokens, options.keep_model)
    )
    results = {"best": ConfigResult(best), "baseline": ConfigResult(baseline)}
    handles: dict[tuple[str, int], Any] = {}
    for job, result, handle in stream:
        results[job.role].draws.append(result)
        handles[(job.role, job.index)] = handle
        drop_weaker_state(handles, results["best"], job)
        if on_draw:
            on_draw(job, result)
    for r in results.values():
        r.draws.sort(key=lambda d: d.index)
    comparison = compare(
        str(best.config["data.dataset"]),
        list(tokens.corpus.label_names),
        describe_protocol(best.run_config),
        results["best"],
        results["baseline"],
        options,
    )
    if comparison.best_draw is not None:
        for role in ROLES:
            snapshot = fetch(handles.get((role, comparison.best_draw)))
            if snapshot is not None:
                comparison.snapshots[role] = snapshot
    comparison.seconds = time.perf_counter() - start
    return comparison


__all__ = [
    "DEFAULT_DRAWS",
    "FRESH_OFFSET",
    "INTERVALS",
    "MIN_PAIRED",
    "ROLES",
    "UNTUNED",
    "Candidate",
    "Comparison",
    "ConfigResult",
    "DrawResult",
    "Interval",
    "Job",
    "RetrainOptions",
    "SavedModel",
    "Selection",
    "Snapshot",
    "align_baseline",
    "apply_overrides",
    "bootstrap_interval",
    "candidate_from_file",
    "cce_defaults",
    "compare",
    "describe_protocol",
    "draw_configs",
    "load_model",
    "paired_differences",
    "paired_p_values",
    "read_yaml_config",
    "retrain",
    "save_model",
    "save_top_model",
    "select",
    "t_interval",
    "train_draw",
]
