"""One LSA layer on Markov chains (Ding et al. 2025): features and φ against naive
loops and iclab's LSA, the d = 1 closed form and the exact quadrature against Monte Carlo, and
(non-)realizability: constructions to 1e-10, certificates that must be valid lower bounds."""

import math

import numpy as np
import pytest
import torch

from iclab.models.lsa import LinearSelfAttention, LSAConfig
from iclab.tasks.markov_chain import MarkovChainConfig, MarkovChainTask
from iclab.theory.markov_chain import (
    column_matrices,
    global_gap_bounds,
    gram_features,
    non_realizability_certificate,
    one_layer_features,
    one_layer_optimum_d1,
    one_layer_optimum_exact,
    optimum_monte_carlo,
    phi,
    realizable_d1,
    realize_d1,
    recover_parameters,
)
from iclab.theory.markov_chain.one_layer import _design
from iclab.theory.markov_chain.realizability import _column_factors, _profile

F64 = torch.float64


def _task(d, n, p=0.5, seeds=(0,)):
    cfg = MarkovChainConfig(d=d, n=n, states=2, initial_prob=p)
    return MarkovChainTask(cfg, list(seeds), dtype=F64)


def _triu_pairs(D):
    return [(i, k) for i in range(D) for k in range(i, D)]


def _naive_features(x, y, xq):
    """One prompt, loops only: x (n, d), y (n,), xq (d,) numpy -> (g (m,), f (d·m,))."""
    n, d = x.shape
    D = d + 1
    G = np.zeros((D, D))
    for i in range(n):
        z = [*list(x[i]), y[i]]
        for a in range(D):
            for c in range(D):
                G[a, c] += z[a] * z[c] / n
    g = np.array([G[i, k] for i, k in _triu_pairs(D)])
    f = np.array([xq[j] * g[r] for j in range(d) for r in range(len(g))])
    return g, f


def _naive_phi(b, A):
    D, d = A.shape
    out = []
    for j in range(d):
        for i, k in _triu_pairs(D):
            out.append(b[i] * A[i, j] if i == k else b[i] * A[k, j] + b[k] * A[i, j])
    return np.array(out)


# ------------------------------------------------------------------------ features and φ
@pytest.mark.parametrize("d", [1, 2, 3])
def test_features_match_a_naive_loop(d):
    batch = _task(d, n=7).sample(40, "feat")
    g = gram_features(batch.x, batch.y)
    f = one_layer_features(batch.x, batch.y, batch.x_query)
    m = (d + 1) * (d + 2) // 2
    assert g.shape == (1, 40, m) and f.shape == (1, 40, d * m) and f.dtype == F64
    for bi in range(40):
        gn, fn = _naive_features(
            batch.x[0, bi].numpy(), batch.y[0, bi].numpy(), batch.x_query[0, bi].numpy()
        )
        np.testing.assert_allclose(g[0, bi].numpy(), gn, atol=1e-14)
        np.testing.assert_allclose(f[0, bi].numpy(), fn, atol=1e-14)
    # float32 tasks give float64 features
    b32 = batch.to(torch.float32)
    assert gram_features(b32.x, b32.y).dtype == F64


@pytest.mark.parametrize("d", [1, 2, 4])
def test_phi_matches_direct_bilinear_form_naive_loop_and_lsa(d):
    gen = torch.Generator().manual_seed(d)
    D = d + 1
    b = torch.randn(D, generator=gen, dtype=F64)
    A = torch.randn(D, d, generator=gen, dtype=F64)
    X = phi(b, A)
    np.testing.assert_allclose(X.numpy(), _naive_phi(b.numpy(), A.numpy()), atol=1e-14)
    batch = _task(d, n=6).sample(64, "phi")
    f = one_layer_features(batch.x, batch.y, batch.x_query)
    z = torch.cat([batch.x, batch.y.unsqueeze(-1)], -1)
    G = z.transpose(-1, -2) @ z / z.shape[-2]
    direct = torch.einsum("i,ebik,kj,ebj->eb", b, G, A, batch.x_query)
    torch.testing.assert_close(f @ X, direct, atol=1e-12, rtol=0)
    # iclab's LSA, one layer, readout 'positive', parametrization 'full': P's last row is b and
    # Q's first d columns are A (the rest of P and Q random: they must not matter).
    model = LinearSelfAttention(
        d, LSAConfig(layers=1, heads=1, parametrization="full", readout="positive"), dtype=F64
    )
    P = torch.randn(D, D, generator=gen, dtype=F64)
    Q = torch.randn(D, D, generator=gen, dtype=F64)
    P[d, :] = b
    Q[:, :d] = A
    model.set_matrices(P.reshape(1, 1, 1, D, D), Q.reshape(1, 1, 1, D, D))
    with torch.no_grad():
        pred = model(batch.x, batch.y, batch.x_query)
        pred_tokens = model.predict_tokens(batch.tokens())
    torch.testing.assert_close(pred, direct, atol=1e-12, rtol=0)
    torch.testing.assert_close(pred_tokens, direct, atol=1e-12, rtol=0)
    # batched φ
    bb = torch.randn(5, D, generator=gen, dtype=F64)
    AA = torch.randn(5, D, d, generator=gen, dtype=F64)
    torch.testing.assert_close(phi(bb, AA)[3], phi(bb[3], AA[3]))


