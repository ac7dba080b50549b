"""Multi-layer PGD-class theory: Wishart reduction vs the actual LSA model, best scalars."""

from __future__ import annotations

import functools
import itertools
import math

import pytest
import torch

from iclab.models import LinearSelfAttention, LSAConfig
from iclab.tasks import LinearRegressionConfig, LinearRegressionTask
from iclab.theory import (
    best_pgd_scalars,
    optimal_one_layer_loss,
    pgd_class_loss,
    pgd_class_matrices,
    pgd_class_sample_losses,
    wishart_eigenvalues,
    wishart_sample,
)
from iclab.theory.linear_regression.multilayer import _gauss2_compress, pooled

F64 = torch.float64


def _whitened_eigenvalues(batch) -> torch.Tensor:
    """Eigenvalues of Σ^{-1/2} S Σ^{-1/2} per prompt, (B, d), for ensemble member 0."""
    x = batch.x[0]
    S = x.transpose(-1, -2) @ x / batch.n
    chol = torch.linalg.cholesky(batch.covariance[0])
    Linv = torch.linalg.solve_triangular(chol, torch.eye(batch.d, dtype=F64), upper=False)
    return torch.linalg.eigvalsh(Linv @ S @ Linv.T)


def _model_errors(a, b, batch, sparse: bool) -> torch.Tensor:
    """Squared errors of the negative-readout LSA loaded with A_ℓ = a_ℓ Σ⁻¹, B_ℓ = b_ℓ I."""
    L, d = a.shape[0], batch.d
    cfg = LSAConfig(layers=L, parametrization="sparse_pgd" if sparse else "pgd", readout="negative")
    model = LinearSelfAttention(d, cfg, seeds=[0], dtype=F64)
    A, B = pgd_class_matrices((a, None if sparse else b), batch.covariance[0])
    if sparse:
        model.set_pgd(A[None, :, None])
    else:
        model.set_pgd(A[None, :, None], B[None, :, None])
    with torch.no_grad():
        pred = model(batch.x, batch.y, batch.x_query)
    return ((pred - batch.y_query) ** 2)[0]


@functools.lru_cache(maxsize=4)
def _batch(d, n, covariance, noise, prompts, seed=0):
    cfg = LinearRegressionConfig(
        d=d, n=n, covariance=covariance, weight_prior="inverse_covariance", noise_std=noise
    )
    return LinearRegressionTask(cfg, seeds=[seed], dtype=F64).sample(prompts, "theory_ml")


@functools.lru_cache(maxsize=2)
def _eigen(d, n, num_samples, seed):
    return wishart_eigenvalues(d, n, num_samples, seed)


A_VALUES = torch.tensor([0.4, 0.9, 1.3], dtype=F64)
B_VALUES = torch.tensor([0.6, 0.3, 0.7], dtype=F64)  # b_L ≠ 0 on purpose: it must not matter


@pytest.mark.parametrize("covariance", ["identity", "rotated"])
@pytest.mark.parametrize("noise", [0.0, 0.3])
@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("sparse", [True, False])
def test_class_loss_matches_lsa_model(covariance, noise, layers, sparse):
    d, n, prompts = 3, 8, 40_000
    batch = _batch(d, n, covariance, noise, prompts)
    a, b = A_VALUES[:layers], B_VALUES[:layers]
    err2 = _model_errors(a, b, batch, sparse)
    bb = None if sparse else b
    # paired: per prompt, the conditional expected loss given the prompt's covariates
    cond = pgd_class_sample_losses(a, bb, _whitened_eigenvalues(batch), n, noise)
    diff = err2 - cond
    se_pair = float(diff.std()) / math.sqrt(prompts)
    assert abs(float(diff.mean())) < 3 * se_pair
    # unpaired: against an independent Wishart eigen-sample
    loss, se = pgd_class_loss(a, bb, _eigen(d, n, 100_000, 1), n, noise)
    mc, mc_se = float(err2.mean()), float(err2.std()) / math.sqrt(prompts)
    assert abs(mc - float(loss)) < 3 * math.hypot(mc_se, float(se))


