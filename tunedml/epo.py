"""Exact Pareto Optimal (EPO) search: how to combine several losses' gradients in one step.

Mahapatra & Rajan, "Multi-Task Learning with User Preferences: Gradient Descent with Controlled
Ascent in Pareto Optimization", ICML 2020. For losses ``l`` (m terms), the Gram matrix ``C = G G^T``
of their gradients on the shared parameters and a preference ``r`` (larger = that loss matters
more), :func:`epo_weights` returns ``alpha`` on the simplex; the step follows ``d = G^T alpha``,
the gradient of ``sum_j alpha_j l_j``. The target is the Pareto-optimal point on the preference ray
``r_1 l_1 = ... = r_m l_m``:

- away from the ray ("balance"), ``alpha`` turns the step towards it: it maximises the step's
  alignment with the adjustment ``a`` while the loss furthest above the ray always descends (a
  loss below the ray may rise, boundedly: the paper's "controlled ascent");
- on the ray ("descent"), every loss descends (``C alpha >= 0``), as fast as possible in sum.

Each is a small linear program over ``alpha`` (scipy's HiGHS).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linprog

ON_RAY = 1e-4  # non-uniformity below which the losses count as on the preference ray
_TINY = 1e-12


def non_uniformity(weighted: np.ndarray) -> float:
    """KL divergence of the normalised ``r * l`` from uniform: 0 exactly on the preference ray."""
    share = np.maximum(weighted / weighted.sum(), _TINY)
    return float(np.sum(share * np.log(share * len(share))))


def epo_weights(losses: np.ndarray, gram: np.ndarray, preference: np.ndarray) -> np.ndarray:
    """``alpha`` (non-negative, summing to 1) for one EPO step; see the module's docstring."""
    losses = np.maximum(np.asarray(losses, dtype=np.float64), _TINY)  # EPO's logarithms need l > 0
    r = np.asarray(preference, dtype=np.float64)
    scale = float(np.abs(gram).max())
    if not np.isfinite(scale) or scale == 0.0:  # no gradient at all: any alpha; keep the preference
        return r / r.sum()
    C = np.asarray(gram, dtype=np.float64) / scale  # alpha does not depend on C's scale
    weighted = r * losses
    mu = non_uniformity(weighted)
    share = np.maximum(weighted / weighted.sum(), _TINY)
    a = r * (np.log(share * len(r)) - mu)  # points from the losses towards the ray
    Ca = C @ a
    if mu > ON_RAY:
        alpha = _balance(C, Ca, weighted)
    else:
        alpha = _descend(C, Ca)
    if alpha is None:  # not expected (both programs are feasible); fall back to the linear weighting
        return r / r.sum()
    alpha = np.maximum(alpha, 0.0)
    return alpha / alpha.sum()


def _balance(C: np.ndarray, Ca: np.ndarray, weighted: np.ndarray) -> np.ndarray | None:
    """max alpha.Ca  s.t. the worst loss (max r_j l_j) descends, and losses whose gradient opposes
    the adjustment rise no more than the adjustment itself would make them."""
    rhs = Ca.copy()
    rising = Ca > 0
    if rising.any():
        rhs[rising] = -np.inf  # free
        rhs[weighted == weighted.max()] = 0.0
    else:
        rhs[:] = 0.0
    return _solve(-Ca, C, rhs)


def _descend(C: np.ndarray, Ca: np.ndarray) -> np.ndarray | None:
    """max sum_j (C alpha)_j  s.t. every loss descends and the step keeps to the ray."""
    keep = min(float(Ca.max()), 0.0)
    A = np.vstack([C, Ca[None, :]])
    rhs = np.concatenate([np.zeros(len(C)), [keep]])
    return _solve(-C.sum(axis=0), A, rhs)


def _solve(cost: np.ndarray, A: np.ndarray, lower: np.ndarray) -> np.ndarray | None:
    """min cost.alpha  s.t.  A alpha >= lower (rows with a finite bound), alpha on the simplex."""
    finite = np.isfinite(lower)
    m = len(cost)
    result = linprog(
        cost,
        A_ub=-A[finite] if finite.any() else None,
        b_ub=-lower[finite] if finite.any() else None,
        A_eq=np.ones((1, m)),
        b_eq=[1.0],
        bounds=[(0.0, None)] * m,
        method="highs",
    )
    return result.x if result.status == 0 else None
