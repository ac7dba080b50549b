"""Tests of the batched baseline learners in iclab.algorithms (all in float64).

Tolerances: exact algebraic identities evaluated in float64 on well-conditioned random problems
(condition numbers ≲ 1e3) agree to ~1e-13, so 1e-10 leaves a wide margin; Monte-Carlo claims are
checked with paired per-prompt differences against 3 standard errors.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from iclab.algorithms import (
    Prediction,
    TunedSteps,
    bayes_posterior_mean,
    gd_plus_plus,
    ols,
    preconditioned_gd,
    ridge,
    sufficient_statistics,
    tune_gd_step_sizes,
)
from iclab.models import LinearSelfAttention, LSAConfig
from iclab.tasks import LinearRegressionConfig, LinearRegressionTask

F64 = torch.float64
TIGHT = dict(rtol=1e-10, atol=1e-10)


def _batch(d=5, n=8, seeds=(0, 1), size=12, noise=0.3, covariance="rotated", prior="identity"):
    cfg = LinearRegressionConfig(
        d=d, n=n, covariance=covariance, weight_prior=prior, noise_std=noise
    )
    return LinearRegressionTask(cfg, seeds=list(seeds), dtype=F64).sample(size, "alg")


def _random_spd(E: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(E, d, d, generator=g, dtype=F64)
    return m @ m.transpose(-1, -2) / d + 0.2 * torch.eye(d, dtype=F64)


def _paired_margin(loss_worse: torch.Tensor, loss_better: torch.Tensor) -> float:
    """Mean paired difference in units of its standard error."""
    diff = (loss_worse - loss_better).flatten()
    return (diff.mean() / (diff.std() / math.sqrt(diff.numel()))).item()


# ------------------------------------------------------------------------------ naive references
def _naive_ols(X, y):
    return np.linalg.lstsq(X, y, rcond=None)[0]


def _naive_ridge(X, y, lam):
    return np.linalg.solve(X.T @ X + lam * np.eye(X.shape[1]), X.T @ y)


def _naive_bayes(X, y, cov_w, sigma):
    n, d = X.shape
    if sigma > 0:
        return cov_w @ X.T @ np.linalg.solve(X @ cov_w @ X.T + sigma**2 * np.eye(n), y)
    if n >= d:  # full column rank: the interpolant is the unique least-squares fit
        return _naive_ols(X, y)
    return cov_w @ X.T @ np.linalg.solve(X @ cov_w @ X.T, y)  # min Σ_w⁻¹-norm interpolant


def _naive_pgd(X, y, steps, gammas, w0):
    """One prompt, one explicit gradient per step: w ← w − η_ℓ Γ_ℓ (1/n) Xᵀ(Xw − y)."""
    w = w0.copy()
    traj = [w.copy()]
    for eta, gamma in zip(steps, gammas):
        w = w - eta * gamma @ (X.T @ (X @ w - y)) / X.shape[0]
        traj.append(w.copy())
    return w, np.array(traj)


def _naive_gd_plus_plus(X, y, xq, A, B):
    """One prompt, the natural definition: residual slots, accumulated query slot, and explicit
    covariate transforms x ← (I − B_ℓ S_ℓ A_ℓᵀ) x of every context and query covariate."""
    X, xq, r = X.copy(), xq.copy(), y.copy()
    n, d = X.shape
    pred = 0.0
    for A_l, B_l in zip(A, B):
        S = X.T @ X / n
        delta = A_l @ X.T @ r / n
        r = r - X @ delta
        pred += xq @ delta
        M = np.eye(d) - B_l @ S @ A_l.T
        X, xq = X @ M.T, M @ xq
    return pred


def _per_prompt(fn, x, y, *per_member):
    """Apply fn(X, y, *member_args) to every prompt; returns (E, B, …) numpy weights."""
    x, y = x.numpy(), y.numpy()
    E, B = x.shape[:2]
    return np.array(
        [[fn(x[e, b], y[e, b], *(a[e] for a in per_member)) for b in range(B)] for e in range(E)]
    )


# ------------------------------------------------------------------------------ closed forms
@pytest.mark.parametrize("n", [3, 5, 12])
def test_closed_forms_match_naive_numpy_loop(n):
    """24 prompts (E=2 members with their own Σ, λ, σ, Σ_w), n < d, n = d and n > d."""
    b = _batch(d=5, n=n)
    lam = torch.tensor([0.3, 2.0], dtype=F64)
    sigma = torch.tensor([0.4, 1.1], dtype=F64)
    cov_w = _random_spd(2, 5, seed=n)
    expected = {
        "ols": _per_prompt(_naive_ols, b.x, b.y),
        "ridge": _per_prompt(_naive_ridge, b.x, b.y, lam.numpy()),
        "bayes": _per_prompt(_naive_bayes, b.x, b.y, cov_w.numpy(), sigma.numpy()),
        "bayes0": _per_prompt(_naive_bayes, b.x, b.y, cov_w.numpy(), np.zeros(2)),
    }
    got = {
        "ols": ols(b.x, b.y, b.x_query),
        "ridge": ridge(b.x, b.y, b.x_query, lam),
        "bayes": bayes_posterior_mean(b.x, b.y, b.x_query, cov_w, sigma),
        "bayes0": bayes_posterior_mean(b.x, b.y, b.x_query, cov_w, 0.0),
    }
    for key, pred in got.items():
        assert isinstance(pred, Prediction)
        assert pred.weights.shape == (2, 12, 5) and pred.prediction.shape == (2, 12)
        np.testing.assert_allclose(pred.weights.numpy(), expected[key], **TIGHT, err_msg=key)
        torch.testing.assert_close(pred.prediction, (pred.weights * b.x_query).sum(-1))


@pytest.mark.parametrize("n", [5, 20])
def test_ols_recovers_w_without_noise(n):
    b = _batch(d=5, n=n, size=200, noise=0.0)
    torch.testing.assert_close(ols(b.x, b.y, b.x_query).weights, b.w, rtol=0, atol=1e-8)
    # σ = 0 Bayes is the interpolant: equal to OLS for n ≥ d (any positive-definite Σ_w)
    bayes = bayes_posterior_mean(b.x, b.y, b.x_query, _random_spd(2, 5, 0), 0.0)
    torch.testing.assert_close(bayes.weights, b.w, rtol=0, atol=1e-8)


def test_underdetermined_problems_interpolate_with_minimal_norm():
    b = _batch(d=6, n=3, size=20)
    w = ols(b.x, b.y, b.x_query).weights
    torch.testing.assert_close(torch.einsum("ebnd,ebd->ebn", b.x, w), b.y, **TIGHT)
    # minimal norm ⇔ w lies in the row space of X: w = Xᵀ c
    c = torch.linalg.lstsq(b.x.transpose(-1, -2), w.unsqueeze(-1)).solution
    torch.testing.assert_close(b.x.transpose(-1, -2) @ c, w.unsqueeze(-1), **TIGHT)
    # the σ = 0 Bayes interpolant has minimal Σ_w⁻¹-norm: w = Σ_w Xᵀ c
    cov_w = _random_spd(2, 6, 1)
    wb = bayes_posterior_mean(b.x, b.y, b.x_query, cov_w, 0.0).weights
    torch.testing.assert_close(torch.einsum("ebnd,ebd->ebn", b.x, wb), b.y, **TIGHT)
    design = cov_w.unsqueeze(1) @ b.x.transpose(-1, -2)
    c = torch.linalg.lstsq(design, wb.unsqueeze(-1)).solution
    torch.testing.assert_close(design @ c, wb.unsqueeze(-1), **TIGHT)


def test_rank_deficient_design_gives_min_norm_solution():
    """Duplicated columns (n ≥ d but rank < d): the min-norm fit, as numpy's lstsq."""
    b = _batch(d=4, n=10, size=10)
    x = torch.cat([b.x[..., :3], b.x[..., :1]], dim=-1)  # x₄ = x₁
    pred = ols(x, b.y, b.x_query)
    np.testing.assert_allclose(pred.weights.numpy(), _per_prompt(_naive_ols, x, b.y), **TIGHT)
    torch.testing.assert_close(pred.weights[..., 0], pred.weights[..., 3], **TIGHT)
    torch.testing.assert_close(ridge(x, b.y, b.x_query, 0.0).weights, pred.weights, **TIGHT)