def test_column_matrices_and_bilinear_design():
    gen = torch.Generator().manual_seed(7)
    d, D = 3, 4
    b = torch.randn(D, generator=gen, dtype=F64)
    A = torch.randn(D, d, generator=gen, dtype=F64)
    X = phi(b, A)
    S = column_matrices(X, d)
    m = D * (D + 1) // 2
    for j in range(d):
        a = A[:, j]
        torch.testing.assert_close(S[j], (torch.outer(b, a) + torch.outer(a, b)) / 2)
        blk = X[j * m : (j + 1) * m]
        torch.testing.assert_close(_design(b) @ a, blk, atol=1e-14, rtol=0)
        torch.testing.assert_close(_design(a) @ b, blk, atol=1e-14, rtol=0)


# ------------------------------------------------------------------------ d = 1 closed form
@pytest.mark.parametrize("p, n, prompts", [(0.5, 10, 200_000), (0.3, 3, 100_000)])
def test_d1_moments_h_and_y2_against_monte_carlo(p, n, prompts):
    """Each *derived* moment E[g gᵀ], H = p·E[g gᵀ], h and E[y_q²] = 1/2 within 4 SE of MC."""
    cf = one_layer_optimum_d1(p, n)
    batch = _task(1, n, p).sample(prompts, "moments")
    g = gram_features(batch.x, batch.y)[0]  # (N, 3)
    f = one_layer_features(batch.x, batch.y, batch.x_query)[0]
    yq = batch.y_query[0]

    def check(samples, expected):
        mean = samples.mean(0)
        se = samples.std(0) / math.sqrt(samples.shape[0])
        z = (mean - expected) / se
        assert z.abs().max().item() < 4, (mean, expected, z)

    check((g[:, :, None] * g[:, None, :]).flatten(1), cf.gram_moment.flatten())
    check((f[:, :, None] * f[:, None, :]).flatten(1), cf.H.flatten())
    check(yq[:, None] * f, cf.h)
    check((yq * yq)[:, None], torch.tensor([cf.y2_mean], dtype=F64))
    assert cf.y2_mean == 0.5
    # the closed form is also what exact enumeration + Gauss–Legendre quadrature gives
    ex = one_layer_optimum_exact(p, n, 1)
    torch.testing.assert_close(ex.H, cf.H, atol=1e-14, rtol=0)
    torch.testing.assert_close(ex.h, cf.h, atol=1e-14, rtol=0)
    assert abs(ex.y2_mean - 0.5) < 1e-14 and abs(ex.loss_star - cf.loss_star) < 1e-12


def test_d1_moments_are_sensitive():
    """The MC check can fail: a plausible slip (p ↔ 1 − p in E[G_xy²]) is rejected."""
    p, n = 0.3, 3
    batch = _task(1, n, p).sample(100_000, "moments")
    g = gram_features(batch.x, batch.y)[0]
    s = g[:, 1] ** 2
    wrong = (1 - p) ** 2 / 3 + (1 - p) * (3 - 2 * (1 - p)) / (6 * n)
    right = p * p / 3 + p * (3 - 2 * p) / (6 * n)
    se = s.std().item() / math.sqrt(s.numel())
    assert abs(s.mean().item() - right) < 4 * se
    assert abs(s.mean().item() - wrong) > 20 * se


