"""Exact Wishart trace moments and the exact PGD-class loss, against closed forms and Monte Carlo."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from iclab.theory import pgd_class_loss, wishart_eigenvalues, wishart_sample
from iclab.theory.linear_regression.wishart_moments import (
    MAX_EXACT_DEGREE,
    exact_pgd_stationary_point,
    pgd_class_loss_exact,
    wishart_trace_moments,
)

F64 = torch.float64


def test_first_moments_are_the_closed_forms():
    for d, n in [(5, 20), (3, 7), (6, 2)]:
        m = wishart_trace_moments(d, n, 2)
        assert m[0] == d and m[1] == d  # E tr S = d
        assert m[2] == Fraction(d * (n + d + 1), n)  # E tr S² = d(n+d+1)/n


def test_one_dimension_gives_the_chi_square_moments():
    """d = 1: S = χ²_n/n, E[S^k] = Π_{i<k} (n + 2i) / n^k."""
    n = 9
    m = wishart_trace_moments(1, n, 24)
    for k in range(25):
        assert m[k] == Fraction(math.prod(n + 2 * i for i in range(k)), n**k)


def test_swapping_the_dimensions_keeps_the_traces():
    """tr (XᵀX)^k = tr (XXᵀ)^k: the recursion for (d, n) and for (n, d) must agree exactly."""
    d, n = 3, 8
    small, large = wishart_trace_moments(d, n, 14), wishart_trace_moments(n, d, 14)
    for k in range(1, 15):
        assert small[k] * n**k == large[k] * d**k


@pytest.mark.parametrize("k", [3, 4, 6])
def test_moments_match_monte_carlo(k):
    d, n, N = 4, 10, 200_000
    lam = wishart_eigenvalues(d, n, N, seed=5)
    v = lam.pow(k).sum(1)
    exact = float(wishart_trace_moments(d, n, k)[k])
    assert abs(float(v.mean()) - exact) < 4 * float(v.std()) / math.sqrt(N)


def test_degree_limit_is_enforced():
    with pytest.raises(ValueError, match="kmax"):
        wishart_trace_moments(5, 20, MAX_EXACT_DEGREE + 1)
    with pytest.raises(ValueError, match="layers"):  # L = 4: degree 80
        pgd_class_loss_exact([0.3, 1.0, 3.0, 10.0], [0.9, 0.5, 0.3, 0.0], 5, 20)


def test_one_layer_exact_loss_is_the_closed_form():
    """E tr (I − aS)² = d − 2ad + a²d(n+d+1)/n (Σ_w = Σ⁻¹, no noise)."""
    d, n, a = 5, 20, 0.77
    expected = d - 2 * a * d + a * a * d * (n + d + 1) / n
    assert pgd_class_loss_exact([a], None, d, n) == pytest.approx(expected, rel=1e-14)


@pytest.mark.parametrize(
    ("a", "b", "noise"),
    [
        ([0.4, 0.9], [0.6, 0.3], 0.3),
        ([0.3, 0.5, 0.9, 1.2], None, 0.5),  # sparse class: degree 2L
        ([0.3, 1.0, 2.5], [0.5, 0.3, 0.0], 0.0),  # small steps: a light tail
    ],
)
def test_exact_loss_matches_monte_carlo_where_the_tail_is_light(a, b, noise):
    lam = wishart_eigenvalues(5, 20, 400_000, seed=3)
    bt = None if b is None else torch.tensor(b, dtype=F64)
    mc, se = pgd_class_loss(torch.tensor(a, dtype=F64), bt, lam, 20, noise_std=noise)
    exact = pgd_class_loss_exact(a, b, 5, 20, noise)
    assert abs(float(mc) - exact) < 4 * float(se)


def test_exact_loss_exposes_what_sampling_misses():
    """At the minimizer of 100000 plain draws (L = 3, n = 20) the plain sample scores it far below
    its exact loss; the exact minimum found by Newton from the importance-sampled optimum is a
    strict local minimum below both, and lower than that optimum's own exact loss."""
    from iclab.theory import best_pgd_scalars

    plain = best_pgd_scalars(3, 5, 20, eigenvalues=wishart_eigenvalues(5, 20, 100_000, seed=0))
    exact_at_plain = pgd_class_loss_exact(plain.a.tolist(), plain.b.tolist(), 5, 20)
    assert exact_at_plain > 10 * plain.loss
    lam, w = wishart_sample(5, 20, 100_000, seed=0)
    weighted = best_pgd_scalars(3, 5, 20, eigenvalues=lam, weights=w)
    a, b, loss, grad, eig = exact_pgd_stationary_point(
        weighted.a.tolist(), weighted.b.tolist(), 5, 20
    )
    assert grad < 1e-9 and min(eig) > 0
    assert loss <= pgd_class_loss_exact(weighted.a.tolist(), weighted.b.tolist(), 5, 20)
    assert loss < exact_at_plain / 10
    assert pgd_class_loss_exact(a, b, 5, 20) == pytest.approx(loss, rel=1e-12)


def test_newton_reaches_the_papers_local_minimum():
    """Ahn et al.'s Σ = I scalars a ≈ (0.71, 2.65, 7.1), b ≈ (0.34, 0.34) are next to a strict
    local minimum of the exact loss, whose value is the paper's ≈ 1.3e-3."""
    a, b, loss, grad, eig = exact_pgd_stationary_point([0.71, 2.65, 7.1], [0.34, 0.34, 0.0], 5, 20)
    assert grad < 1e-9 and min(eig) > 0
    assert a == pytest.approx([0.7166, 2.6487, 7.1632], rel=1e-3)
    assert b[:2] == pytest.approx([0.3412, 0.3446], rel=1e-3)
    assert 1.2e-3 < loss < 1.4e-3