def test_bayes_with_identity_prior_is_ridge_with_lambda_sigma_squared():
    b = _batch(n=7)
    sigma = torch.tensor([0.3, 1.5], dtype=F64)
    bayes = bayes_posterior_mean(b.x, b.y, b.x_query, torch.eye(5, dtype=F64), sigma)
    torch.testing.assert_close(bayes.weights, ridge(b.x, b.y, b.x_query, sigma**2).weights, **TIGHT)


def test_singular_prior_uses_only_its_range():
    """Σ_w = diag(I_k, 0): the posterior mean is ridge (σ > 0) or OLS (σ = 0) on the first k
    covariates, zero elsewhere, even though the labels here also depend on the other ones."""
    b = _batch(d=5, n=6)
    k = 2
    cov_w = torch.diag(torch.tensor([1.0] * k + [0.0] * (5 - k), dtype=F64))
    for sigma in (0.0, 0.5):
        got = bayes_posterior_mean(b.x, b.y, b.x_query, cov_w, sigma).weights
        reduced = ridge(b.x[..., :k], b.y, b.x_query[..., :k], sigma**2).weights
        torch.testing.assert_close(got[..., :k], reduced, **TIGHT)
        assert torch.all(got[..., k:].abs() < 1e-12)


def test_per_ensemble_parameters_equal_separate_calls():
    b = _batch(n=4)
    cov_w, sigma, lam = _random_spd(2, 5, 3), torch.tensor([0.2, 0.9], dtype=F64), [0.1, 3.0]
    joint_bayes = bayes_posterior_mean(b.x, b.y, b.x_query, cov_w, sigma).prediction
    joint_ridge = ridge(b.x, b.y, b.x_query, torch.tensor(lam, dtype=F64)).prediction
    for e in range(2):
        s = slice(e, e + 1)
        single = bayes_posterior_mean(b.x[s], b.y[s], b.x_query[s], cov_w[e], sigma[e].item())
        torch.testing.assert_close(joint_bayes[s], single.prediction, **TIGHT)
        torch.testing.assert_close(
            joint_ridge[s], ridge(b.x[s], b.y[s], b.x_query[s], lam[e]).prediction, **TIGHT
        )