def test_whitening_invariance_is_exact():
    # same random stream: the rotated prompts are a linear image of the isotropic ones, and
    # A_ℓ = a_ℓ Σ⁻¹, B_ℓ = b_ℓ I make the model's errors identical up to rounding
    iso, rot = _batch(3, 8, "identity", 0.3, 40_000), _batch(3, 8, "rotated", 0.3, 40_000)
    a, b = A_VALUES, B_VALUES
    e_iso, e_rot = _model_errors(a, b, iso, False), _model_errors(a, b, rot, False)
    assert torch.allclose(e_iso, e_rot, rtol=1e-8, atol=1e-10)
    assert torch.allclose(_whitened_eigenvalues(iso), _whitened_eigenvalues(rot), atol=1e-10)


def test_paper_setting_three_layer_optimum_matches_model():
    d, n, L = 5, 20, 3
    best = best_pgd_scalars(L, d, n, num_samples=50_000)
    batch = _batch(d, n, "rotated", 0.0, 100_000, seed=3)
    err2 = _model_errors(best.a, best.b, batch, sparse=False)
    mc, mc_se = float(err2.mean()), float(err2.std()) / math.sqrt(err2.numel())
    assert abs(mc - best.loss) < 3 * math.hypot(mc_se, best.standard_error)
    assert best.loss < 2e-3  # Ahn et al.'s 3-layer PGD-class loss ~1e-3


# ----------------------------------------------------------------------------- eigenvalues


def test_wishart_eigenvalues_shape_order_and_moments():
    d, n, N = 4, 9, 100_000
    lam = wishart_eigenvalues(d, n, N, seed=0)
    assert lam.shape == (N, d) and lam.dtype == F64
    assert (lam[:, 1:] >= lam[:, :-1]).all() and (lam >= 0).all()
    assert torch.equal(lam[:10], wishart_eigenvalues(d, n, N, seed=0)[:10])
    assert not torch.equal(lam[:10], wishart_eigenvalues(d, n, N, seed=1)[:10])
    s1, s2 = lam.sum(1), (lam**2).sum(1)
    se1, se2 = float(s1.std()) / math.sqrt(N), float(s2.std()) / math.sqrt(N)
    assert abs(float(s1.mean()) - d) < 4 * se1  # E tr S = d
    assert abs(float(s2.mean()) - d * (n + d + 1) / n) < 4 * se2  # E tr S² = d(n+d+1)/n


def test_wishart_eigenvalues_rank_deficient():
    lam = wishart_eigenvalues(5, 2, 1000, seed=0)
    assert (lam[:, :3] == 0).all() and (lam[:, 3:] > 0).all()


def test_compression_is_exact_for_cubics():
    lam = wishart_eigenvalues(3, 10, 20_000, seed=4).reshape(-1).sort().values
    nodes, weights = _gauss2_compress(lam, bin_size=256, tail=100)
    assert nodes.numel() < lam.numel() / 50
    for k in range(4):
        assert float((weights * nodes**k).sum()) == pytest.approx(float((lam**k).mean()), rel=1e-12)


def test_compression_is_exact_for_cubics_of_a_weighted_sample():
    lam, w = wishart_sample(3, 10, 20_000, seed=4)
    flat, mass = pooled(lam, w)
    nodes, weights = _gauss2_compress(flat, bin_size=256, tail=100, mass=mass)
    assert nodes.numel() < flat.numel() / 50
    for k in range(4):
        exact = float((w[:, None] * lam**k).sum()) / lam.numel()
        assert float((weights * nodes**k).sum()) == pytest.approx(exact, rel=1e-12)


# ------------------------------------------------------------------ importance-sampled draws


def test_wishart_sample_weights_are_unbiased():
    d, n, N = 4, 9, 200_000
    lam, w = wishart_sample(d, n, N, seed=0)
    assert lam.shape == (N, d) and w.shape == (N,) and lam.dtype == w.dtype == F64
    assert (lam[:, 1:] >= lam[:, :-1]).all() and (w > 0).all() and float(w.max()) <= 5.0
    assert torch.equal(w[:10], wishart_sample(d, n, N, seed=0)[1][:10])
    for f, exact in (
        (torch.ones(N, dtype=F64), 1.0),
        (lam.sum(1), d),  # E tr S = d
        (lam.pow(2).sum(1), d * (n + d + 1) / n),  # E tr S² = d(n+d+1)/n
    ):
        v = w * f
        assert abs(float(v.mean()) - exact) < 4 * float(v.std()) / math.sqrt(N)