@pytest.mark.parametrize("d", [1, 2])
def test_monte_carlo_accumulation_matches_a_naive_loop(d):
    task = _task(d, n=4)
    mc = optimum_monte_carlo(task, 400, batch=150, fresh_prompts=50)
    assert mc.num_prompts == 400 and mc.fresh_prompts == 50
    dm = d * (d + 1) * (d + 2) // 2
    H = np.zeros((dm, dm))
    h = np.zeros(dm)
    y2 = 0.0
    for index, size in enumerate([150, 150, 100]):  # the chunks of (seed, purpose, index)
        b = task.sample(size, "one_layer_fit", index)
        for i in range(size):
            _, fn = _naive_features(b.x[0, i].numpy(), b.y[0, i].numpy(), b.x_query[0, i].numpy())
            yv = float(b.y_query[0, i])
            H += np.outer(fn, fn) / 400
            h += yv * fn / 400
            y2 += yv * yv / 400
    np.testing.assert_allclose(mc.H.numpy(), H, atol=1e-13)
    np.testing.assert_allclose(mc.h.numpy(), h, atol=1e-13)
    X = np.linalg.solve(H, h)
    np.testing.assert_allclose(mc.X_star.numpy(), X, atol=1e-9)
    assert abs(mc.loss_in_sample - (y2 - h @ X)) < 1e-10


def test_acceptance_d1_closed_form_equals_monte_carlo_least_squares():
    """Acceptance: closed-form X* (p = 0.5, n = 10) within 3 SE of MC least squares (200k)."""
    cf = one_layer_optimum_d1(0.5, 10)
    mc = optimum_monte_carlo(_task(1, 10), 200_000)
    assert mc.solver == "cholesky"
    z = (mc.X_star - cf.X_star) / mc.X_star_se
    assert z.abs().max().item() < 3, z
    assert abs(mc.loss_star - cf.loss_star) < 3 * mc.loss_star_se
    assert abs(mc.y2_mean - 0.5) < 3 * 0.5 / math.sqrt(mc.num_prompts)
    torch.testing.assert_close(mc.H, cf.H, atol=2e-3, rtol=0)


def test_sandwich_standard_errors_match_the_spread_of_independent_fits():
    task = _task(1, 10)
    runs = [
        optimum_monte_carlo(task, 10_000, purpose=f"fit{k}", fresh_prompts=10) for k in range(12)
    ]
    X = torch.stack([r.X_star for r in runs])
    se = torch.stack([r.X_star_se for r in runs]).mean(0)
    ratio = X.std(0) / se
    assert bool(((ratio > 0.5) & (ratio < 1.6)).all()), ratio


def test_monte_carlo_excess_estimates_the_out_of_sample_bias():
    # f̃(X̂) − f̃(X*) = (X̂ − X*)ᵀH(X̂ − X*) exactly (exact H at d = 2): the sandwich estimate
    # tr(H·Cov X̂) matches its average over independent small fits, and the corrected loss
    # removes the bias of the out-of-sample loss
    ex = one_layer_optimum_exact(0.5, 10, 2)
    task = _task(2, 10)
    fits = [
        optimum_monte_carlo(task, 400, purpose=f"small{k}", fresh_prompts=20_000) for k in range(16)
    ]
    true_excess = torch.tensor(
        [float((f.X_star - ex.X_star) @ ex.H @ (f.X_star - ex.X_star)) for f in fits]
    )
    estimate = torch.tensor([f.excess for f in fits])
    assert 0.6 < float(estimate.mean() / true_excess.mean()) < 1.6
    raw = torch.tensor([f.loss_star for f in fits]).mean() - ex.loss_star
    corrected = torch.tensor([f.loss_star_corrected for f in fits]).mean() - ex.loss_star
    se = float(torch.tensor([f.loss_star_se for f in fits]).pow(2).mean().sqrt()) / 4
    assert raw > 3 * se and abs(corrected) < max(3 * se, 0.5 * raw)


def test_exact_d2_optimum_agrees_with_monte_carlo():
    ex = one_layer_optimum_exact(0.5, 10, 2)
    mc = optimum_monte_carlo(_task(2, 10), 200_000)
    dx = mc.X_star - ex.X_star
    assert ((dx / mc.X_star_se).abs().max().item()) < 4
    assert float(dx @ torch.linalg.solve(mc.X_star_cov, dx)) < 32.9  # χ²_12 0.999 quantile
    assert abs(mc.loss_star - ex.loss_star) < 3 * mc.loss_star_se
    with pytest.raises(ValueError, match="nodes"):
        one_layer_optimum_exact(0.5, 10, 2, nodes=3)