def test_bayes_has_the_lowest_monte_carlo_loss():
    """n ≈ d, noisy labels, anisotropic prior Σ_w = Σ⁻¹: the posterior mean beats OLS and ridge
    (the identity-prior posterior mean for λ = σ², and a grid of λ) on the query, by > 3 SE."""
    sigma = 0.5
    b = _batch(d=5, n=7, seeds=(3,), size=20000, noise=sigma, prior="inverse_covariance")

    def loss(p: Prediction) -> torch.Tensor:
        return (p.prediction - b.y_query) ** 2

    bayes = loss(bayes_posterior_mean(b.x, b.y, b.x_query, b.weight_covariance, sigma))
    rivals = {"ols": loss(ols(b.x, b.y, b.x_query))}
    for lam in [sigma**2, *torch.logspace(-3, 1, 9).tolist()]:  # the best λ ≈ 0.03 loses by 16 SE
        rivals[f"ridge {lam:.3g}"] = loss(ridge(b.x, b.y, b.x_query, lam))
    for name, rival in rivals.items():
        assert _paired_margin(rival, bayes) > 3, name


# ------------------------------------------------------------------------------ gradient descent
@pytest.mark.parametrize("shape", ["none", "dd", "edd", "eldd", "1ldd"])
def test_preconditioned_gd_matches_naive_loop(shape):
    b = _batch(d=4, n=9, size=10)
    E, L, d = 2, 3, 4
    g = torch.Generator().manual_seed(5)
    steps = 0.3 + torch.rand(E, L, generator=g, dtype=F64)
    full = torch.eye(d, dtype=F64) + 0.3 * torch.randn(E, L, d, d, generator=g, dtype=F64)
    pre = {
        "none": None,
        "dd": full[0, 0],
        "edd": full[:, 0],
        "eldd": full,
        "1ldd": full[:1],
    }[shape]
    gammas = {
        "none": torch.eye(d, dtype=F64).expand(E, L, d, d),
        "dd": full[:1, :1].expand(E, L, d, d),
        "edd": full[:, :1].expand(E, L, d, d),
        "eldd": full,
        "1ldd": full[:1].expand(E, L, d, d),
    }[shape].numpy()
    w0 = 0.1 * torch.randn(E, 10, d, generator=g, dtype=F64)
    for step_arg, step_np in ((steps, steps.numpy()), (steps[0], steps[:1].expand(E, L).numpy())):
        got = preconditioned_gd(b.x, b.y, b.x_query, step_arg, pre, w0=w0, return_trajectory=True)
        x, y, w0n = b.x.numpy(), b.y.numpy(), w0.numpy()
        ref = [
            [_naive_pgd(x[e, i], y[e, i], step_np[e], gammas[e], w0n[e, i]) for i in range(10)]
            for e in range(E)
        ]
        np.testing.assert_allclose(
            got.weights.numpy(), [[r[0] for r in row] for row in ref], rtol=1e-12, atol=1e-12
        )
        np.testing.assert_allclose(
            got.trajectory.numpy(), [[r[1] for r in row] for row in ref], rtol=1e-12, atol=1e-12
        )
        torch.testing.assert_close(got.prediction, (got.weights * b.x_query).sum(-1))