def test_wishart_sample_sees_the_tail_a_plain_sample_misses():
    """d = 1: S = χ²_n / n has E[S^j] = Π_{i<j} (n + 2i) / n^j exactly. At j = 16, n = 10 the
    mean is carried by S ≈ 2.5–4, about 1 draw in 2000: the weighted estimate is within 4 SE of
    the exact moment with a far smaller relative error than the plain sample's."""
    n, j, N = 10, 16, 100_000
    exact = math.prod(n + 2 * i for i in range(j)) / n**j
    lam, w = wishart_sample(1, n, N, seed=1)
    v = w * lam[:, 0] ** j
    se = float(v.std()) / math.sqrt(N)
    assert abs(float(v.mean()) - exact) < 4 * se
    plain = wishart_eigenvalues(1, n, N, seed=1)[:, 0] ** j
    plain_se = float(plain.std()) / math.sqrt(N)
    assert se / exact < 0.05 and plain_se > 3 * se


def test_wishart_sample_rejects_scales_without_one():
    with pytest.raises(ValueError, match="scales"):
        wishart_sample(3, 5, 10, scales=(1.2, 1.5))
    with pytest.raises(ValueError, match="scales"):
        wishart_sample(3, 5, 10, scales=(1.0, 0.8))


def test_class_loss_with_unit_weights_is_the_plain_loss():
    lam = wishart_eigenvalues(5, 20, 5000, seed=2)
    a, b = A_VALUES, B_VALUES
    plain = pgd_class_loss(a, b, lam, 20)
    ones = pgd_class_loss(a, b, lam, 20, weights=torch.ones(5000, dtype=F64))
    assert torch.equal(plain[0], ones[0]) and torch.equal(plain[1], ones[1])


def test_weighted_draws_find_the_exact_optimum_that_plain_draws_miss():
    """L = 3, n = 20: the minimizer of plain draws has an exact population loss tens of times the
    exact optimum (it fits step sizes the sample cannot punish); the minimizer of as many
    importance-sampled draws is within 50% of it; the default result is the exact optimum."""
    from iclab.theory import pgd_class_loss_exact

    d, n, L = 5, 20, 3
    best = best_pgd_scalars(L, d, n, num_samples=100_000)
    assert best.converged and best.standard_error == 0.0 and best.accuracy.startswith("exact")
    assert best.loss == pytest.approx(pgd_class_loss_exact(best.a, best.b, d, n), rel=1e-12)
    plain = best_pgd_scalars(L, d, n, eigenvalues=wishart_eigenvalues(d, n, 100_000, seed=0))
    assert pgd_class_loss_exact(plain.a, plain.b, d, n) > 10 * best.loss
    lam, w = wishart_sample(d, n, 100_000, seed=0)
    weighted = best_pgd_scalars(L, d, n, eigenvalues=lam, weights=w)
    assert "importance-sampled" in weighted.accuracy
    assert best.loss <= pgd_class_loss_exact(weighted.a, weighted.b, d, n) < 1.5 * best.loss


def test_class_loss_is_differentiable():
    lam = wishart_eigenvalues(3, 6, 2000, seed=0)
    a = torch.tensor([0.4, 1.2], dtype=F64, requires_grad=True)
    b = torch.tensor([0.5, 0.0], dtype=F64, requires_grad=True)
    loss, _ = pgd_class_loss(a, b, lam, 6, 0.2)
    ga, gb = torch.autograd.grad(loss, (a, b))
    assert float(gb[1]) == 0.0  # the last covariate map never reaches the prediction
    h = 1e-6
    a, b = a.detach(), b.detach()
    for i in range(2):
        e = torch.zeros(2, dtype=F64)
        e[i] = h
        num = (
            pgd_class_loss(a + e, b, lam, 6, 0.2)[0] - pgd_class_loss(a - e, b, lam, 6, 0.2)[0]
        ) / (2 * h)
        assert float(ga[i]) == pytest.approx(float(num), rel=1e-6)
    num_b = (pgd_class_loss(a, b + h * torch.tensor([1.0, 0]), lam, 6, 0.2)[0] - loss.detach()) / h
    assert float(gb[0]) == pytest.approx(float(num_b), rel=1e-4)


# ----------------------------------------------------------------------------- best scalars


