"""The results table over datasets and its plots, from final evaluations (:class:`Comparison`).

Like the tables of the DML-for-text papers: one row per dataset with the CCE baseline, the best
configuration (its loss) and the paired difference in percentage points with its bootstrap
interval, as Markdown and CSV. Two kinds of PNG: the differences with their intervals, and per
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

from .errors import ConfigError, unknown_choice
from .progress import fmt_duration
from .retrain import METRICS, Comparison, DrawResult, Job, Snapshot

METRIC_NAMES = {"accuracy": "accuracy", "macro_f1": "macro-F1"}
MAX_POINTS = 2000  # test points per projection panel: enough to see the classes, light enough to draw


@dataclass
class ReportRow:
    dataset: str
    protocol: str
    draws: int
    baseline_loss: str
    baseline_mean: float  # percent
    baseline_std: float
    best_loss: str
    best_mean: float
    best_std: float
    diff_mean: float  # percentage points
    diff_low: float
    diff_high: float

    @property
    def significant(self) -> bool:
        """The interval excludes zero."""
        return self.diff_low > 0 or self.diff_high < 0


def check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ConfigError("--metric: " + unknown_choice("metric", metric, METRICS))


def rows(comparisons: list[Comparison], metric: str = "accuracy") -> list[ReportRow]:
    """One row per comparison (i.e. per dataset), scores in percent."""
    check_metric(metric)
    out = []
    for c in comparisons:
        base, best = c.baseline.summary()[metric], c.best.summary()[metric]
        diff = c.differences.get(metric)
        nan = float("nan")
        out.append(ReportRow(
            c.dataset, c.protocol, len(c.paired), c.baseline.candidate.loss, 100 * base["mean"], 100 * base["std"],
            c.best.candidate.loss, 100 * best["mean"], 100 * best["std"],
            diff.mean if diff else nan, diff.low if diff else nan, diff.high if diff else nan))
    return out


def _pm(mean: float, std: float) -> str:
    return f"{mean:.1f} ± {std:.1f}"


def _diff(r: ReportRow) -> str:
    mark = " *" if r.significant else ""
    return f"{r.diff_mean:+.1f} [{r.diff_low:+.1f}, {r.diff_high:+.1f}]{mark}"


def markdown(comparisons: list[Comparison], metric: str = "accuracy", confidence: float | None = None) -> str:
    """The table as Markdown, with a caption that says what the numbers are."""
    table = rows(comparisons, metric)
    conf = confidence or next((c.differences[metric].confidence for c in comparisons if metric in c.differences), 0.95)
    lines = [
        f"Test {METRIC_NAMES[metric]} (%), mean ± sample std over few-shot draws; Δ = best − CCE in percentage "
        f"points, paired over the same draws, with its {conf:.0%} percentile-bootstrap interval "
        "(* = interval excludes 0).",
        "",
        "| Dataset | Protocol | Draws | CCE baseline | Best configuration | Loss | Δ (pp) |",
        "|---|---|---:|---:|---:|---|---:|",
    ]
    for r in table:
        lines.append(f"| {r.dataset} | {r.protocol} | {r.draws} | {_pm(r.baseline_mean, r.baseline_std)} | "
                     f"{_pm(r.best_mean, r.best_std)} | {r.best_loss} | {_diff(r)} |")
    return "\n".join(lines) + "\n"


CSV_COLUMNS = ("dataset", "protocol", "draws", "metric", "baseline_loss", "baseline_mean", "baseline_std",
               "best_loss", "best_mean", "best_std", "diff_pp", "diff_low", "diff_high", "significant")


def write_csv(comparisons: list[Comparison], path: str | Path) -> Path:
    """Every metric, one row per (dataset, metric); scores in percent, differences in points."""
    path = Path(path)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for metric in METRICS:
            for r in rows(comparisons, metric):
                writer.writerow([r.dataset, r.protocol, r.draws, metric, r.baseline_loss,
                                 *(round(v, 3) for v in (r.baseline_mean, r.baseline_std)), r.best_loss,
                                 *(round(v, 3) for v in (r.best_mean, r.best_std, r.diff_mean, r.diff_low, r.diff_high)),
                                 r.significant])
    return path


def draw_line(job: Job, result: DrawResult) -> str:
    """A progress line for one finished draw."""
    fold = f", fold {result.fold}" if result.fold is not None else ""
    what = f"{job.role:<8} {job.cfg.loss.name:<14} draw {result.index} (data.seed {result.data_seed}{fold})"
    if not result.ok:
        return f"{what}: FAILED {result.error}"
    t = result.test
    return f"{what}: test acc {t['accuracy']:.4f}  macro-F1 {t['macro_f1']:.4f}  {fmt_duration(result.seconds)}"


def comparison_lines(c: Comparison) -> list[str]:
    """Both configurations with mean ± std and the paired difference with its interval, as text."""
    draws = len(c.best.draws)
    mode = c.best.candidate.config.get("inference.mode", "head")
    lines = [f"{c.dataset} ({c.protocol}), {draws} draws, test scores in % (best inference: {mode})",
             f"  {'':<30}{'accuracy':>22}{'macro-F1':>22}"]
    for label, r in (("CCE baseline", c.baseline), ("best", c.best)):
        s = r.summary()
        cells = "".join(f"{_pm(100 * s[m]['mean'], 100 * s[m]['std']):>22}" for m in METRICS)
        lines.append(f"  {label + ' (' + r.candidate.loss + ')':<30}{cells}")
    if c.differences:
        conf = next(iter(c.differences.values())).confidence
        cells = "".join(f"{_interval(c.differences[m]):>22}" for m in METRICS)
        lines.append(f"  {f'Δ best − CCE (pp, {conf:.0%} CI)':<30}{cells}")
    failed = [f"{role} draw {d.index}" for role in ("best", "baseline") for d in c.result(role).draws if not d.ok]
    if failed:
        lines.append(f"  failed (left out of the paired difference): {', '.join(failed)}")
    return lines


def _interval(i) -> str:
    return f"{i.mean:+.1f} [{i.low:+.1f}, {i.high:+.1f}]"


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
        color = "tab:green" if r.diff_low > 0 else "tab:red" if r.diff_high < 0 else "tab:gray"
        ax.errorbar(r.diff_mean, y, xerr=[[r.diff_mean - r.diff_low], [r.diff_high - r.diff_mean]], fmt="o",
                    color=color, capsize=4)
        ax.annotate(f"{r.best_loss}", (r.diff_high, y), xytext=(6, 0), textcoords="offset points", va="center",
                    fontsize=8, color="0.3")
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(table)), [r.dataset for r in table])
    ax.set_ylim(-0.7, len(table) - 0.3)
    ax.invert_yaxis()
    ax.set_xlabel(f"Δ test {METRIC_NAMES[metric]} (percentage points), best − CCE, bootstrap interval")
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
    xy = TSNE(n_components=2, init="pca", random_state=0, perplexity=min(30.0, max(2.0, (len(both) - 1) / 3))).fit_transform(both)
    return xy[: len(points)], xy[len(points):]


PROJECTIONS: dict[str, Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]] = {
    "pca": pca_2d, "tsne": tsne_2d,
}


def plot_embeddings(comparison: Comparison, path: str | Path, projection: str = "pca") -> Path:
    """Test embeddings (L2-normalised, projected to 2-D) coloured by class, proxies as stars;
    the CCE baseline and the best configuration side by side, on the same draw."""
    if projection not in PROJECTIONS:
        raise ConfigError("--projection: " + unknown_choice("projection", projection, PROJECTIONS))
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
    handles.append(plt.Line2D([], [], marker="*", linestyle="", color="white", markeredgecolor="black",
                              markersize=12, label="proxy / class center"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 7), fontsize=8, frameon=False)
    draw = f", draw {comparison.best_draw}" if comparison.best_draw is not None else ""
    fig.suptitle(f"{comparison.dataset}: test embeddings ({projection.upper()} of L2-normalised vectors{draw})",
                 fontsize=11)
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
    ax.scatter(proto[:, 0], proto[:, 1], s=180, marker="*", c=[colors(int(c)) for c in snap.prototype_labels],
               edgecolors="black", linewidths=0.9, zorder=3)
    result = comparison.result(role)
    draw = next((d for d in result.draws if d.index == comparison.best_draw and d.ok), None)
    score = f", test acc {100 * draw.test['accuracy']:.1f}%" if draw else ""
    title = "CCE baseline" if role == "baseline" else "best"
    ax.set_title(f"{title}: {result.candidate.loss} ({snap.prototype_kind}){score}", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


# ----------------------------------------------------------------- the whole report

def write_report(comparisons: list[Comparison], out: str | Path, metric: str = "accuracy",
                 projection: str = "pca") -> list[Path]:
    """results.md, results.csv, diff.png and embeddings_<dataset>.png under ``out``; returns the files."""
    check_metric(metric)
    if not comparisons:
        raise ConfigError("nothing to report: no final evaluation was given")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    md = folder / "results.md"
    md.write_text("# Final evaluation\n\n" + markdown(comparisons, metric) + _sources(comparisons))
    files = [md, write_csv(comparisons, folder / "results.csv"), plot_differences(comparisons, folder / "diff.png", metric)]
    for c in comparisons:
        if c.snapshots:
            files.append(plot_embeddings(c, folder / f"embeddings_{_safe(c.dataset)}.png", projection))
    return files


def _sources(comparisons: list[Comparison]) -> str:
    lines = ["", "Configurations:", ""]
    for c in comparisons:
        lines.append(f"- {c.dataset}: best = {c.best.candidate.loss} from {c.best.candidate.source}; "
                     f"baseline = {c.baseline.candidate.source}")
    return "\n".join(lines) + "\n"


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in Path(name).name)
