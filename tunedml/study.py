"""`tunedml study`: the papers' whole pipeline, per dataset, resumable.

Per dataset: a search of the CCE baseline (``cce.yaml``) and a search of CCE + DML (``dml.yaml`` or
``--space``) with the same trials, then ``retrain`` of the DML search's best against the CCE
search's best on fresh draws; at the end one ``report`` over every dataset. Each stage is the
ordinary ``tunedml search``/``retrain``/``report`` command, run from an argument list by the CLI
(handed in as :class:`Commands`, so that this module does not import the CLI), and records what
that command records; a stage that fails fails the study (exit code 1), keeping the stages done. The study adds one run to the MLflow experiment ``tunedml/study`` per study
key (a hash of the settings that change results): a tag per completed stage names the run it
produced. Running the same command again (or with ``--resume``) skips every stage whose run is
recorded FINISHED, and continues an interrupted search with the search's own ``--resume``: search
names are fixed per study (``<dataset>-<space>-study-<key8>``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import yaml

from .choices import AUTO, SCHEDULERS, is_concurrency, is_gpus
from .errors import ConfigError, RunFailed, TunedMLError, unknown_choice
from .progress import fmt_duration
from .space import read_space_yaml
from .tracking.studies import REPORT_DATASETS_TAG, STAGE_TAG, STUDY_EXPERIMENT, Ledger

SEARCH_KINDS = ("cce", "dml")


class StudyError(TunedMLError):
    """A study cannot start: bad settings (exit code 2)."""


class StageFailed(RunFailed):
    """A stage ran and ended without what the next one needs (exit code 1); the stages done are
    kept, and the same command continues the study once the cause is fixed."""


class StudyInterrupted(KeyboardInterrupt):
    """Ctrl-C: the CLI prints the message (the command that continues the study) and exits 130."""


@dataclass(frozen=True)
class Commands:
    """How the study runs its stages: ``run(["search", ...])`` runs a tunedml command and returns its
    exit code; ``check(["search", ...])`` validates a search's arguments without running it."""

    run: Callable[[list[str]], int]
    check: Callable[[list[str]], None]


def shipped_space(name: str) -> str:
    """A space shipped with tunedml: the checkout's ``search_spaces/`` (source or editable install),
    else the copy a wheel installs as ``tunedml/search_spaces/``."""
    checkout = Path(__file__).resolve().parents[1] / "search_spaces" / f"{name}.yaml"
    if checkout.is_file():
        return str(checkout)
    with contextlib.suppress(ModuleNotFoundError):
        packaged = resources.files("tunedml").joinpath("search_spaces", f"{name}.yaml")
        if packaged.is_file():
            return str(packaged)
    raise StudyError(f"the shipped search space {name}.yaml is missing from this installation; pass --space")


def run_defaults() -> dict[str, Any]:
    """Every key's default in this installation. A key that neither the spaces nor --set name runs
    at its default, so a tunedml whose defaults differ (``head.init`` became ``probe``) runs other
    trials under the same command: the key follows the defaults, and resuming never mixes the two."""
    from .config import RunConfig

    return RunConfig().to_flat()


