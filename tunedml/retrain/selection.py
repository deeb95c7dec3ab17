"""Choosing the two configurations of a final evaluation: the best configuration (a recorded
search, run or file) and the CCE baseline (the best recorded CCE-only search, a run, a file, or
untuned CCE when asked for by name), both validated before anything trains."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from .. import tracking
from ..config import FIELDS, check_used, flatten, from_flat
from ..data import check_dataset_name
from ..errors import ConfigError, TrackingError
from ..losses import NO_DML
from ..model import resolve_model
from ..results import Candidate
from ..space import load_space, read_space_yaml

SHARED_PREFIXES = ("data.",)  # the baseline takes these from the best config, so the draws are identical
SHARED_KEYS = ("model.name", "train.seed", "train.device", "train.bf16", "train.threads")
UNTUNED = "defaults"  # --baseline defaults: plain CCE with every key at its default, asked for by name
CCE_SPACE = "search_spaces/cce.yaml"


def shared_keys(config: dict[str, Any]) -> dict[str, Any]:
    """The keys that fix the draws and the encoder: the baseline copies them from the best config."""
    return {k: v for k, v in config.items() if k.startswith(SHARED_PREFIXES) or k in SHARED_KEYS}


def apply_overrides(config: dict[str, Any], overrides: dict[str, Any], source: str) -> dict[str, Any]:
    """A validated full flat config with the user's command-line overrides on top."""
    return from_flat(config, source=source).with_overrides(overrides, source="command line").to_flat()


def align_baseline(best: Candidate, baseline: Candidate) -> Candidate:
    """The baseline on the best config's data, encoder and seeds, so that draw i is the same draw."""
    config = {**baseline.config, **shared_keys(best.config)}
    return replace(baseline, config=from_flat(config, source=baseline.source).to_flat())


def cce_defaults(overrides: dict[str, Any]) -> Candidate:
    """Plain CCE with every other key at its default: an untuned baseline."""
    return Candidate(
        "baseline", apply_overrides({"loss.name": NO_DML}, overrides, "CCE defaults"), "CCE defaults", untuned=True
    )