# ------------------------------------------------------------------------ realizability
def test_realizable_d1_and_exact_realization():
    gen = torch.Generator().manual_seed(3)
    X = torch.randn(500, 3, generator=gen, dtype=F64)
    ok = realizable_d1(X)
    det = X[:, 0] * X[:, 2] - X[:, 1] ** 2 / 4
    assert torch.equal(ok, det <= 0) and 0 < int(ok.sum()) < 500
    b, A = realize_d1(X[ok])
    torch.testing.assert_close(phi(b, A), X[ok], atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="not realizable"):
        realize_d1(X[~ok][0])
    # φ of random (b, a) is always realizable and realized back
    b0 = torch.randn(200, 2, generator=gen, dtype=F64)
    A0 = torch.randn(200, 2, 1, generator=gen, dtype=F64)
    X0 = phi(b0, A0)
    assert bool(realizable_d1(X0, tol=1e-12).all())
    torch.testing.assert_close(phi(*realize_d1(X0)), X0, atol=1e-12, rtol=0)


def test_d1_optimum_realizable_for_large_n_only():
    """X*(p, n) is realizable at n = 10 (p = 0.5) but *not* for small n: the convex optimum is
    out of reach of one LSA layer already at d = 1 (e.g. n = 3), confirmed by Monte Carlo."""
    cf = one_layer_optimum_d1(0.5, 10)
    assert bool(realizable_d1(cf.X_star))
    rec = recover_parameters(cf.X_star, 1, H=cf.H)
    assert rec.residual < 1e-10 and rec.loss_gap < 1e-18
    b, A = realize_d1(cf.X_star)
    torch.testing.assert_close(phi(b, A), cf.X_star, atol=1e-12, rtol=0)
    small = one_layer_optimum_d1(0.5, 3)
    assert not bool(realizable_d1(small.X_star))
    mc = optimum_monte_carlo(_task(1, 3), 50_000, fresh_prompts=1000)
    assert ((mc.X_star - small.X_star) / mc.X_star_se).abs().max().item() < 4
    cert_mc = non_realizability_certificate(mc.X_star, 1)
    # the MC estimate is non-realizable by a margin far beyond its sampling error
    assert cert_mc.fires and cert_mc.residual_bound > 10 * mc.X_star_se.norm().item()
    cert = non_realizability_certificate(small.X_star, 1, small.H)
    rec = recover_parameters(small.X_star, 1, H=small.H, minimize="loss")
    assert cert.fires and 0 < cert.residual_bound <= rec.residual
    assert 0 < cert.loss_gap_bound <= rec.loss_gap


def test_recover_parameters_exact_for_random_realizable_targets():
    gen = torch.Generator().manual_seed(11)
    for d in (2, 3):
        b = torch.randn(d + 1, generator=gen, dtype=F64)
        A = torch.randn(d + 1, d, generator=gen, dtype=F64)
        X = phi(b, A)
        rec = recover_parameters(X, d, restarts=4, iterations=50)
        assert rec.residual < 1e-10
        torch.testing.assert_close(phi(rec.b, rec.A), X, atol=1e-10, rtol=0)
        cert = non_realizability_certificate(X, d)
        assert not cert.fires and cert.residual_bound < 1e-12
        bounds = global_gap_bounds(X, d, rel_tol=0.5, max_cells=20_000)
        assert bounds.lower <= bounds.upper < 1e-6


def test_column_distance_is_exact_and_weyl_bound_below_it():
    """column_distance is attained by the spectral factorization, never beaten by random
    (b, a), and ≥ the Weyl (spectral-norm) bound."""
    gen = torch.Generator().manual_seed(5)
    d = 2
    X = torch.randn(d * 6, generator=gen, dtype=F64)
    cert = non_realizability_certificate(X, d)
    S = column_matrices(X, d)
    bj, aj, _ = _column_factors(S)
    T = (bj[:, :, None] * aj[:, None, :] + aj[:, :, None] * bj[:, None, :]) / 2
    attained = torch.linalg.matrix_norm(S - T)  # Frobenius
    torch.testing.assert_close(attained, cert.column_distance, atol=1e-12, rtol=0)
    b = torch.randn(20_000, 3, generator=gen, dtype=F64)
    a = torch.randn(20_000, 3, generator=gen, dtype=F64)
    T = (b[:, :, None] * a[:, None, :] + a[:, :, None] * b[:, None, :]) / 2
    for j in range(d):
        dist = torch.linalg.matrix_norm(S[j] - T)
        assert dist.min().item() >= cert.column_distance[j].item() - 1e-12
    assert bool((cert.spectral_gap <= cert.column_distance + 1e-15).all())


