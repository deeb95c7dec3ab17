"""The results table over datasets and its plots, from final evaluations (:class:`Comparison`).

Like the tables of the DML-for-text papers: one row per dataset with the CCE baseline, the best
configuration (its loss), each side's spread over draws (std, worst draw, collapsed draws) and
search budget, and the paired difference in percentage points with its interval and p-values, as
Markdown and CSV. Two kinds of PNG: the differences with their intervals, and per
dataset a 2-D projection of test embeddings coloured by class with the class proxies marked, for
the CCE baseline and the best configuration side by side, so a reader sees what the loss did to
the embedding space. Nothing here reads MLflow: the caller passes the comparisons in.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import choices
from .errors import ConfigError, unknown_choice
from .losses import NO_DML
from .metrics import METRICS, check_metric
from .progress import fmt_duration
from .results import Candidate, Comparison, ConfigResult, DrawResult, Interval, Snapshot
from .retrain import MIN_PAIRED, Job

METRIC_NAMES = {"accuracy": "accuracy", "macro_f1": "macro-F1"}
INTERVAL_NAMES = {"t": "paired Student t interval", "bootstrap": "percentile-bootstrap interval over draws"}
MAX_POINTS = 2000  # test points per projection panel: enough to see the classes, light enough to draw
UNTUNED_MARK, BUDGET_MARK = "†", "‡"


@dataclass
class ReportRow:
    dataset: str
    protocol: str
    draws: int  # paired draws
    baseline_loss: str
    baseline_mean: float  # percent
    baseline_std: float
    best_loss: str
    best_mean: float
    best_std: float
    diff_mean: float  # percentage points
    diff_low: float  # nan: no interval (fewer than MIN_PAIRED paired draws)
    diff_high: float
    baseline_worst: float = float("nan")
    baseline_collapsed: int = 0
    baseline_untuned: bool = False
    baseline_trials: int | None = None
    best_worst: float = float("nan")
    best_collapsed: int = 0
    best_trials: int | None = None
    interval: str = "t"
    confidence: float = 0.95
    p_t: float | None = None
    p_wilcoxon: float | None = None
    # how each side was chosen, in percent: its dev score at selection and its re-scored dev (mean, std)
    baseline_selection: float | None = None
    baseline_rescored: tuple[float, float] | None = None
    best_selection: float | None = None
    best_rescored: tuple[float, float] | None = None

    @property
    def baseline_optimism(self) -> float | None:
        """Dev at selection − test mean (pp): how far the search's score overstated the test."""
        return None if self.baseline_selection is None else self.baseline_selection - self.baseline_mean

    @property
    def best_optimism(self) -> float | None:
        return None if self.best_selection is None else self.best_selection - self.best_mean

    @property
    def has_interval(self) -> bool:
        return bool(np.isfinite(self.diff_low) and np.isfinite(self.diff_high))

    @property
    def significant(self) -> bool:
        """The interval exists and excludes zero."""
        return self.has_interval and (self.diff_low > 0 or self.diff_high < 0)

    @property
    def budgets_differ(self) -> bool:
        return (
            self.baseline_trials is not None
            and self.best_trials is not None
            and self.baseline_trials != self.best_trials
        )


def check_projection(projection: str) -> None:
    if projection not in choices.PROJECTIONS:
        raise ConfigError("--projection: " + unknown_choice("projection", projection, choices.PROJECTIONS))


