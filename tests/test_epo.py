"""EPO search on a toy two-objective problem whose Pareto set and preference point are known.

l1 = |x - a|^2, l2 = |x - b|^2 on the plane: the Pareto set is the segment from a to b, and the
point where r1 l1 = r2 l2 on it is a + t (b - a) with t = sqrt(r2) / (sqrt(r1) + sqrt(r2)).
"""

from __future__ import annotations

import numpy as np
import pytest

from tunedml.epo import ON_RAY, epo_weights, non_uniformity

A, B = np.array([1.0, 0.0]), np.array([0.0, 1.0])


def losses_and_gradients(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.array([np.sum((x - A) ** 2), np.sum((x - B) ** 2)]), np.stack([2 * (x - A), 2 * (x - B)])


def step(x: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(alpha, direction d = G^T alpha, inner products G d) at x."""
    losses, G = losses_and_gradients(x)
    alpha = epo_weights(losses, G @ G.T, r)
    d = G.T @ alpha
    return alpha, d, G @ d


@pytest.mark.parametrize("r", [(1.0, 1.0), (1.0, 3.0), (4.0, 1.0)])
@pytest.mark.parametrize("start", [(1.5, 1.5), (-0.5, 0.2), (0.9, -0.4)])
def test_descent_reaches_the_pareto_point_on_the_preference_ray(r, start):
    r, x = np.array(r), np.array(start)
    for _ in range(400):
        alpha, d, _ = step(x, r)
        assert alpha.min() >= 0 and alpha.sum() == pytest.approx(1.0)
        x = x - 0.05 * d
    t = np.sqrt(r[1]) / (np.sqrt(r[0]) + np.sqrt(r[1]))
    assert x == pytest.approx(A + t * (B - A), abs=0.01)  # Pareto optimal, and on the ray
    losses, _ = losses_and_gradients(x)
    assert non_uniformity(r * losses) < 10 * ON_RAY


@pytest.mark.parametrize("r", [(1.0, 1.0), (1.0, 3.0), (4.0, 1.0)])
def test_the_step_never_raises_the_loss_furthest_above_the_ray(r):
    """Away from the ray EPO may let the other loss rise (the paper's controlled ascent, needed to
    move along the Pareto front); the worst-off loss always descends."""
    r = np.array(r)
    rng = np.random.default_rng(0)
    for x in rng.uniform(-1.0, 2.0, size=(200, 2)):
        losses, _ = losses_and_gradients(x)
        _, _, inner = step(x, r)
        assert inner[np.argmax(r * losses)] >= -1e-9


@pytest.mark.parametrize("x", [(1.5, 1.5), (-1.0, -1.0), (0.2, 0.2), (3.0, 3.0)])
def test_on_the_ray_the_direction_descends_every_loss(x):
    """Points with l1 = l2 (on the ray of r = (1, 1)): d has a non-negative inner product with each
    term's gradient, whether the gradients conflict or not."""
    losses, G = losses_and_gradients(np.array(x))
    assert losses[0] == pytest.approx(losses[1])
    _, _, inner = step(np.array(x), np.array([1.0, 1.0]))
    assert (inner >= -1e-9).all(), inner


def test_two_terms_whose_gradients_agree_both_descend_off_the_ray():
    x = np.array([2.0, 2.5])  # far from both targets: the gradients point the same way
    _, G = losses_and_gradients(x)
    assert G[0] @ G[1] > 0
    for r in ([1.0, 1.0], [1.0, 5.0], [5.0, 1.0]):
        _, _, inner = step(x, np.array(r))
        assert (inner >= 0).all()


def test_preference_decides_which_loss_is_favoured():
    x = np.array([0.5, 0.5])  # on the Pareto front, l1 = l2
    alpha_1, _, _ = step(x, np.array([3.0, 1.0]))  # loss 1 matters more: push l1 down
    alpha_2, _, _ = step(x, np.array([1.0, 3.0]))
    assert alpha_1[0] > alpha_1[1] and alpha_2[1] > alpha_2[0]


def test_no_gradient_keeps_the_preference():
    assert epo_weights(np.array([1.0, 2.0]), np.zeros((2, 2)), np.array([1.0, 3.0])) == pytest.approx([0.25, 0.75])