@dataclass(frozen=True)
class Settings:
    """One study. The fields above ``cpus_per_trial`` change results and make the study key; the
    rest say where and how it runs (a study resumes on other resources or another cluster)."""

    datasets: tuple[str, ...]
    trials: int = 20
    seeds: int = 5
    repeats: int = 3
    rescore: int = 3  # the leading trials of each search re-scored on fresh draws (search --rescore)
    rescore_draws: int = 3
    space: str = ""  # the DML space; "" is the shipped dml.yaml
    sets: tuple[str, ...] = ()
    model: str | None = None
    data_dir: str | None = None
    scheduler: str = "asha"
    sampler_seed: int = 0  # TPE's, in both searches
    concurrency: int | str = AUTO  # trials at a time in both searches; auto: one per CPU and per GPU
    cpus_per_trial: float | None = None
    gpus_per_trial: float | str = AUTO  # per trial and per retrain draw
    address: str | None = None
    storage: str = ""  # "" is ./tunedml_results
    tracking_uri: str = ""
    out: str = "report"
    resume: bool = False
    verbose: bool = False

    def validate(self) -> None:
        from .data import TASKS

        if not self.datasets:
            raise ConfigError("--datasets: give one or more tasks (e.g. sst2,mr) or all")
        for name in self.datasets:
            if name not in TASKS:
                raise ConfigError("--datasets: " + unknown_choice("dataset", name, TASKS))
        for option, value in (
            ("--trials", self.trials),
            ("--seeds", self.seeds),
            ("--repeats", self.repeats),
            ("--rescore-draws", self.rescore_draws),
        ):
            if value < 1:
                raise ConfigError(f"{option} must be >= 1, got {value}")
        if not is_concurrency(self.concurrency):
            raise ConfigError(f"--concurrency must be auto or >= 1, got {self.concurrency}")
        if not 0 <= self.rescore <= self.trials:
            raise ConfigError(f"--rescore must be between 0 and --trials ({self.trials}), got {self.rescore}")
        for space in (self.dml_space, self.cce_space):
            if not Path(space).is_file():
                raise ConfigError(f"--space: {space} is not a file")
        if self.scheduler not in SCHEDULERS:
            raise ConfigError("--scheduler: " + unknown_choice("scheduler", self.scheduler, SCHEDULERS))
        if not is_gpus(self.gpus_per_trial):
            raise ConfigError(f"--gpus-per-trial must be auto or >= 0, got {self.gpus_per_trial}")

    @property
    def dml_space(self) -> str:
        return self.space or shipped_space("dml")

    @property
    def cce_space(self) -> str:
        return shipped_space("cce")

    @property
    def storage_path(self) -> str:
        return self.storage or str(Path("tunedml_results").resolve())

    def overrides(self) -> dict[str, str]:
        """--set as key -> value text, the last of a repeated key winning (as in ``tunedml train``)."""
        pairs = (s.split("=", 1) for s in self.sets if "=" in s)
        return {k.strip(): v.strip() for k, v in pairs}

    def key(self, defaults: dict[str, Any] | None = None) -> str:
        """Hash of everything that changes a study's results: budgets, seeds, spaces' text, --set,
        model, data and the installed tunedml's defaults (``defaults``, else :func:`run_defaults`);
        not where it runs, where it records, nor which datasets (each has its own stages)."""
        what = {
            "trials": self.trials,
            "seeds": self.seeds,
            "repeats": self.repeats,
            "scheduler": self.scheduler,
            **({"rescore": self.rescore, "rescore_draws": self.rescore_draws} if self.rescore else {}),
            "seed": self.sampler_seed,
            "concurrency": self.concurrency,
            "model": self.model or "",
            "data_dir": str(Path(self.data_dir).resolve()) if self.data_dir else "",
            "set": sorted(self.overrides().items()),
            "spaces": [_space_digest(p) for p in (self.cce_space, self.dml_space)],
            "defaults": json.dumps(run_defaults() if defaults is None else defaults, sort_keys=True, default=str),
        }
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]

    def params(self) -> dict[str, Any]:
        """What the study's MLflow run records as its params."""
        return {
            "trials": self.trials,
            "seeds": self.seeds,
            "repeats": self.repeats,
            "rescore": self.rescore,
            "rescore_draws": self.rescore_draws,
            "space": Path(self.dml_space).name,
            "set": " ".join(self.sets) or "-",
            "model": self.model or "default",
            "scheduler": self.scheduler,
            "sampler_seed": self.sampler_seed,
            "concurrency": self.concurrency,
        }

    def command(self) -> str:
        """The ``tunedml study`` command line of these settings (the one that continues the study)."""
        argv = [
            "tunedml",
            "study",
            "--datasets",
            ",".join(self.datasets),
            "--trials",
            str(self.trials),
            "--seeds",
            str(self.seeds),
            "--repeats",
            str(self.repeats),
            "--rescore",
            str(self.rescore),
            "--rescore-draws",
            str(self.rescore_draws),
        ]
        for s in self.sets:
            argv += ["--set", s]
        optional = {
            "--space": self.space,
            "--model": self.model,
            "--data-dir": self.data_dir,
            "--scheduler": self.scheduler if self.scheduler != "asha" else None,
            "--sampler-seed": str(self.sampler_seed) if self.sampler_seed else None,
            "--concurrency": str(self.concurrency) if self.concurrency != AUTO else None,
            "--cpus-per-trial": _num(self.cpus_per_trial),
            "--gpus-per-trial": None if self.gpus_per_trial == AUTO else _num(self.gpus_per_trial),
            "--address": self.address,
            "--storage": self.storage,
            "--tracking-uri": self.tracking_uri,
            "--out": self.out if self.out != "report" else None,
        }
        for option, value in optional.items():
            if value:
                argv += [option, value]
        return shlex.join(argv)