def test_sparse_pgd_lsa_is_preconditioned_gd_with_unit_steps():
    b = _batch(d=4, n=6, size=8)
    L = 3
    model = LinearSelfAttention(
        4, LSAConfig(layers=L, parametrization="sparse_pgd", init_std=0.4), seeds=[0, 1], dtype=F64
    )
    A = model.A[:, :, 0].detach()  # (E, L, d, d), non-symmetric
    expected = preconditioned_gd(b.x, b.y, b.x_query, torch.ones(L, dtype=F64), A).prediction
    torch.testing.assert_close(model(b.x, b.y, b.x_query).detach(), expected, **TIGHT)


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_gd_plus_plus_equals_pgd_lsa_and_naive_loop(layers):
    """Random non-symmetric A, B: GD++ = LSA('pgd', 'negative', set_pgd(A, B)) = naive loop."""
    b = _batch(d=4, n=7, size=6, noise=0.1)
    g = torch.Generator().manual_seed(layers)
    A = 0.5 * torch.randn(2, layers, 4, 4, generator=g, dtype=F64)
    B = 0.5 * torch.randn(2, layers, 4, 4, generator=g, dtype=F64)
    cfg = LSAConfig(layers=layers, parametrization="pgd", readout="negative")
    model = LinearSelfAttention(4, cfg, seeds=[0, 1], dtype=F64)
    model.set_pgd(A.unsqueeze(2), B.unsqueeze(2))
    got = gd_plus_plus(b.x, b.y, b.x_query, A, B, return_trajectory=True)
    with torch.no_grad():
        torch.testing.assert_close(got.prediction, model(b.x, b.y, b.x_query), **TIGHT)
    x, y, xq = b.x.numpy(), b.y.numpy(), b.x_query.numpy()
    naive = [
        [
            _naive_gd_plus_plus(x[e, i], y[e, i], xq[e, i], A[e].numpy(), B[e].numpy())
            for i in range(6)
        ]
        for e in range(2)
    ]
    np.testing.assert_allclose(got.prediction.numpy(), naive, **TIGHT)
    assert got.trajectory.shape == (2, 6, layers + 1, 4)
    torch.testing.assert_close(got.trajectory[..., -1, :], got.weights)
    # B = 0 is sparse PGD: preconditioned GD with unit steps; shared (L, d, d) maps broadcast
    sparse = gd_plus_plus(b.x, b.y, b.x_query, A[0])
    pgd = preconditioned_gd(b.x, b.y, b.x_query, torch.ones(layers, dtype=F64), A[:1])
    torch.testing.assert_close(sparse.prediction, pgd.prediction, **TIGHT)


# ------------------------------------------------------------------------------ step-size tuning
def _direct_loss(steps, batch, pre=None):
    p = preconditioned_gd(batch.x, batch.y, batch.x_query, steps, pre).prediction
    return ((p - batch.y_query) ** 2).mean(-1)