def test_d2_markov_optimum_is_certified_non_realizable():
    """p = 0.5, n = 10, d = 2 (exact X* by quadrature): every column matrix has two eigenvalues
    of one sign; the certified bounds are valid (≤ what ALS attains) and positive, and the
    branch-and-bound bracket pins the best one-layer LSA loss gap."""
    ex = one_layer_optimum_exact(0.5, 10, 2)
    cert = non_realizability_certificate(ex.X_star, 2, ex.H)
    assert cert.fires
    assert bool((cert.eigenvalues[:, 1:] > 0.05).all(-1).any())  # two positive eigenvalues
    rec = recover_parameters(ex.X_star, 2, H=ex.H)
    rec_loss = recover_parameters(ex.X_star, 2, H=ex.H, minimize="loss")
    assert 0.3 < cert.residual_bound <= rec.residual
    assert 0 < cert.loss_gap_bound <= rec_loss.loss_gap <= rec.loss_gap
    assert cert.loss_gap_bound >= cert.loss_gap_bound_uniform
    res = global_gap_bounds(ex.X_star, 2, metric="residual", rel_tol=0.02)
    assert res.converged and res.lower >= cert.residual_bound**2
    assert res.lower <= rec.residual**2 <= res.upper * (1 + 1e-9)
    gap = global_gap_bounds(ex.X_star, 2, ex.H, metric="loss", rel_tol=0.1)
    assert gap.converged and gap.lower > 10 * cert.loss_gap_bound
    assert gap.lower <= rec_loss.loss_gap <= gap.upper * (1 + 1e-9)
    # brute force over random b: the profile never dips below the certified lower bounds
    gen = torch.Generator().manual_seed(2)
    bs = torch.randn(20_000, 3, generator=gen, dtype=F64)
    eye = torch.eye(12, dtype=F64)
    _, prof, _ = _profile(bs, eye, ex.X_star, 2)
    assert prof.min().item() >= res.lower
    R = torch.linalg.cholesky(ex.H).T
    _, prof, _ = _profile(bs, R, R @ ex.X_star, 2)
    assert prof.min().item() >= gap.lower


def test_one_layer_lsa_loss_is_optimum_plus_gap():
    """End to end: iclab's LSA with the recovered (b, A) has Monte Carlo loss
    f̃(X*) + (φ − X*)ᵀH(φ − X*) (exact quadratic identity), strictly above f̃(X*)."""
    ex = one_layer_optimum_exact(0.5, 10, 2)
    rec = recover_parameters(ex.X_star, 2, H=ex.H, minimize="loss")
    d, D = 2, 3
    P = torch.zeros(D, D, dtype=F64)
    Q = torch.zeros(D, D, dtype=F64)
    P[d, :] = rec.b
    Q[:, :d] = rec.A
    model = LinearSelfAttention(
        d, LSAConfig(layers=1, heads=1, parametrization="full", readout="positive"), dtype=F64
    )
    model.set_matrices(P.reshape(1, 1, 1, D, D), Q.reshape(1, 1, 1, D, D))
    batch = _task(2, 10).sample(100_000, "lsa_loss")
    with torch.no_grad():
        err = (model(batch.x, batch.y, batch.x_query) - batch.y_query)[0] ** 2
    mean, se = err.mean().item(), err.std().item() / math.sqrt(err.numel())
    assert abs(mean - (ex.loss_star + rec.loss_gap)) < 4 * se
    # paired with the convex predictor ⟨x_q ⊗ g, X*⟩ on the same prompts, the gap is resolved
    f = one_layer_features(batch.x, batch.y, batch.x_query)[0]
    diff = err - (f @ ex.X_star - batch.y_query[0]) ** 2
    dmean, dse = diff.mean().item(), diff.std().item() / math.sqrt(diff.numel())
    assert abs(dmean - rec.loss_gap) < 4 * dse
    assert rec.loss_gap > 10 * dse


def test_input_validation():
    with pytest.raises(ValueError, match="d·m"):
        phi_X = torch.zeros(7, dtype=F64)
        non_realizability_certificate(phi_X, 1)
    with pytest.raises(ValueError, match="p"):
        one_layer_optimum_d1(1.0, 3)
    with pytest.raises(ValueError, match="H"):
        recover_parameters(torch.zeros(3, dtype=F64), 1, minimize="loss")
    with pytest.raises(ValueError, match="fresh_purpose"):
        optimum_monte_carlo(_task(1, 3), 10, purpose="a", fresh_purpose="a")