def _num(value: float | str | None) -> str | None:
    return None if value is None else value if isinstance(value, str) else f"{value:g}"


# ----------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Stage:
    """One step of a study; ``units`` is its cost in model trainings, for the ETA."""

    dataset: str  # "" for the report
    kind: str  # cce, dml, retrain or report
    units: int

    @property
    def tag(self) -> str:
        return STAGE_TAG + (f"{self.dataset}.{self.kind}" if self.dataset else self.kind)

    @property
    def title(self) -> str:
        what = {"cce": "CCE search", "dml": "DML search", "retrain": "retrain", "report": "report"}[self.kind]
        return f"{self.dataset} {what}" if self.dataset else what


def plan(settings: Settings) -> list[Stage]:
    """Per dataset the two searches then the retrain; the report last. A trial trains ``repeats``
    models, re-scoring ``rescore`` x ``rescore_draws``, a retrain 2 x ``seeds`` (best and baseline on
    the same draws)."""
    stages = []
    search_units = settings.trials * settings.repeats + settings.rescore * settings.rescore_draws
    for dataset in settings.datasets:
        stages += [Stage(dataset, kind, search_units) for kind in SEARCH_KINDS]
        stages.append(Stage(dataset, "retrain", 2 * settings.seeds))
    return stages + [Stage("", "report", 0)]


def _space_digest(path: str) -> str:
    """Of the space file and every file it includes: an edited common part is another study."""
    sources: list[tuple[str, str]] = []
    read_space_yaml(path, sources)
    return hashlib.sha256("\0".join(text for _, text in sources).encode()).hexdigest()


def search_name(settings: Settings, dataset: str, kind: str, key: str) -> str:
    return f"{dataset}-{Path(space_file(settings, kind)).stem}-study-{key[:8]}"


def space_file(settings: Settings, kind: str) -> str:
    return settings.cce_space if kind == "cce" else settings.dml_space


def study_spaces(settings: Settings, key: str, folder: Path) -> dict[str, str]:
    """The space file each search runs: the given one, or, where --set names keys that the space
    (or a file it includes) defines at its top level, a copy with those keys taken out, its
    includes merged in (written under ``folder``, with the same file name so the space keeps its
    name), so that --set gives those keys their value in every trial instead of clashing."""
    sets = set(settings.overrides())
    files = {}
    for kind in SEARCH_KINDS:
        source = Path(space_file(settings, kind))
        merged = read_space_yaml(source)
        removed = sorted(k for k in merged if k in sets)
        if not removed:
            files[kind] = str(source)
            continue
        text = (
            f"# {source.name} (includes merged in) without {', '.join(removed)}: "
            "given by tunedml study --set\n"
            + yaml.safe_dump({k: v for k, v in merged.items() if k not in sets}, sort_keys=False)
        )
        target = folder / f"study-{key[:8]}-{kind}" / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        files[kind] = str(target)
    return files


def search_argv(settings: Settings, dataset: str, space: str, name: str, resume: bool) -> list[str]:
    argv = [
        "search",
        "--datasets",
        dataset,
        "--space",
        space,
        "--trials",
        str(settings.trials),
        "--repeats",
        str(settings.repeats),
        "--rescore",
        str(settings.rescore),
        "--rescore-draws",
        str(settings.rescore_draws),
        "--scheduler",
        settings.scheduler,
        "--sampler-seed",
        str(settings.sampler_seed),
        "--concurrency",
        str(settings.concurrency),
        "--storage",
        settings.storage_path,
        "--name",
        name,
        "--tracking-uri",
        settings.tracking_uri,
    ]
    argv += ["--resume"] if resume else []
    argv += _common(settings) + _pairs(
        {"--cpus-per-trial": _num(settings.cpus_per_trial), "--gpus-per-trial": _num(settings.gpus_per_trial)}
    )
    return argv


