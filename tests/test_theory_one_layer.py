"""One-layer theory: closed form vs Monte Carlo vs a naive loop, special cases, optimality."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from iclab.models import LinearSelfAttention, LSAConfig
from iclab.tasks import LinearRegressionConfig, LinearRegressionTask, rotated_covariance
from iclab.theory import (
    one_layer_population_loss,
    one_layer_second_moment,
    optimal_one_layer_loss,
    preconditioner_optimum,
)

F64 = torch.float64


def _random_matrix(d: int, seed: int, scale: float = 0.3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(d, d, generator=g, dtype=F64) * scale


@functools.lru_cache(maxsize=2)
def _sample(d, n, covariance, weight_prior, noise, prompts, seed=0):
    cfg = LinearRegressionConfig(
        d=d, n=n, covariance=covariance, weight_prior=weight_prior, noise_std=noise
    )
    task = LinearRegressionTask(cfg, seeds=[seed], dtype=F64)
    return task, task.sample(prompts, "theory_mc")


def _predict(batch, A: torch.Tensor) -> torch.Tensor:
    """Vectorized one-step prediction x_qᵀ A (1/n) Xᵀ y, shape (E, B)."""
    h = torch.einsum("ebnd,ebn->ebd", batch.x, batch.y) / batch.n
    return torch.einsum("ebi,ij,ebj->eb", batch.x_query, A, h)


def _mc(err2: torch.Tensor) -> tuple[float, float]:
    err2 = err2.reshape(-1)
    return float(err2.mean()), float(err2.std() / math.sqrt(err2.numel()))


MC_CASES = [
    # d, n, covariance, weight prior, noise, prompts
    (4, 10, "identity", "identity", 0.0, 200_000),
    (4, 10, "identity", "identity", 0.5, 200_000),
    (4, 10, "rotated", "identity", 0.0, 200_000),
    (4, 10, "rotated", "identity", 0.5, 200_000),
    (4, 10, "rotated", "inverse_covariance", 0.0, 200_000),
    (4, 10, "rotated", "inverse_covariance", 0.5, 200_000),
    (5, 20, "rotated", "identity", 0.0, 200_000),  # the paper's size
]


@pytest.mark.parametrize("d, n, cov, prior, noise, prompts", MC_CASES)
def test_closed_form_matches_monte_carlo(d, n, cov, prior, noise, prompts):
    task, batch = _sample(d, n, cov, prior, noise, prompts)
    sigma, sigma_w = task.covariance[0], task.weight_covariance[0]
    a_star = preconditioner_optimum(sigma, sigma_w, n, noise)
    for A in (a_star, a_star + _random_matrix(d, seed=d + n)):
        theory = float(one_layer_population_loss(A, sigma, sigma_w, n, noise))
        mean, se = _mc((_predict(batch, A) - batch.y_query) ** 2)
        assert abs(mean - theory) < 3 * se, (mean, theory, se)
        assert se < 0.01 * theory  # the check is sharp
    # and the optimum is below the random A by much more than the noise of the estimate
    f_star = float(optimal_one_layer_loss(sigma, sigma_w, n, noise))
    assert f_star == pytest.approx(
        float(one_layer_population_loss(a_star, sigma, sigma_w, n, noise))
    )


def test_one_layer_lsa_model_matches_formula():
    d, n = 4, 10
    task, batch = _sample(d, n, "rotated", "identity", 0.5, 200_000)
    sigma, sigma_w = task.covariance[0], task.weight_covariance[0]
    A = preconditioner_optimum(sigma, sigma_w, n, 0.5) + _random_matrix(d, seed=3, scale=0.1)
    cfg = LSAConfig(layers=1, parametrization="sparse_pgd", readout="negative")
    model = LinearSelfAttention(d, cfg, seeds=[0], dtype=F64)
    model.set_pgd(A[None, None, None])
    with torch.no_grad():
        pred = model(batch.x, batch.y, batch.x_query)
    assert torch.allclose(pred, _predict(batch, A), atol=1e-12, rtol=0)
    mean, se = _mc((pred - batch.y_query) ** 2)
    theory = float(one_layer_population_loss(A, sigma, sigma_w, n, 0.5))
    assert abs(mean - theory) < 3 * se


def test_vectorized_prediction_matches_naive_loop():
    d, n = 3, 7
    _, batch = _sample(d, n, "rotated", "identity", 0.3, 300, seed=5)
    A = _random_matrix(d, seed=11, scale=1.0)
    vec = _predict(batch, A)[0].numpy()
    x, y, xq = batch.x[0].numpy(), batch.y[0].numpy(), batch.x_query[0].numpy()
    An = A.numpy()
    for b in range(x.shape[0]):
        h = np.zeros(d)
        for i in range(n):
            h += x[b, i] * y[b, i]
        h /= n
        y_hat = sum(xq[b, j] * sum(An[j, k] * h[k] for k in range(d)) for j in range(d))
        assert abs(y_hat - vec[b]) < 1e-12


def test_second_moment_matches_monte_carlo():
    d, n = 3, 5
    task, batch = _sample(d, n, "rotated", "identity", 0.4, 200_000, seed=2)
    h = torch.einsum("ebnd,ebn->ebd", batch.x, batch.y)[0] / n
    emp = torch.einsum("bi,bj->ij", h, h) / h.shape[0]
    M = one_layer_second_moment(task.covariance[0], task.weight_covariance[0], n, 0.4)
    se = (h[:, :, None] * h[:, None, :]).std(0) / math.sqrt(h.shape[0])
    assert ((emp - M).abs() < 4 * se).all()


# ----------------------------------------------------------------------------- special cases


@pytest.mark.parametrize("d, n", [(1, 1), (2, 3), (5, 20), (7, 4)])
def test_identity_prior_optimum(d, n):
    sigma = rotated_covariance(d, [1.0, 0.5, 2.0, 0.3, 1.0, 0.8, 1.5][:d], seed=d)
    expected = torch.linalg.inv(
        (n + 1) / n * sigma + torch.trace(sigma) / n * torch.eye(d, dtype=F64)
    )
    got = preconditioner_optimum(sigma, torch.eye(d, dtype=F64), n, 0.0)
    assert torch.allclose(got, expected, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("d, n", [(1, 1), (2, 3), (5, 20), (10, 7)])
def test_isotropic_optimal_loss(d, n):
    eye = torch.eye(d, dtype=F64)
    assert float(optimal_one_layer_loss(eye, eye, n)) == pytest.approx(d * (d + 1) / (n + d + 1))


@pytest.mark.parametrize("d, n, noise", [(2, 3, 0.0), (5, 20, 0.0), (4, 9, 0.7)])
def test_inverse_covariance_prior_optimum(d, n, noise):
    sigma = rotated_covariance(d, [1.0, 1.0, 0.5, 0.25, 1.0][:d], seed=1)
    inv = torch.linalg.inv(sigma)
    got = preconditioner_optimum(sigma, inv, n, noise)
    assert torch.allclose(got, n / (n + d + 1 + noise**2) * inv, atol=1e-11, rtol=1e-10)
    f_star = d + noise**2 - d * n / (n + d + 1 + noise**2)
    assert float(optimal_one_layer_loss(sigma, inv, n, noise)) == pytest.approx(f_star)


# ----------------------------------------------------------------------------- optimality


def _psd(draw_seed: int, d: int, floor: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(draw_seed)
    m = torch.randn(d, d, generator=g, dtype=F64)
    return m @ m.T / d + floor * torch.eye(d, dtype=F64)


@settings(max_examples=60, deadline=None)
@given(
    d=st.integers(1, 4),
    n=st.integers(1, 30),
    noise=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31 - 1),
    eps=st.floats(1e-3, 1.0),
)
def test_perturbing_the_optimum_raises_the_loss(d, n, noise, seed, eps):
    sigma, sigma_w = _psd(seed, d, 0.05), _psd(seed + 1, d, 0.05)
    g = torch.Generator().manual_seed(seed + 2)
    delta = torch.randn(d, d, generator=g, dtype=F64) * eps
    a_star = preconditioner_optimum(sigma, sigma_w, n, noise)
    f_star = one_layer_population_loss(a_star, sigma, sigma_w, n, noise)
    f_pert = one_layer_population_loss(a_star + delta, sigma, sigma_w, n, noise)
    # f is quadratic: f(A* + δ) − f* = tr(δ M δᵀ Σ) exactly, and M, Σ ≻ 0 make it positive
    M = one_layer_second_moment(sigma, sigma_w, n, noise)
    gap = torch.trace(delta @ M @ delta.T @ sigma)
    assert gap > 0
    assert float(f_pert - f_star) == pytest.approx(float(gap), rel=1e-7, abs=1e-12)
    assert f_pert > f_star
    assert float(f_star) == pytest.approx(
        float(optimal_one_layer_loss(sigma, sigma_w, n, noise)), rel=1e-9, abs=1e-12
    )


@pytest.mark.parametrize("noise", [0.0, 0.4])
def test_gradient_vanishes_at_optimum(noise):
    d, n = 5, 20
    sigma = rotated_covariance(d, [1.0, 1.0, 0.5, 0.25, 1.0], seed=0)
    sigma_w = _psd(9, d, 0.1)
    a_star = preconditioner_optimum(sigma, sigma_w, n, noise).requires_grad_(True)
    (grad,) = torch.autograd.grad(
        one_layer_population_loss(a_star, sigma, sigma_w, n, noise), a_star
    )
    assert grad.abs().max() < 1e-12
    # elsewhere the gradient is 2 Σ (A M − Σ_w Σ)
    A = _random_matrix(d, 4, 1.0).requires_grad_(True)
    (grad,) = torch.autograd.grad(one_layer_population_loss(A, sigma, sigma_w, n, noise), A)
    M = one_layer_second_moment(sigma, sigma_w, n, noise)
    assert torch.allclose(grad, 2 * sigma @ (A.detach() @ M - sigma_w @ sigma), atol=1e-12)


def test_batched_inputs_broadcast():
    d, n = 3, 6
    sigmas = torch.stack([_psd(s, d, 0.1) for s in range(4)])  # (4, d, d)
    As = torch.stack([_random_matrix(d, s) for s in range(2)])[:, None]  # (2, 1, d, d)
    eye = torch.eye(d, dtype=F64)
    out = one_layer_population_loss(As, sigmas, eye, n, 0.3)
    assert out.shape == (2, 4)
    for i in range(2):
        for j in range(4):
            single = one_layer_population_loss(As[i, 0], sigmas[j], eye, n, 0.3)
            assert float(out[i, j]) == pytest.approx(float(single), rel=1e-12)
    opt = preconditioner_optimum(sigmas, eye, n, 0.3)
    assert opt.shape == (4, d, d)
    assert torch.allclose(opt[2], preconditioner_optimum(sigmas[2], eye, n, 0.3))
    assert optimal_one_layer_loss(sigmas, eye, n, 0.3).shape == (4,)
    assert one_layer_population_loss(As[0, 0], sigmas[0], eye, n).dtype == F64


def test_invalid_arguments():
    eye = torch.eye(3, dtype=F64)
    with pytest.raises(ValueError):
        one_layer_population_loss(torch.eye(2), eye, eye, 5)
    with pytest.raises(ValueError):
        preconditioner_optimum(eye, torch.eye(2), 5)
    with pytest.raises(ValueError):
        optimal_one_layer_loss(eye, eye, 0)
    with pytest.raises(ValueError):
        optimal_one_layer_loss(eye, eye, 5, -1.0)
