"""Critical points of the PGD class: stationary, classified, and the best one is best_pgd_scalars."""

from __future__ import annotations

import functools

import pytest
import torch

from iclab.theory import best_pgd_scalars, pgd_class_loss, pgd_class_matrices, wishart_eigenvalues
from iclab.theory.linear_regression.critical_points import (
    critical_point_near,
    nearest_critical_point,
    pgd_critical_points,
    project_to_class,
)
from iclab.theory.linear_regression.multilayer import _phi

F64 = torch.float64


@functools.lru_cache(maxsize=2)
def _lam(n: int = 20, samples: int = 20_000) -> torch.Tensor:
    return wishart_eigenvalues(5, n, samples, seed=3)


@functools.lru_cache(maxsize=2)
def _points(layers: int):
    return pgd_critical_points(layers, 5, 20, eigenvalues=_lam(), starts=8)


@pytest.mark.parametrize("layers", [2, 3])
def test_every_point_is_stationary_and_the_best_is_best_pgd_scalars(layers):
    points = _points(layers)
    assert len(points) >= 2  # the class loss is not convex
    lam = _lam()
    for p in points:
        # the gradient of the full-sample loss in θ = (a, a·b) vanishes (recomputed here)
        t = p.theta.clone().requires_grad_(True)
        loss = _phi(t[:layers], t[layers:], lam, 20, 0.0).sum(-1).mean()
        (g,) = torch.autograd.grad(loss, t)
        assert float(g.norm()) < 1e-9
        value, _ = pgd_class_loss(p.a, p.b, lam, 20)
        assert float(value) == pytest.approx(p.loss, rel=1e-12)
        assert p.index == int((p.hessian_eigenvalues < 0).sum())
    assert [p.loss for p in points] == sorted(p.loss for p in points)
    best = best_pgd_scalars(layers, 5, 20, eigenvalues=lam)
    assert points[0].loss == pytest.approx(best.loss, rel=1e-9)
    assert torch.allclose(points[0].a, best.a, rtol=1e-5)
    assert torch.allclose(points[0].b, best.b, rtol=1e-5, atol=1e-8)
    assert points[0].index == 0
    assert any(p.index > 0 for p in points)  # saddles are found too


def test_near_returns_the_point_a_perturbed_start_belongs_to():
    points = _points(3)
    lam = _lam()
    gen = torch.Generator().manual_seed(0)
    for p in points[:4]:
        a = p.a * (1 + 0.01 * torch.randn(3, generator=gen, dtype=F64))
        b = p.b * (1 + 0.01 * torch.randn(3, generator=gen, dtype=F64))
        q = critical_point_near(a, b, 5, 20, eigenvalues=lam)
        assert q is not None
        assert torch.allclose(q.theta, p.theta, rtol=1e-6)
        i, dist = nearest_critical_point(a, b, points)
        assert points[i] is p and dist < 0.05


def test_near_returns_none_for_nonfinite_scalars_and_rejects_one_layer():
    nan = torch.tensor([float("nan"), 1.0, 1.0], dtype=F64)
    assert critical_point_near(nan, torch.zeros(3, dtype=F64), 5, 20, eigenvalues=_lam()) is None
    with pytest.raises(ValueError, match="layers"):
        pgd_critical_points(1, 5, 20, eigenvalues=_lam())


def test_projection_recovers_the_scalars_of_class_matrices():
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(5, 5, dtype=F64))
    cov = q @ torch.diag(torch.tensor([1.0, 1.0, 0.25, 1 / 16, 1.0], dtype=F64)) @ q.T
    a = torch.tensor([0.4, 2.4, 9.6], dtype=F64)
    b = torch.tensor([0.9, 0.56, 0.3], dtype=F64)
    A, B = pgd_class_matrices((a, b), cov)
    pa, pb = project_to_class(A, B, cov[None])
    assert torch.allclose(pa, a, rtol=1e-12)
    assert torch.allclose(pb[:2], b[:2], rtol=1e-12) and pb[2] == 0.0