def retrain_argv(settings: Settings, dataset: str, dml_run: str, cce_run: str) -> list[str]:
    """Exactly this study's two searches: the DML search's best against the CCE search's best."""
    argv = [
        "retrain",
        "--dataset",
        dataset,
        "--run-id",
        dml_run,
        "--baseline",
        cce_run,
        "--seeds",
        str(settings.seeds),
        "--tracking-uri",
        settings.tracking_uri,
    ]
    return (
        argv
        + _common(settings)
        + _pairs({"--cpus-per-draw": _num(settings.cpus_per_trial), "--gpus-per-draw": _num(settings.gpus_per_trial)})
    )


def report_argv(settings: Settings) -> list[str]:
    return [
        "report",
        "--datasets",
        ",".join(settings.datasets),
        "--out",
        settings.out,
        "--tracking-uri",
        settings.tracking_uri,
    ]


def _common(settings: Settings) -> list[str]:
    argv = _pairs({"--model": settings.model, "--data-dir": settings.data_dir, "--address": settings.address})
    argv += ["--verbose"] if settings.verbose else []
    for s in settings.sets:
        argv += ["--set", s]
    return argv


def _pairs(options: dict[str, str | None]) -> list[str]:
    return [x for option, value in options.items() if value is not None for x in (option, value)]


def search_action(finished_before: bool, started_before: bool, restorable: bool) -> str:
    """What a search stage does: ``skip`` (its run is FINISHED), ``resume`` (an interrupted search
    that Ray can restore) or ``start`` (never started, or stopped before Ray saved anything)."""
    if finished_before:
        return "skip"
    return "resume" if started_before and restorable else "start"


def restorable(storage: str, name: str) -> bool:
    """Whether Ray saved a search state to continue from (any storage Ray supports)."""
    from ray import tune

    return bool(tune.Tuner.can_restore(f"{storage.rstrip('/')}/{name}"))


# ----------------------------------------------------------------- running it


@dataclass
class Clock:
    """The study's elapsed time, and an ETA from the stages run in this command (skipped ones are free)."""

    start: float = field(default_factory=time.perf_counter)
    units_done: int = 0
    seconds_of_work: float = 0.0

    def record(self, units: int, seconds: float) -> None:
        self.units_done += units
        self.seconds_of_work += seconds

    def eta(self, units_left: int) -> str:
        if units_left <= 0:
            return "none left"
        if not self.units_done:
            return "?"
        return fmt_duration(self.seconds_of_work / self.units_done * units_left)

    def elapsed(self) -> str:
        return fmt_duration(time.perf_counter() - self.start)