def test_tuned_steps_are_a_stationary_point_and_beat_the_initial_guesses():
    b = _batch(d=5, n=10, size=3000, prior="inverse_covariance")
    g = torch.Generator().manual_seed(0)
    per_step = torch.eye(5, dtype=F64) + 0.2 * torch.randn(2, 3, 5, 5, generator=g, dtype=F64)
    for pre in (None, torch.linalg.inv(b.covariance), per_step):
        tuned = tune_gd_step_sizes(b.x, b.y, b.x_query, b.y_query, layers=3, preconditioner=pre)
        assert isinstance(tuned, TunedSteps) and tuned.step_sizes.shape == (2, 3)
        steps = tuned.step_sizes.clone().requires_grad_(True)
        loss = _direct_loss(steps, b, pre)
        torch.testing.assert_close(loss.detach(), tuned.loss, rtol=1e-12, atol=0)
        assert torch.all(tuned.loss <= tuned.initial_loss)
        (grad,) = torch.autograd.grad(loss.sum(), steps)
        # relative gradient: |∂ log f / ∂ log η| at the optimum ≈ 0
        assert torch.all((grad * steps / loss.unsqueeze(-1)).abs() < 1e-6)
        # no nearby point is better
        for delta in (1e-3, -1e-3):
            for k in range(3):
                moved = tuned.step_sizes.clone()
                moved[:, k] *= 1 + delta
                assert torch.all(_direct_loss(moved, b, pre) >= tuned.loss)


def test_per_ensemble_tuning_equals_tuning_each_member_and_shared_tuning_is_one_vector():
    b = _batch(d=4, n=8, size=2000)
    joint = tune_gd_step_sizes(b.x, b.y, b.x_query, b.y_query, layers=2)
    for e in range(2):
        s = slice(e, e + 1)
        alone = tune_gd_step_sizes(b.x[s], b.y[s], b.x_query[s], b.y_query[s], layers=2)
        torch.testing.assert_close(joint.step_sizes[s], alone.step_sizes, rtol=1e-6, atol=0)
    shared = tune_gd_step_sizes(b.x, b.y, b.x_query, b.y_query, layers=2, per_ensemble=False)
    assert shared.step_sizes.shape == (2,) and shared.loss.shape == (2,)
    assert shared.loss.mean() >= joint.loss.mean() - 1e-12
    with_init = tune_gd_step_sizes(b.x, b.y, b.x_query, b.y_query, 2, init=[0.5, 1.0])
    torch.testing.assert_close(with_init.loss, joint.loss, rtol=1e-9, atol=0)


def test_tuning_with_per_step_preconditioners():
    b = _batch(d=4, n=8, size=2000)
    scales = torch.tensor([1.0, 0.5, 2.0], dtype=F64)
    pre = scales[None, :, None, None] * torch.eye(4, dtype=F64)  # (1, L, d, d): Γ_ℓ = c_ℓ I
    per_step = tune_gd_step_sizes(b.x, b.y, b.x_query, b.y_query, layers=3, preconditioner=pre)
    plain = tune_gd_step_sizes(b.x, b.y, b.x_query, b.y_query, layers=3)
    # the same function class (η_ℓ c_ℓ free): same optimum, steps rescaled by 1/c_ℓ
    torch.testing.assert_close(per_step.loss, plain.loss, rtol=1e-8, atol=0)
    torch.testing.assert_close(
        (per_step.step_sizes * scales).sort(-1).values, plain.step_sizes.sort(-1).values,
        rtol=1e-4, atol=0,
    )  # fmt: skip


def test_sigma_inverse_preconditioning_beats_plain_gd_on_rotated_covariance():
    """Tune on a held-out batch, compare on a separate test batch (paired, > 3 SE)."""
    cfg = LinearRegressionConfig(d=5, n=20, covariance="rotated", weight_prior="inverse_covariance")
    task = LinearRegressionTask(cfg, seeds=[0, 1], dtype=F64)
    held, test = task.sample(3000, "held"), task.sample(5000, "test")
    pre = torch.linalg.inv(task.covariance)
    for layers in (1, 2):
        plain = tune_gd_step_sizes(held.x, held.y, held.x_query, held.y_query, layers)
        precond = tune_gd_step_sizes(held.x, held.y, held.x_query, held.y_query, layers, pre)
        lp = (plain.predict(test.x, test.y, test.x_query).prediction - test.y_query) ** 2
        lq = (precond.predict(test.x, test.y, test.x_query).prediction - test.y_query) ** 2
        for e in range(2):
            assert _paired_margin(lp[e], lq[e]) > 3