@pytest.mark.parametrize("noise", [0.0, 0.5])
def test_one_layer_best_scalar_is_the_closed_form(noise):
    d, n, N = 5, 20, 100_000
    lam = wishart_eigenvalues(d, n, N, seed=0)
    for sparse in (True, False):
        best = best_pgd_scalars(1, d, n, noise, sparse=sparse, eigenvalues=lam)
        # exact minimizer of the sample loss: a = mean Σλ / mean Σ(λ² + σ²λ/n)
        u, v = lam.sum(1), (lam**2 + noise**2 / n * lam).sum(1)
        a_hat = float(u.mean() / v.mean())
        assert float(best.a[0]) == pytest.approx(a_hat, rel=1e-9)
        se_a = float((u - a_hat * v).std() / v.mean()) / math.sqrt(N)  # delta method
        assert abs(a_hat - n / (n + d + 1 + noise**2)) < 4 * se_a
        f_star = float(
            optimal_one_layer_loss(torch.eye(d, dtype=F64), torch.eye(d, dtype=F64), n, noise)
        )
        assert abs(best.loss - f_star) < 3 * best.standard_error
        assert best.converged and float(best.b[0]) == 0.0


@functools.lru_cache(maxsize=1)
def _ladder():
    d, n = 5, 20
    lam = wishart_eigenvalues(d, n, 40_000, seed=0)
    return {
        (L, sparse): best_pgd_scalars(L, d, n, sparse=sparse, eigenvalues=lam)
        for L in (1, 2, 3, 4)
        for sparse in (True, False)
    }, lam


def test_more_layers_never_hurt_and_pgd_beats_sparse():
    res, _ = _ladder()
    for sparse in (True, False):
        losses = [res[(L, sparse)].loss for L in (1, 2, 3, 4)]
        assert all(x > y for x, y in itertools.pairwise(losses)), losses
    for L in (1, 2, 3, 4):
        assert res[(L, False)].loss <= res[(L, True)].loss * (1 + 1e-12)
    for L in (2, 3, 4):
        assert res[(L, False)].loss < 0.5 * res[(L, True)].loss
    for r in res.values():
        assert r.converged, r.accuracy
        assert r.standard_error > 0 and r.relative_standard_error < 0.5
    for L in (1, 2, 3):  # at L = 4 the per-draw loss is heavy-tailed (rare ill-conditioned X)
        assert res[(L, False)].relative_standard_error < 0.05


def test_sparse_scalars_sorted_and_last_b_zero():
    res, _ = _ladder()
    for L in (2, 3, 4):
        a = res[(L, True)].a
        assert torch.equal(a, a.sort().values)
        assert (res[(L, True)].b == 0).all()
        assert float(res[(L, False)].b[-1]) == 0.0


@pytest.mark.parametrize("layers", [2, 3, 4])
@pytest.mark.parametrize("sparse", [True, False])
def test_returned_optimum_is_a_local_minimum(layers, sparse):
    res, lam = _ladder()
    best = res[(layers, sparse)]
    n = best.n
    b = None if sparse else best.b
    base = float(pgd_class_loss(best.a, b, lam, n)[0])
    assert base == pytest.approx(best.loss, rel=1e-12)
    g = torch.Generator().manual_seed(layers)
    for _ in range(10):
        da = torch.randn(layers, generator=g, dtype=F64) * 1e-3 * best.a.abs()
        db = None
        if not sparse:
            db = torch.randn(layers, generator=g, dtype=F64) * 1e-3 * best.b.abs()
            db[-1] = 0.0
        pert = float(pgd_class_loss(best.a + da, None if sparse else b + db, lam, n)[0])
        assert pert > base


def test_matrices_shapes_and_values():
    res, _ = _ladder()
    best = res[(3, False)]
    cov = torch.diag(torch.tensor([1.0, 2.0, 0.5, 4.0, 1.0], dtype=F64))
    A, B = pgd_class_matrices(best, cov)
    assert A.shape == (3, 5, 5) and B.shape == (3, 5, 5)
    assert torch.allclose(A[1], best.a[1] * torch.linalg.inv(cov))
    assert torch.allclose(B[0], best.b[0] * torch.eye(5, dtype=F64))
    batched = torch.stack([cov, 2 * cov])
    A2, B2 = pgd_class_matrices(best, batched)
    assert A2.shape == (2, 3, 5, 5) and B2.shape == (2, 3, 5, 5)
    assert torch.allclose(A2[1], A / 2)


def test_invalid_arguments():
    with pytest.raises(ValueError):
        best_pgd_scalars(0, 3, 5)
    with pytest.raises(ValueError):
        best_pgd_scalars(1, 3, 5, noise_std=-1.0)
    with pytest.raises(ValueError):
        wishart_eigenvalues(0, 3, 10)
    with pytest.raises(ValueError):
        pgd_class_loss(torch.ones(2), torch.ones(3), torch.ones(4, 3), 5)