def rows(comparisons: list[Comparison], metric: str = "accuracy") -> list[ReportRow]:
    """One row per comparison (i.e. per dataset), scores in percent."""
    check_metric(metric)
    nan = float("nan")
    out = []
    for c in comparisons:
        base, best = c.baseline.summary()[metric], c.best.summary()[metric]
        diff = c.differences.get(metric)
        low = diff.low if diff is not None and diff.exists else nan
        high = diff.high if diff is not None and diff.exists else nan
        out.append(
            ReportRow(
                c.dataset,
                c.protocol,
                len(c.paired),
                c.baseline.candidate.loss,
                100 * base["mean"],
                100 * base["std"],
                c.best.candidate.loss,
                100 * best["mean"],
                100 * best["std"],
                diff.mean if diff else nan,
                low,
                high,
                100 * base["worst"],
                c.baseline.collapsed,
                c.baseline.candidate.untuned,
                c.baseline.candidate.trials,
                100 * best["worst"],
                c.best.collapsed,
                c.best.candidate.trials,
                diff.method if diff else "t",
                diff.confidence if diff else 0.95,
                diff.p_t if diff else None,
                diff.p_wilcoxon if diff else None,
                *_selection(c.baseline.candidate),
                *_selection(c.best.candidate),
            )
        )
    return out


def _selection(c: Candidate) -> tuple[float | None, tuple[float, float] | None]:
    """(dev at selection, (re-scored mean, std)) in percent."""
    selection = None if c.selection_score is None else 100 * c.selection_score
    rescored = None if c.rescored is None else (100 * c.rescored[0], 100 * c.rescored[1])
    return selection, rescored


def _pm(mean: float, std: float) -> str:
    return f"{mean:.1f} ± {std:.1f}"


def _p(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}" if value >= 0.001 else f"{value:.0e}"


def _trials(n: int | None) -> str:
    return "–" if n is None else str(n)


def _diff(r: ReportRow) -> str:
    if not np.isfinite(r.diff_mean):
        return "–"
    if not r.has_interval:
        return f"{r.diff_mean:+.1f} (no interval: {r.draws} draws)"
    mark = " *" if r.significant else ""
    return f"{r.diff_mean:+.1f} [{r.diff_low:+.1f}, {r.diff_high:+.1f}]{mark}"


def caption(comparisons: list[Comparison], metric: str = "accuracy") -> str:
    """What the numbers are: the spread, and the interval's method and confidence."""
    intervals = [c.differences[metric] for c in comparisons if metric in c.differences]
    methods = sorted({i.method for i in intervals}) or ["t"]
    conf = intervals[0].confidence if intervals else 0.95
    how = " or ".join(INTERVAL_NAMES.get(m, m) for m in methods)
    return (
        f"Test {METRIC_NAMES[metric]} (%), mean ± sample std over few-shot draws, the worst draw and the number "
        f"of collapsed draws (every prediction one class), CCE / best. Δ = best − CCE in percentage points, "
        f"paired over the same draws, with its {conf:.0%} {how} (* = interval excludes 0; none below "
        f"{MIN_PAIRED} paired draws) and the two-sided p-values of a paired t-test and of the Wilcoxon "
        "signed-rank test. Trials: each side's search budget."
    )