def test_one_tuned_preconditioned_step_reaches_ahn_theorem_1():
    """Σ_w = Σ⁻¹, σ = 0: A* = n/(n+d+1) Σ⁻¹ and f* = tr(Σ_wΣ) − tr(Σ A* Σ Σ_w), per member."""
    d, n = 5, 20
    cfg = LinearRegressionConfig(d=d, n=n, covariance="rotated", weight_prior="inverse_covariance")
    task = LinearRegressionTask(cfg, seeds=[0, 1], dtype=F64)  # two different Σ
    held, test = task.sample(20000, "held"), task.sample(20000, "test")
    cov = task.covariance
    cov_w = task.weight_covariance
    a_star = n / (n + d + 1)
    A_star = a_star * torch.linalg.inv(cov)
    f_star = torch.einsum("eii->e", cov_w @ cov) - torch.einsum(
        "eii->e", cov @ A_star @ cov @ cov_w
    )
    torch.testing.assert_close(f_star, torch.full((2,), d * (d + 1) / (n + d + 1), dtype=F64))
    tuned = tune_gd_step_sizes(
        held.x, held.y, held.x_query, held.y_query, 1, preconditioner=torch.linalg.inv(cov)
    )
    err = (tuned.predict(test.x, test.y, test.x_query).prediction - test.y_query) ** 2
    se = err.std(-1) / math.sqrt(err.shape[-1])
    assert torch.all((err.mean(-1) - f_star).abs() < 3 * se)
    # the tuned step estimates a* = n/(n+d+1) ≈ 0.769 to ~1 % (B = 20000); 0.03 is > 3 SE
    assert torch.all((tuned.step_sizes[:, 0] - a_star).abs() < 0.03)


# ------------------------------------------------------------------------------ shapes, dtypes
def test_float32_device_and_dtype_follow_the_inputs():
    b = _batch(d=3, n=4, size=5).to(torch.float32)
    for p in (
        ols(b.x, b.y, b.x_query),
        ridge(b.x, b.y, b.x_query, 0.1),
        bayes_posterior_mean(b.x, b.y, b.x_query, torch.eye(3, dtype=F64), 0.1),
        preconditioned_gd(b.x, b.y, b.x_query, [0.5, 0.5]),
        gd_plus_plus(b.x, b.y, b.x_query, torch.eye(3).expand(2, 3, 3), torch.zeros(2, 3, 3)),
    ):
        assert p.prediction.dtype == torch.float32 and p.prediction.device == b.x.device
    tuned = tune_gd_step_sizes(b.x, b.y, b.x_query, b.y_query, 2)
    assert tuned.step_sizes.dtype == F64
    assert tuned.predict(b.x, b.y, b.x_query).prediction.dtype == torch.float32


def test_data_with_one_member_broadcasts_over_per_ensemble_parameters():
    b = _batch(d=3, n=5, seeds=(0,), size=4)
    cov_w = _random_spd(3, 3, 0)
    joint = bayes_posterior_mean(b.x, b.y, b.x_query, cov_w, 0.2)
    assert joint.prediction.shape == (3, 4)
    pre = cov_w.unsqueeze(1).expand(3, 2, 3, 3)
    p = preconditioned_gd(
        b.x, b.y, b.x_query, torch.ones(3, 2, dtype=F64), pre, return_trajectory=True
    )
    assert p.prediction.shape == (3, 4) and p.trajectory.shape == (3, 4, 3, 3)
    single = preconditioned_gd(b.x, b.y, b.x_query, [1.0, 1.0], cov_w[1])
    torch.testing.assert_close(p.prediction[1:2], single.prediction, **TIGHT)