def read_yaml_config(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(fixed keys, searched keys) of a YAML file: a run config has no searched keys, a space may."""
    flat = flatten(read_space_yaml(path), path)  # a space's `include:` files merged in
    fixed = {k: v for k, v in flat.items() if not isinstance(v, dict)}
    searched = {k: v for k, v in flat.items() if isinstance(v, dict)}
    return fixed, searched


def candidate_from_file(
    role: str,
    path: str,
    overrides: dict[str, Any],
    recorded: dict[str, Any] | None = None,
    recorded_source: str | None = None,
    recorded_trials: int | None = None,
) -> Candidate:
    """A config file as is; a space file as its fixed values plus, for its searched keys, the
    values of ``recorded`` (the best recorded search of that kind) or else their defaults (untuned)."""
    fixed, searched = read_yaml_config(path)
    if not searched:
        return Candidate(role, apply_overrides(fixed, overrides, path), f"file {path}")
    load_space(path)  # validates the distributions, with the usual messages
    taken = {k: v for k, v in (recorded or {}).items() if k in searched or k.startswith("loss.")}
    config = {**taken, **fixed}
    if "loss.name" not in config:
        raise ConfigError(
            f"{path}: loss.name is searched in this space; a baseline needs one loss. "
            "Pass a run config or a space with a fixed loss.name (e.g. search_spaces/cce.yaml)"
        )
    if recorded and config.get("loss.name") != recorded.get("loss.name"):
        taken = {}  # the recorded search was another loss: its values do not apply
        config = dict(fixed)
    tuned = bool(recorded_source and taken)
    how = f"searched keys from {recorded_source}" if tuned else "searched keys at defaults"
    return Candidate(
        role,
        apply_overrides(config, overrides, path),
        f"space {path} ({how})",
        untuned=not tuned,
        trials=recorded_trials if tuned else None,
    )


@dataclass
class Selection:
    """What the user named: the configuration (a run, a file, or the best recorded search), the
    baseline (a file, a run, ``defaults``, or the best recorded CCE search) and overrides for both."""

    dataset: str | None = None
    run_id: str | None = None
    config_file: str | None = None
    baseline: str | None = None  # a YAML run config or space file, a run id, or "defaults"
    overrides: dict[str, Any] = field(default_factory=dict)  # flat keys from --data-dir/--model/--set
    tracking_uri: str = ""
    filters: dict[str, str] = field(default_factory=dict)  # --filter: which recorded searches may be compared

    def check(self) -> None:
        """What can be checked without the tracking store: cheap errors first."""
        if self.run_id and self.config_file:
            raise ConfigError("--run-id and --config both name the configuration to retrain; pass one of them")
        if self.dataset:
            check_dataset_name(self.dataset)
        if self.config_file and read_yaml_config(self.config_file)[1]:
            raise ConfigError(
                f"{self.config_file}: is a search space; --config takes a run config such as the "
                "output of `tunedml best --dataset DATASET` (or pass --run-id)"
            )
        apply_overrides({}, self.overrides, "command line")  # a bad --set key or value


def select(sel: Selection) -> tuple[Candidate, Candidate]:
    """The two configurations to compare, validated; TrackingError/ConfigError before any training.

    Defaults: the best recorded search over a space that tries DML losses, and the best recorded
    search over a CCE-only space as the baseline; without one, an error that says how to record it
    (or to ask for untuned CCE with ``--baseline defaults``).
    """
    sel.check()
    overrides = {**({"data.dataset": sel.dataset} if sel.dataset else {}), **sel.overrides}
    searches: dict[str, tuple[Any, Any]] = {}

    def recorded(dataset: str) -> tuple[Any, Any]:
        if dataset not in searches:
            searches[dataset] = tracking.best_searches(sel.tracking_uri, dataset, filters=sel.filters, like=sel.run_id)
        return searches[dataset]

    best = _select_best(sel, overrides, recorded)
    dataset = str(best.config["data.dataset"])
    check_dataset_name(dataset)
    resolve_model(str(best.config["model.name"]))
    wants_record = sel.baseline is None or (sel.baseline != UNTUNED and _is_file(sel.baseline))
    cce = recorded(dataset)[1] if wants_record else None
    baseline = align_baseline(best, _select_baseline(sel, overrides, cce, best))
    check_given(sel, best, baseline)
    return best, baseline


def check_given(sel: Selection, best: Candidate, baseline: Candidate) -> None:
    """What the user gave is used (config.check_used): --config's keys by the best configuration, a
    --baseline file's by the baseline, and each override of the command line by one of the two."""
    if sel.config_file:
        check_used(best.run_config, dict.fromkeys(read_yaml_config(sel.config_file)[0], sel.config_file))
    if sel.baseline and sel.baseline != UNTUNED and _is_file(sel.baseline):
        check_used(baseline.run_config, dict.fromkeys(read_yaml_config(sel.baseline)[0], sel.baseline))
    for key in sel.overrides:
        try:
            check_used(best.run_config, {key: "command line"})
        except ConfigError:
            check_used(baseline.run_config, {key: "command line"})


def _is_file(value: str) -> bool:
    return value.endswith((".yaml", ".yml")) or Path(value).exists()


def _select_best(sel: Selection, overrides: dict[str, Any], recorded: Callable[[str], tuple[Any, Any]]) -> Candidate:
    if sel.config_file:
        fixed, _ = read_yaml_config(sel.config_file)
        return Candidate("best", apply_overrides(fixed, overrides, sel.config_file), f"file {sel.config_file}")
    if sel.run_id:
        r = tracking.run_config(sel.tracking_uri, sel.run_id)
        return Candidate(
            "best",
            apply_overrides(r.config, overrides, r.source),
            r.source,
            sel.run_id,
            trials=r.trials,
            selection_score=r.search_score,
            rescored=r.rescored,
        )
    dataset = sel.dataset or str(FIELDS["data.dataset"].default)
    record = recorded(dataset)[0]
    if record is None:
        raise TrackingError(
            f"no search over a DML space recorded for dataset {dataset!r} at {sel.tracking_uri}; "
            "run `tunedml search --space search_spaces/dml.yaml` first, or pass --config or --run-id"
        )
    source = f"MLflow search run {record.run_id} (space {record.space})"
    return Candidate(
        "best",
        apply_overrides(record.config, overrides, source),
        source,
        record.run_id,
        trials=record.trials,
        selection_score=record.search_score,
        rescored=record.rescored,
    )


def _select_baseline(sel: Selection, overrides: dict[str, Any], cce: Any, best: Candidate) -> Candidate:
    if sel.baseline == UNTUNED:
        return cce_defaults(overrides)
    recorded_source = f"MLflow search run {cce.run_id} (space {cce.space})" if cce else None
    if sel.baseline is None:
        if cce is None:
            raise TrackingError(_no_baseline_search(str(best.config["data.dataset"]), sel.tracking_uri, best.trials))
        return Candidate(
            "baseline",
            apply_overrides(cce.config, overrides, recorded_source),
            recorded_source,
            cce.run_id,
            trials=cce.trials,
            selection_score=cce.search_score,
            rescored=cce.rescored,
        )
    if _is_file(sel.baseline):
        return candidate_from_file(
            "baseline",
            sel.baseline,
            overrides,
            cce.config if cce else None,
            recorded_source,
            cce.trials if cce else None,
        )
    r = tracking.run_config(sel.tracking_uri, sel.baseline)
    return Candidate(
        "baseline",
        apply_overrides(r.config, overrides, r.source),
        r.source,
        sel.baseline,
        trials=r.trials,
        selection_score=r.search_score,
        rescored=r.rescored,
    )


def _no_baseline_search(dataset: str, uri: str, trials: int | None) -> str:
    budget = f" --trials {trials}" if trials else ""
    return (
        f"no CCE-only search recorded for dataset {dataset!r} at {uri}, so the CCE baseline would be untuned; "
        f"record it with `tunedml search --datasets {dataset} --space {CCE_SPACE}{budget}` (the same budget "
        f"as the DML search), or pass --baseline {UNTUNED} to compare against untuned CCE"
    )