def markdown(comparisons: list[Comparison], metric: str = "accuracy") -> str:
    """The table as Markdown, with a caption that says what the numbers are and notes under it."""
    table = rows(comparisons, metric)
    lines = [
        caption(comparisons, metric),
        "",
        "| Dataset | Protocol | Draws | CCE baseline | Best configuration | Loss | Worst draw | Collapsed "
        "| Trials | Δ (pp) | p (t / Wilcoxon) |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in table:
        base = _pm(r.baseline_mean, r.baseline_std) + (f" {UNTUNED_MARK}" if r.baseline_untuned else "")
        trials = f"{_trials(r.baseline_trials)} / {_trials(r.best_trials)}" + (
            f" {BUDGET_MARK}" if r.budgets_differ else ""
        )
        lines.append(
            f"| {r.dataset} | {r.protocol} | {r.draws} | {base} | {_pm(r.best_mean, r.best_std)} | "
            f"{r.best_loss} | {r.baseline_worst:.1f} / {r.best_worst:.1f} | "
            f"{r.baseline_collapsed} / {r.best_collapsed} | {trials} | {_diff(r)} | "
            f"{_p(r.p_t)} / {_p(r.p_wilcoxon)} |"
        )
    lines += ["", *optimism_table(table)]
    notes = []
    if any(r.baseline_untuned for r in table):
        notes.append(f"{UNTUNED_MARK} untuned baseline: CCE at default settings, no search chose them.")
    if any(r.budgets_differ for r in table):
        notes.append(
            f"{BUDGET_MARK} the two searches had different budgets (trials); the comparison favours the side with more."
        )
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def optimism_table(table: list[ReportRow]) -> list[str]:
    """How far each side's dev score at selection overstated its test mean: the winner's curse."""
    out = [
        "How each configuration was chosen: its dev score in the search that chose it (for a re-scored search, "
        "the chosen trial's own search score), its mean ± std over the re-scoring draws where the leaders were "
        "re-scored, and the test mean above; optimism = dev at selection − test (pp).",
        "",
        "| Dataset | Side | Loss | Dev at selection | Re-scored dev | Test | Optimism (pp) |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in table:
        for side, loss, selection, rescored, test, optimism in (
            ("CCE", r.baseline_loss, r.baseline_selection, r.baseline_rescored, r.baseline_mean, r.baseline_optimism),
            ("best", r.best_loss, r.best_selection, r.best_rescored, r.best_mean, r.best_optimism),
        ):
            out.append(
                f"| {r.dataset} | {side} | {loss} | {_num(selection)} | "
                f"{'–' if rescored is None else _pm(*rescored)} | {test:.1f} | "
                f"{'–' if optimism is None else f'{optimism:+.1f}'} |"
            )
    return out


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


CSV_COLUMNS = (
    "dataset",
    "protocol",
    "draws",
    "metric",
    "baseline_loss",
    "baseline_untuned",
    "baseline_trials",
    "baseline_mean",
    "baseline_std",
    "baseline_worst",
    "baseline_collapsed",
    "best_loss",
    "best_trials",
    "best_mean",
    "best_std",
    "best_worst",
    "best_collapsed",
    "diff_pp",
    "diff_low",
    "diff_high",
    "interval",
    "confidence",
    "p_t",
    "p_wilcoxon",
    "significant",
    "budgets_differ",
    "baseline_dev_selection",
    "baseline_dev_rescored",
    "baseline_dev_rescored_std",
    "baseline_optimism",
    "best_dev_selection",
    "best_dev_rescored",
    "best_dev_rescored_std",
    "best_optimism",
)


def write_csv(comparisons: list[Comparison], path: str | Path) -> Path:
    """Every metric, one row per (dataset, metric); scores in percent, differences in points."""
    path = Path(path)

    def num(v: float | None) -> float | str:
        return "" if v is None or not np.isfinite(v) else round(float(v), 3)

    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for metric in METRICS:
            for r in rows(comparisons, metric):
                writer.writerow(
                    [
                        r.dataset,
                        r.protocol,
                        r.draws,
                        metric,
                        r.baseline_loss,
                        r.baseline_untuned,
                        _trials(r.baseline_trials).replace("–", ""),
                        num(r.baseline_mean),
                        num(r.baseline_std),
                        num(r.baseline_worst),
                        r.baseline_collapsed,
                        r.best_loss,
                        _trials(r.best_trials).replace("–", ""),
                        num(r.best_mean),
                        num(r.best_std),
                        num(r.best_worst),
                        r.best_collapsed,
                        num(r.diff_mean),
                        num(r.diff_low),
                        num(r.diff_high),
                        r.interval,
                        r.confidence,
                        "" if r.p_t is None else r.p_t,
                        "" if r.p_wilcoxon is None else r.p_wilcoxon,
                        r.significant,
                        r.budgets_differ,
                        *_selection_cells(r.baseline_selection, r.baseline_rescored, r.baseline_optimism, num),
                        *_selection_cells(r.best_selection, r.best_rescored, r.best_optimism, num),
                    ]
                )
    return path


def _selection_cells(
    selection: float | None,
    rescored: tuple[float, float] | None,
    optimism: float | None,
    num: Callable[[float | None], float | str],
) -> list[float | str]:
    return [
        num(selection),
        num(rescored[0] if rescored else None),
        num(rescored[1] if rescored else None),
        num(optimism),
    ]


def describe_candidate(c: Candidate) -> str:
    """``proxy_anchor (MLflow search run 3f2a… (space dml), 40 trials)``; untuned said so."""
    how = [c.source] + ([f"{c.trials} trials"] if c.trials is not None else []) + (["untuned"] if c.untuned else [])
    return f"{c.loss} ({', '.join(how)})"


def draw_line(job: Job, result: DrawResult) -> str:
    """A progress line for one finished draw."""
    fold = f", fold {result.fold}" if result.fold is not None else ""
    what = f"{job.role:<8} {job.cfg.loss.name:<14} draw {result.index} (data.seed {result.data_seed}{fold})"
    if not result.ok:
        return f"{what}: FAILED {result.error}"
    t = result.test
    collapsed = "  COLLAPSED (one class)" if result.collapsed else ""
    return (
        f"{what}: test acc {t['accuracy']:.4f}  macro-F1 {t['macro_f1']:.4f}{collapsed}  {fmt_duration(result.seconds)}"
    )


def _side_label(label: str, r: ConfigResult) -> str:
    c = r.candidate
    extra = [c.loss] + (["untuned"] if c.untuned else []) + ([f"{c.trials} trials"] if c.trials is not None else [])
    return f"{label} ({', '.join(extra)})"


def comparison_lines(c: Comparison) -> list[str]:
    """Both configurations with mean ± std, worst draw and collapsed draws, and the paired
    difference with its interval and p-values, as text."""
    draws = len(c.best.draws)
    mode = c.best.candidate.config.get("inference.mode", "head")
    lines = [
        f"{c.dataset} ({c.protocol}), {draws} draws, test scores in % (best inference: {mode})",
        f"  {'':<36}"
        + "".join(f"{METRIC_NAMES[m] + ' (mean ± std, worst)':>32}" for m in METRICS)
        + f"{'collapsed':>11}",
    ]
    baseline = "CCE baseline" if c.baseline.candidate.loss == NO_DML else "baseline"  # --baseline may name any config
    for label, r in ((baseline, c.baseline), ("best", c.best)):
        s = r.summary()
        cells = "".join(f"{_spread(s[m]):>32}" for m in METRICS)
        lines.append(f"  {_side_label(label, r):<36}{cells}{r.collapsed:>11}")
    if c.differences:
        first = next(iter(c.differences.values()))
        if first.exists:
            lines.append(
                f"  {f'Δ best − CCE (pp, {first.confidence:.0%} {first.method} CI)':<36}"
                + "".join(f"{_interval(c.differences[m]):>32}" for m in METRICS)
            )
            lines.append(
                f"  {'p paired t / Wilcoxon':<36}"
                + "".join(f"{_p(c.differences[m].p_t) + ' / ' + _p(c.differences[m].p_wilcoxon):>32}" for m in METRICS)
            )
        else:
            lines.append(f"  {'Δ best − CCE (pp)':<36}" + "".join(f"{c.differences[m].mean:>+32.1f}" for m in METRICS))
            lines.append(f"  no interval and no p-values: {len(c.paired)} paired draws, {MIN_PAIRED} needed")
    for label, r in ((baseline, c.baseline), ("best", c.best)):
        line = selection_line(label, r)
        if line:
            lines.append(line)
    if c.baseline.candidate.untuned:
        lines.append("  note: the CCE baseline is untuned (default settings; no search chose them)")
    if c.budgets_differ:
        lines.append(
            f"  note: the searches had different budgets: best {c.best.candidate.trials} trials, "
            f"CCE {c.baseline.candidate.trials} trials"
        )
    failed = [f"{role} draw {d.index}" for role in ("best", "baseline") for d in c.result(role).draws if not d.ok]
    if failed:
        lines.append(f"  failed (left out of the paired difference): {', '.join(failed)}")
    return lines


def selection_line(label: str, r: ConfigResult, metric: str = "accuracy") -> str | None:
    """``best: dev at selection 84.4, re-scored 78.1 ± 3.2 (3 draws), test 70.9: optimism +13.5 pp``."""
    c = r.candidate
    optimism = r.optimism(metric)
    if c.selection_score is None or optimism is None:
        return None
    rescored = (
        f", re-scored {_pm(100 * c.rescored[0], 100 * c.rescored[1])} ({c.rescored[2]} draws)" if c.rescored else ""
    )
    return (
        f"  {label}: dev at selection {100 * c.selection_score:.1f}{rescored}, "
        f"test {100 * r.summary()[metric]['mean']:.1f}: optimism {optimism:+.1f} pp"
    )


def _spread(summary: dict[str, float]) -> str:
    return f"{_pm(100 * summary['mean'], 100 * summary['std'])}, worst {100 * summary['worst']:.1f}"


def _interval(i: Interval) -> str:
    mark = " *" if i.significant else ""
    return f"{i.mean:+.1f} [{i.low:+.1f}, {i.high:+.1f}]{mark}"


# ----------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt

    return plt


def plot_differences(comparisons: list[Comparison], path: str | Path, metric: str = "accuracy") -> Path:
    """Each dataset's mean difference (best − CCE) with its interval; green/red where it excludes 0."""
    plt = _pyplot()
    table = [r for r in rows(comparisons, metric) if np.isfinite(r.diff_mean)]
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.45 * max(1, len(table))))
    for y, r in enumerate(table):
        color = "tab:green" if r.significant and r.diff_low > 0 else "tab:red" if r.significant else "tab:gray"
        err = [[r.diff_mean - r.diff_low], [r.diff_high - r.diff_mean]] if r.has_interval else None
        ax.errorbar(r.diff_mean, y, xerr=err, fmt="o", color=color, capsize=4)
        ax.annotate(
            f"{r.best_loss}",
            (r.diff_high if r.has_interval else r.diff_mean, y),
            xytext=(6, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
            color="0.3",
        )
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(table)), [r.dataset for r in table])
    ax.set_ylim(-0.7, len(table) - 0.3)
    ax.invert_yaxis()
    methods = sorted({r.interval for r in table}) or ["t"]
    ax.set_xlabel(
        f"Δ test {METRIC_NAMES[metric]} (percentage points), best − CCE, "
        f"{' or '.join(INTERVAL_NAMES.get(m, m) for m in methods)}",
        fontsize=8,
    )
    ax.set_title("Best configuration against the CCE baseline", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)