def test_invalid_arguments_raise():
    b = _batch(d=3, n=4, size=2)
    with pytest.raises(ValueError, match="y"):
        ols(b.x, b.y[..., :-1], b.x_query)
    with pytest.raises(ValueError, match="lam"):
        ridge(b.x, b.y, b.x_query, -1.0)
    with pytest.raises(ValueError, match="weight_covariance"):
        bayes_posterior_mean(b.x, b.y, b.x_query, torch.eye(4, dtype=F64), 0.1)
    with pytest.raises(ValueError, match="step_sizes"):
        preconditioned_gd(b.x, b.y, b.x_query, torch.ones(3, 2, dtype=F64))
    with pytest.raises(ValueError, match="preconditioner"):
        preconditioned_gd(b.x, b.y, b.x_query, [1.0, 1.0], torch.eye(3).expand(2, 3, 3, 3))
    with pytest.raises(ValueError, match="covariate_maps"):
        gd_plus_plus(b.x, b.y, b.x_query, torch.eye(3).expand(2, 3, 3), torch.eye(3))
    with pytest.raises(ValueError, match="layers"):
        tune_gd_step_sizes(b.x, b.y, b.x_query, b.y_query, 0)


@settings(max_examples=25, deadline=None)
@given(
    E=st.integers(1, 3),
    B=st.integers(1, 4),
    n=st.integers(1, 6),
    d=st.integers(1, 5),
    L=st.integers(1, 3),
    seed=st.integers(0, 2**31 - 1),
)
def test_shapes_and_finiteness_property(E, B, n, d, L, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(E, B, n, d, generator=g, dtype=F64)
    y = torch.randn(E, B, n, generator=g, dtype=F64)
    xq = torch.randn(E, B, d, generator=g, dtype=F64)
    A = torch.eye(d, dtype=F64) + 0.1 * torch.randn(E, L, d, d, generator=g, dtype=F64)
    preds = [
        ols(x, y, xq),
        ridge(x, y, xq, 0.5),
        bayes_posterior_mean(x, y, xq, _random_spd(E, d, seed % 1000), 0.3),
        bayes_posterior_mean(x, y, xq, torch.zeros(d, d, dtype=F64), 0.0),
        preconditioned_gd(x, y, xq, 0.2 * torch.ones(L, dtype=F64), A, return_trajectory=True),
        gd_plus_plus(x, y, xq, 0.2 * A, 0.1 * A),
    ]
    for p in preds:
        assert p.prediction.shape == (E, B) and p.weights.shape == (E, B, d)
        assert torch.isfinite(p.prediction).all() and torch.isfinite(p.weights).all()
    assert preds[4].trajectory.shape == (E, B, L + 1, d)
    S, bvec = sufficient_statistics(x, y)
    assert S.shape == (E, B, d, d) and bvec.shape == (E, B, d)
    yq = torch.randn(E, B, generator=g, dtype=F64)
    tuned = tune_gd_step_sizes(x, y, xq, yq, L, preconditioner=A, max_iter=10)
    assert tuned.step_sizes.shape == (E, L) and tuned.loss.shape == (E,)
    assert torch.isfinite(tuned.step_sizes).all() and torch.isfinite(tuned.loss).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("n", [3, 5, 12])
def test_cuda_matches_cpu(n):
    """Rank-deficient and underdetermined problems included (where lstsq's CUDA driver fails)."""
    b = _batch(d=5, n=n, size=50)
    x = torch.cat([b.x[..., :4], b.x[..., :1]], dim=-1)
    cuda = [t.cuda() for t in (x, b.y, b.x_query)]
    for fn in (
        lambda *a: ols(*a),
        lambda *a: ridge(*a, 0.1),
        lambda *a: bayes_posterior_mean(*a, b.weight_covariance.to(a[0].device), 0.0),
        lambda *a: preconditioned_gd(*a, [0.3, 0.5]),
        lambda *a: gd_plus_plus(
            *a, 0.3 * torch.eye(5, dtype=F64, device=a[0].device).expand(2, 5, 5)
        ),
    ):
        torch.testing.assert_close(
            fn(*cuda).prediction.cpu(), fn(x, b.y, b.x_query).prediction, **TIGHT
        )
    tuned = tune_gd_step_sizes(*cuda, b.y_query.cuda(), 2)
    assert tuned.step_sizes.device.type == "cuda"