class Study:
    """Runs the plan stage by stage; every stage either is skipped (recorded FINISHED) or runs."""

    def __init__(self, settings: Settings, commands: Commands, stream: Any = None):
        self.settings = settings
        self.commands = commands
        self.stream = stream
        self.key = settings.key()
        self.stages = plan(settings)
        self.ledger: Ledger  # opened by run(), once the store has been checked
        self.clock = Clock()
        self.pending: list[int] = []  # indices of the stages not done when the study (re)started
        self.runs: dict[tuple[str, str], str] = {}  # (dataset, kind) -> the run that stage produced
        self.spaces: dict[str, str] = {}

    def prepare(self, folder: Path | None = None) -> None:
        """Before anything runs or is recorded: each search's space file (written under ``folder``
        where --set takes keys out of it), and every search checked as `tunedml search --dry-run`
        checks it."""
        s = self.settings
        local = Path(s.storage_path) if "://" not in s.storage_path else Path(tempfile.gettempdir()) / "tunedml-study"
        self.spaces = study_spaces(s, self.key, folder or local)
        for dataset in s.datasets:
            for kind in SEARCH_KINDS:
                self.commands.check(search_argv(s, dataset, self.spaces[kind], "check", resume=False))

    def dry_run(self) -> int:
        """The plan after every check: each stage, done before or to run; nothing run or recorded."""
        from .tracking import store_exists

        s = self.settings
        ledger = Ledger(s.tracking_uri, self.key) if store_exists(s.tracking_uri) else None
        known = ledger is not None and ledger.find() is not None
        self.say(
            f"study {self.key[:8]}: {', '.join(s.datasets)}; {s.trials} + {s.trials} trials (repeats {s.repeats}), "
            f"{s.seeds} draws; " + ("recorded before" if known else "a new study")
        )
        for index, stage in enumerate(self.stages):
            recorded = ledger.done(stage) if known else None
            self.say(
                f"study {stage.title}: "
                + (f"done before (run {recorded[:8]})" if recorded else "to run")
                + f"  [{index + 1}/{len(self.stages)}]"
            )
        self.say("dry run: every check passed; nothing was run or recorded")
        return 0

    def run(self) -> int:
        s = self.settings
        if not self.spaces:
            self.prepare()
        self.ledger = Ledger(s.tracking_uri, self.key)
        known = self.ledger.open(s.params(), create=not s.resume)
        self.pending = [i for i, stage in enumerate(self.stages) if self.ledger.done(stage) is None]
        done = len(self.stages) - len(self.pending)
        self.say(
            f"study {self.key[:8]}: {', '.join(s.datasets)}; {s.trials} + {s.trials} trials "
            f"(repeats {s.repeats}; the {s.rescore} best re-scored on {s.rescore_draws} draws), {s.seeds} draws; "
            f"{done} of {len(self.stages)} stages done before" + ("" if known else " (new study)")
        )
        index = 0
        try:
            for index, stage in enumerate(self.stages):
                self.run_stage(index, stage)
        except KeyboardInterrupt:
            self.ledger.end("KILLED")
            raise StudyInterrupted(
                f"{self.stages[index].title} stopped, the stages done are kept; "
                f"continue the study with: {s.command()} --resume"
            ) from None
        except BaseException:
            self.ledger.end("FAILED")
            raise
        self.ledger.end("FINISHED")
        self.print_results()
        return 0

    def run_stage(self, index: int, stage: Stage) -> None:
        recorded = self.ledger.done(stage)
        if stage.kind == "report" and recorded and not self.report_is_current():
            recorded = None
        if recorded:
            if stage.dataset:
                self.runs[(stage.dataset, stage.kind)] = recorded
            self.line(index, stage, f"done before (run {recorded[:8]})")
            return
        start, start_ms = time.perf_counter(), int(time.time() * 1000)
        if stage.kind in SEARCH_KINDS:
            run_id, what = self.search(stage)
        elif stage.kind == "retrain":
            run_id, what = self.retrain(stage, start_ms)
        else:
            run_id, what = self.report(start_ms)
        seconds = time.perf_counter() - start
        self.clock.record(stage.units, seconds)
        if stage.dataset:
            self.runs[(stage.dataset, stage.kind)] = run_id
        self.ledger.mark(
            stage, run_id, **({REPORT_DATASETS_TAG: ",".join(self.settings.datasets)} if stage.kind == "report" else {})
        )
        self.line(index, stage, f"{what} in {fmt_duration(seconds)} (run {run_id[:8]})")

    def search(self, stage: Stage) -> tuple[str, str]:
        s = self.settings
        name = search_name(s, stage.dataset, stage.kind, self.key)
        previous = self.ledger.search_run(stage.dataset, name)
        finished = previous is not None and previous.info.status == "FINISHED"
        action = search_action(
            finished, previous is not None, previous is not None and not finished and restorable(s.storage_path, name)
        )
        if action != "skip":
            self.command(
                search_argv(s, stage.dataset, self.spaces[stage.kind], name, resume=action == "resume"), stage.title
            )
            previous = self.ledger.search_run(stage.dataset, name)
        if previous is None or previous.info.status != "FINISHED":
            status = previous.info.status if previous else "not recorded"
            raise StageFailed(
                f"{stage.title}: search {name} did not finish ({status}); every trial failed or "
                f"none scored: see its MLflow run{f' {previous.info.run_id}' if previous else ''}"
            )
        tags = previous.data.tags
        counts = [tags.get(f"tunedml.trials_{k}", "?") for k in ("finished", "stopped_early", "failed")]
        what = (
            f"{sum(int(c) for c in counts if c.isdigit())} trials ({counts[0]} finished, {counts[1]} stopped early, "
            f"{counts[2]} failed), best dev {previous.data.metrics.get('best_score', float('nan')):.4f}"
        )
        return previous.info.run_id, ("resumed: " if action == "resume" else "") + what

    def retrain(self, stage: Stage, start_ms: int) -> tuple[str, str]:
        dml, cce = self.runs[(stage.dataset, "dml")], self.runs[(stage.dataset, "cce")]
        self.command(retrain_argv(self.settings, stage.dataset, dml, cce), stage.title)
        run_id = self.ledger.final_run(stage.dataset, dml, start_ms)
        if run_id is None:
            raise StageFailed(f"{stage.title}: the retrain of search run {dml} recorded no finished final run")
        diff = self.ledger.client.get_run(run_id).data.metrics.get("diff_accuracy_pp")
        return run_id, f"{self.settings.seeds} draws each" + (
            f", DML - CCE {diff:+.2f} pp accuracy" if diff is not None else ""
        )

    def report(self, start_ms: int) -> tuple[str, str]:
        self.command(report_argv(self.settings), "report")
        run = self.ledger.report_run(start_ms)
        if run is None:
            raise StageFailed("report: no finished report run recorded")
        finals = {self.runs.get((d, "retrain")) for d in self.settings.datasets}
        used = set(run.data.tags.get("tunedml.final_runs", "").split(","))
        note = "" if finals <= used else "; note: it shows a later retrain than this study's for some dataset"
        return run.info.run_id, f"{Path(self.settings.out) / 'results.md'}{note}"

    def report_is_current(self) -> bool:
        """A recorded report counts only for the same datasets and while its files are still there."""
        return (
            self.ledger.tag(REPORT_DATASETS_TAG) == ",".join(self.settings.datasets)
            and (Path(self.settings.out) / "results.md").is_file()
        )

    def command(self, argv: list[str], title: str) -> None:
        """Run one tunedml command; its summary on stdout is not shown (the study prints its own).
        Whatever stops it (bad input found late, a run that produced nothing) fails the stage."""
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                code = self.commands.run(argv)
        except (TunedMLError, RunFailed) as e:
            raise StageFailed(f"{title}: {e}") from None
        if code != 0:
            raise StageFailed(f"{title}: tunedml {argv[0]} exited with code {code}: {shlex.join(['tunedml', *argv])}")

    def line(self, index: int, stage: Stage, text: str) -> None:
        left = sum(self.stages[i].units for i in self.pending if i > index)
        self.say(
            f"study {stage.title}: {text}  [{index + 1}/{len(self.stages)}]  "
            f"elapsed {self.clock.elapsed()}  ETA {self.clock.eta(left)}"
        )

    def say(self, text: str) -> None:
        print(text, file=self.stream or sys.stderr, flush=True)

    def print_results(self) -> None:
        results = Path(self.settings.out) / "results.md"
        if results.is_file():
            print(results.read_text(), end="")
        print(
            f"study {self.key[:8]} finished: report in {self.settings.out}/, MLflow run {self.ledger.run_id} "
            f"in experiment {STUDY_EXPERIMENT} at {self.settings.tracking_uri}"
        )


def run_study(settings: Settings, commands: Commands, dry_run: bool = False) -> int:
    """Validate everything (settings, then every search as its --dry-run does), then the tracking
    store (``settings.tracking_uri``, else $MLFLOW_TRACKING_URI or ./mlflow.db: opened only after
    that, and not at all for a dry run), then run the study, or for ``dry_run`` show its stages."""
    from .tracking import check_tracking, resolve_tracking_uri

    settings.validate()
    settings = replace(settings, tracking_uri=resolve_tracking_uri(settings.tracking_uri or None))
    study = Study(settings, commands)
    if dry_run:
        with tempfile.TemporaryDirectory() as tmp:
            study.prepare(Path(tmp))
        check_tracking(settings.tracking_uri, connect=False)
        return study.dry_run()
    study.prepare()
    check_tracking(settings.tracking_uri)
    return study.run()