def pca_2d(points: np.ndarray, extra: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project ``points`` on their first two principal components; ``extra`` with the same map."""
    mean = points.mean(axis=0)
    _, _, vt = np.linalg.svd(points - mean, full_matrices=False)
    basis = vt[:2].T
    if basis.shape[1] < 2:
        basis = np.pad(basis, ((0, 0), (0, 2 - basis.shape[1])))
    return (points - mean) @ basis, (extra - mean) @ basis


def tsne_2d(points: np.ndarray, extra: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """t-SNE has no out-of-sample map: points and ``extra`` are embedded together."""
    from sklearn.manifold import TSNE

    both = np.vstack([points, extra])
    xy = TSNE(
        n_components=2, init="pca", random_state=0, perplexity=min(30.0, max(2.0, (len(both) - 1) / 3))
    ).fit_transform(both)
    return xy[: len(points)], xy[len(points) :]


PROJECTIONS: dict[str, Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]] = dict(
    zip(choices.PROJECTIONS, (pca_2d, tsne_2d))
)


def plot_embeddings(comparison: Comparison, path: str | Path, projection: str = "pca") -> Path:
    """Test embeddings (L2-normalised, projected to 2-D) coloured by class, proxies as stars;
    the CCE baseline and the best configuration side by side, on the same draw."""
    check_projection(projection)
    plt = _pyplot()
    panels = [(role, comparison.snapshots[role]) for role in ("baseline", "best") if role in comparison.snapshots]
    if not panels:
        raise ValueError(f"{comparison.dataset}: no embeddings recorded for the report")
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.8), squeeze=False)
    names = comparison.label_names
    colors = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    for ax, (role, snap) in zip(axes[0], panels):
        _panel(ax, comparison, role, snap, projection, colors)
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=colors(c), label=n) for c, n in enumerate(names)]
    handles.append(
        plt.Line2D(
            [],
            [],
            marker="*",
            linestyle="",
            color="white",
            markeredgecolor="black",
            markersize=12,
            label="proxy / class center",
        )
    )
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 7), fontsize=8, frameon=False)
    draw = f", draw {comparison.best_draw}" if comparison.best_draw is not None else ""
    fig.suptitle(
        f"{comparison.dataset}: test embeddings ({projection.upper()} of L2-normalised vectors{draw})", fontsize=11
    )
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def _panel(ax, comparison: Comparison, role: str, snap: Snapshot, projection: str, colors) -> None:
    rng = np.random.default_rng(0)
    keep = np.arange(len(snap.labels))
    if len(keep) > MAX_POINTS:
        keep = np.sort(rng.choice(keep, MAX_POINTS, replace=False))
    xy, proto = PROJECTIONS[projection](_normalise(snap.embeddings[keep]), _normalise(snap.prototypes))
    labels = snap.labels[keep]
    for c in np.unique(labels):
        m = labels == c
        ax.scatter(xy[m, 0], xy[m, 1], s=6, alpha=0.45, color=colors(int(c)), linewidths=0)
    ax.scatter(
        proto[:, 0],
        proto[:, 1],
        s=180,
        marker="*",
        c=[colors(int(c)) for c in snap.prototype_labels],
        edgecolors="black",
        linewidths=0.9,
        zorder=3,
    )
    result = comparison.result(role)
    draw = next((d for d in result.draws if d.index == comparison.best_draw and d.ok), None)
    score = f", test acc {100 * draw.test['accuracy']:.1f}%" if draw else ""
    title = "best" if role == "best" else "CCE baseline" if result.candidate.loss == NO_DML else "baseline"
    ax.set_title(f"{title}: {result.candidate.loss} ({snap.prototype_kind}){score}", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


# ----------------------------------------------------------------- the whole report


@dataclass
class Report:
    """A written report: its files, the comparisons it tabulates, and its MLflow run once logged."""

    files: list[Path]
    comparisons: list[Comparison]
    metric: str = "accuracy"
    run_id: str | None = None
    tracking_uri: str | None = None

    def markdown(self) -> str:
        """The table in ``metric``, as results.md has it (without its heading and sources)."""
        return markdown(self.comparisons, self.metric)

    def rows(self) -> list[ReportRow]:
        return rows(self.comparisons, self.metric)


def write_report(
    comparisons: list[Comparison], out: str | Path, metric: str = "accuracy", projection: str = "pca"
) -> list[Path]:
    """results.md, results.csv, diff.png and embeddings_<dataset>.png under ``out``; returns the files."""
    check_metric(metric)
    if not comparisons:
        raise ConfigError("nothing to report: no final evaluation was given")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    md = folder / "results.md"
    md.write_text("# Final evaluation\n\n" + markdown(comparisons, metric) + _sources(comparisons))
    files = [
        md,
        write_csv(comparisons, folder / "results.csv"),
        plot_differences(comparisons, folder / "diff.png", metric),
    ]
    for c in comparisons:
        if c.snapshots:
            files.append(plot_embeddings(c, folder / f"embeddings_{_safe(c.dataset)}.png", projection))
    return files


def _sources(comparisons: list[Comparison]) -> str:
    lines = ["", "Configurations:", ""]
    for c in comparisons:
        lines.append(
            f"- {c.dataset}: best = {c.best.candidate.loss} from {c.best.candidate.source}; "
            f"baseline = {c.baseline.candidate.source}"
        )
    return "\n".join(lines) + "\n"


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in Path(name).name)
