"""Paired statistics of a final evaluation: per-draw differences best − baseline, their interval
(Student's t by default, or a percentile bootstrap) and the p-values of a paired t-test and of the
Wilcoxon signed-rank test.

The t interval is the default because it holds at the small numbers of draws a final evaluation
has: over 5 draws a percentile bootstrap spans about 1.75 standard errors where t needs 2.78.
With fewer than :data:`MIN_PAIRED` paired draws no interval and no p-value is given at all.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..metrics import METRICS
from ..results import Comparison, ConfigResult, Interval
from .options import RetrainOptions

MIN_PAIRED = 3


def paired_differences(best: np.ndarray | list[float], baseline: np.ndarray | list[float]) -> np.ndarray:
    """Per-draw differences in percentage points (scores are fractions in [0, 1])."""
    a, b = np.asarray(best, dtype=float), np.asarray(baseline, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired scores need the same draws, got {a.shape} and {b.shape}")
    return 100.0 * (a - b)


def _values(values: np.ndarray | list[float], confidence: float) -> np.ndarray:
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError("an interval needs a non-empty 1-D array")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return x


def t_interval(values: np.ndarray | list[float], confidence: float = 0.95) -> Interval:
    """Mean of ``values`` and Student's t interval of that mean (n - 1 degrees of freedom)."""
    from scipy import stats

    x = _values(values, confidence)
    if len(x) < 2:
        raise ValueError("a t interval needs two or more values")
    half = stats.t.ppf(1 - (1 - confidence) / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    mean = float(x.mean())
    return Interval(mean, float(mean - half), float(mean + half), confidence, "t", n=len(x))


def bootstrap_interval(
    values: np.ndarray | list[float], resamples: int = 10_000, confidence: float = 0.95, seed: int = 0
) -> Interval:
    """Mean of ``values`` and the percentile bootstrap interval of that mean (seeded, reproducible).

    With one value, or all values equal, the interval collapses to the value.
    """
    x = _values(values, confidence)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return Interval(float(x.mean()), float(low), float(high), confidence, "bootstrap", n=len(x))


def paired_p_values(differences: np.ndarray | list[float]) -> tuple[float, float]:
    """(paired t-test p, Wilcoxon signed-rank p), two-sided, for H0: no difference.

    Differences that are all zero give p = 1 for both (scipy's t-test has no answer there).
    """
    from scipy import stats

    d = np.asarray(differences, dtype=float)
    if not d.any():
        return 1.0, 1.0
    return float(stats.ttest_1samp(d, 0.0).pvalue), float(stats.wilcoxon(d).pvalue)


def difference(differences: np.ndarray | list[float], options: RetrainOptions) -> Interval:
    """The mean difference with the interval and p-values ``options`` ask for; only the mean below
    :data:`MIN_PAIRED` draws."""
    d = np.asarray(differences, dtype=float)
    if len(d) < MIN_PAIRED:
        return Interval(float(d.mean()), None, None, options.confidence, options.interval, n=len(d))
    if options.interval == "t":
        interval = t_interval(d, options.confidence)
    else:
        interval = bootstrap_interval(d, options.bootstrap, options.confidence, options.seed)
    p_t, p_wilcoxon = paired_p_values(d)
    return replace(interval, p_t=p_t, p_wilcoxon=p_wilcoxon)


def compare(
    dataset: str,
    label_names: list[str],
    protocol: str,
    best: ConfigResult,
    baseline: ConfigResult,
    options: RetrainOptions,
) -> Comparison:
    """Paired differences over the draws both configurations finished."""
    paired = sorted({d.index for d in best.draws if d.ok} & {d.index for d in baseline.draws if d.ok})
    differences = {}
    if paired:
        for m in METRICS:
            differences[m] = difference(paired_differences(best.scores(m, paired), baseline.scores(m, paired)), options)
    return Comparison(dataset, label_names, protocol, best, baseline, differences, paired, best.top_draw())
