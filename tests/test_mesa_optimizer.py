"""Mesa-optimizer theory (Zheng et al. 2024): Ŵ_t against naive loops, one GD step
(autograd, Wirtinger) and a naive diagonal attention model; x_1 moments against Monte Carlo; the
closed-form c* against the Monte Carlo minimizer of the population loss; ratio and recovery."""

import itertools
import math

import pytest
import torch

from iclab.theory.linear_dynamics.mesa_optimizer import (
    X1Moments,
    harmonic_number,
    limit_ab,
    mesa_loss,
    mesa_optimizer_prediction,
    mesa_optimizer_weights,
    optimal_ab_from_sequences,
    optimal_ab_monte_carlo,
    predicted_mean_ratio,
    predicted_ratio,
    recovers_sequence,
    x1_moments,
    x1_moments_monte_carlo,
)

F64, C128 = torch.float64, torch.complex128


# ------------------------------------------------------------------ local data (no iclab task)
def gaussian(sigma):
    return lambda n, d, g: sigma * torch.randn(n, d, generator=g, dtype=F64)


def complex_gaussian(sigma):  # CN(0, σ²): |x|² ~ Exp(mean σ²)
    return lambda n, d, g: sigma * torch.randn(n, d, generator=g, dtype=C128)


def scaled_gaussian(scales):  # non-exchangeable coordinates
    s = torch.tensor(scales, dtype=F64)
    return lambda n, d, g: s * torch.randn(n, d, generator=g, dtype=F64)


def sparse(c):
    def sample(n, d, g):
        k = torch.randint(d, (n,), generator=g)
        sign = torch.randint(2, (n,), generator=g).to(F64) * 2 - 1
        x = torch.zeros(n, d, dtype=F64)
        x[torch.arange(n), k] = c * sign
        return x

    return sample


def ones(n, d, g):
    return torch.ones(n, d, dtype=F64)


def sequences(x1, T, g):
    """x_{t+1} = W x_t, W = diag(e^{iθ}), θ ~ U[0, 2π) per sequence (local, independent of
    iclab's samplers): (n, T, d) complex128."""
    n, d = x1.shape
    lam = torch.polar(
        torch.ones(n, d, dtype=F64), 2 * math.pi * torch.rand(n, d, generator=g, dtype=F64)
    )
    xs = [x1.to(C128)]
    for _ in range(T - 1):
        xs.append(lam * xs[-1])
    return torch.stack(xs, dim=-2)


def gen(seed):
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- mesa-optimizer
def naive_weights(x, c):
    """Ŵ_t by a double loop, 1-based t ↔ index t−1."""
    *batch, T, d = x.shape
    W = torch.zeros(*batch, T, d, d, dtype=C128)
    for t in range(2, T + 1):
        acc = torch.zeros(*batch, d, d, dtype=C128)
        for i in range(1, t):
            xi1, xi = x[..., i, :], x[..., i - 1, :]  # x_{i+1}, x_i
            acc = acc + xi1[..., :, None] * xi.conj()[..., None, :]
        W[..., t - 1, :, :] = c[..., None, None] * acc / (t - 1)
    return W


def test_prediction_and_weights_match_naive_loop():
    g = gen(0)
    x = torch.randn(2, 3, 7, 4, generator=g, dtype=C128)
    c = torch.randn(2, 3, generator=g, dtype=C128)
    W = naive_weights(x, c)
    y_naive = (W @ x[..., None])[..., 0]
    torch.testing.assert_close(mesa_optimizer_weights(x, c), W, rtol=0, atol=1e-12)
    torch.testing.assert_close(mesa_optimizer_prediction(x, c), y_naive, rtol=0, atol=1e-12)
    assert (mesa_optimizer_prediction(x, c)[..., 0, :] == 0).all()
    # scalar c, real input promoted, T = 1 and T = 2 edge cases
    xr = torch.randn(5, 3, generator=g, dtype=F64)
    y = mesa_optimizer_prediction(xr, 0.7)
    assert y.dtype == C128 and y.shape == (5, 3)
    torch.testing.assert_close(
        y, (mesa_optimizer_weights(xr, 0.7) @ xr.to(C128)[..., None])[..., 0]
    )
    assert (mesa_optimizer_prediction(xr[:1], 0.7) == 0).all()
    assert mesa_optimizer_weights(xr[:2]).shape == (2, 3, 3)


def test_weights_are_one_gd_step_autograd_and_analytic():
    """Ŵ_t = 0 − η ∇L_t(0), η = c/(t−1), ∇ = ∂/∂Re W + i ∂/∂Im W = 2 ∂L/∂W̄ (what torch's
    W.grad holds for complex W; checked against central finite differences), analytically
    ∇L_t(W) = −Σ_{i<t} (x_{i+1} − W x_i) x_iᴴ."""
    g = gen(1)
    T, d, c = 9, 3, 0.8
    x = torch.randn(T, d, generator=g, dtype=C128)
    What = mesa_optimizer_weights(x, c)

    def loss(W, t):  # ½ Σ_{i<t} ‖x_{i+1} − W x_i‖², 1-based t
        r = x[1:t] - x[: t - 1] @ W.T
        return 0.5 * (r.abs() ** 2).sum()

    for t in range(2, T + 1):
        W0 = torch.zeros(d, d, dtype=C128, requires_grad=True)
        loss(W0, t).backward()
        torch.testing.assert_close(-c / (t - 1) * W0.grad, What[t - 1], rtol=0, atol=1e-12)
        torch.testing.assert_close(W0.grad, -x[1:t].T @ x[: t - 1].conj(), rtol=0, atol=1e-12)
    # the convention, at a random W: autograd = analytic = finite differences on Re and Im
    t = T
    W = torch.randn(d, d, generator=g, dtype=C128, requires_grad=True)
    loss(W, t).backward()
    Wd = W.detach()
    analytic = -(x[1:t] - x[: t - 1] @ Wd.T).T @ x[: t - 1].conj()
    torch.testing.assert_close(W.grad, analytic, rtol=0, atol=1e-12)
    h = 1e-6
    for j, k in [(0, 0), (1, 2), (2, 0)]:
        E = torch.zeros(d, d, dtype=C128)
        E[j, k] = 1
        dre = (loss(Wd + h * E, t) - loss(Wd - h * E, t)) / (2 * h)
        dim = (loss(Wd + 1j * h * E, t) - loss(Wd - 1j * h * E, t)) / (2 * h)
        assert abs(complex(dre + 1j * dim) - complex(analytic[j, k])) < 1e-6


def naive_attention(x, WKQ, WPV):
    """ŷ_t = W^{PV} (E_t E_tᴴ) W^{KQ} e_t / (t−1), e_t = [x_t; x_{t−1}], x_0 = 0, E_t E_tᴴ
    formed explicitly for every t (ŷ_1 = 0)."""
    T, d = x.shape
    xprev = torch.cat([torch.zeros(1, d, dtype=C128), x[:-1]])
    e = torch.cat([x, xprev], dim=-1)  # (T, 2d)
    out = [torch.zeros(d, dtype=C128)]
    for t in range(2, T + 1):
        G = e[:t].T @ e[:t].conj()  # Σ_{i≤t} e_i e_iᴴ
        out.append(WPV @ G @ WKQ @ e[t - 1] / (t - 1))
    return torch.stack(out)


def test_diagonal_attention_model_equals_mesa_optimizer():
    g = gen(2)
    d, T = 4, 12
    for a, b in [(0.1, 0.1), (0.5, 1.5), (2.0 + 0.3j, -0.7j)]:
        WKQ = torch.zeros(2 * d, 2 * d, dtype=C128)
        WKQ[d:, :d] = a * torch.eye(d, dtype=C128)  # W^{KQ}_{21} = a I
        WPV = torch.zeros(d, 2 * d, dtype=C128)
        WPV[:, :d] = b * torch.eye(d, dtype=C128)  # W^{PV}_{11} = b I
        x = sequences(torch.randn(1, d, generator=g, dtype=F64), T, g)[0]
        y = naive_attention(x, WKQ, WPV)
        torch.testing.assert_close(mesa_optimizer_prediction(x, a * b), y, rtol=0, atol=1e-10)


# --------------------------------------------------------------------------------- moments
def assert_moments_close(mc, exact, k=4.0):
    for name in ("kappa2", "kappa4", "kappa6", "kappa24"):
        est, se, ref = getattr(mc, name), getattr(mc, name + "_se"), getattr(exact, name)
        assert abs(est - ref) <= k * se + 1e-12 * abs(ref), (name, est, se, ref)


@pytest.mark.parametrize(
    ("law", "kw", "sampler"),
    [
        ("gaussian", {"sigma": 0.5}, gaussian(0.5)),
        ("gaussian", {"sigma": 2.0}, gaussian(2.0)),
        ("sparse", {"c": 0.5}, sparse(0.5)),
        ("sparse", {"c": 2.0}, sparse(2.0)),
        ("ones", {}, ones),
    ],
)
def test_closed_form_moments_vs_monte_carlo(law, kw, sampler):
    exact = x1_moments(law, 5, **kw)
    mc = x1_moments_monte_carlo(sampler, 5, 200_000, gen(3), batch=70_000)
    assert mc.num_samples == 200_000 and exact.num_samples is None
    assert_moments_close(mc, exact)


def test_closed_form_values():
    g = x1_moments("gaussian", 5, sigma=2.0)
    assert (g.kappa2, g.kappa4, g.kappa6, g.kappa24) == (4.0, 48.0, 960.0, 192.0)
    s = x1_moments("sparse", 4, c=2.0)
    assert (s.kappa2, s.kappa4, s.kappa6, s.kappa24) == (1.0, 4.0, 16.0, 0.0)
    assert x1_moments("ones", 3) == X1Moments(1.0, 1.0, 1.0, 1.0)


def test_monte_carlo_moments_user_law():
    """Complex Gaussian CN(0, σ²) (|x|² exponential): κ2 = σ², κ4 = 2σ⁴, κ6 = 6σ⁶, κ24 = 2σ⁶;
    d = 1 leaves κ24 undefined (NaN)."""
    s2 = 1.5**2
    exact = X1Moments(s2, 2 * s2**2, 6 * s2**3, 2 * s2**3)
    assert_moments_close(x1_moments_monte_carlo(complex_gaussian(1.5), 3, 100_000, gen(4)), exact)
    m1 = x1_moments_monte_carlo(gaussian(1.0), 1, 1000, gen(4))
    assert math.isnan(m1.kappa24) and math.isfinite(m1.kappa6)


def test_bad_input_names_the_field():
    with pytest.raises(ValueError, match="law"):
        x1_moments("laplace", 5)
    for sigma in (None, 0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="sigma"):
            x1_moments("gaussian", 5, sigma=sigma)
    for c in (None, 0.0, -2.0):
        with pytest.raises(ValueError, match="c:"):
            x1_moments("sparse", 5, c=c)
    with pytest.raises(ValueError, match="sigma"):
        x1_moments("sparse", 5, sigma=1.0, c=1.0)
    with pytest.raises(ValueError, match="d:"):
        x1_moments("ones", 0)
    m = x1_moments("ones", 5)
    for T in (2, 0, 3.5, True):
        with pytest.raises(ValueError, match="T:"):
            limit_ab(T, 5, m)
    with pytest.raises(ValueError, match="T:"):
        optimal_ab_monte_carlo(ones, 2, 5, 10, gen(0))
    with pytest.raises(ValueError, match="T:"):
        mesa_loss(torch.ones(2, 2, 3))
    with pytest.raises(ValueError, match="x:"):
        mesa_optimizer_prediction(torch.ones(3))
    with pytest.raises(ValueError, match="c:"):
        mesa_optimizer_prediction(torch.ones(2, 4, 3), torch.ones(3))
    with pytest.raises(ValueError, match="sampler"):
        x1_moments_monte_carlo(lambda n, d, g: torch.ones(n, d + 1), 3, 10, gen(0))


# ------------------------------------------------------------------------------- the limit
def test_harmonic_number():
    assert harmonic_number(0) == 0 and harmonic_number(1) == 1 and harmonic_number(3) == 11 / 6
    n = 2_000_000
    assert (
        abs(
            harmonic_number(n)
            - (harmonic_number(10**6) + sum(1 / k for k in range(10**6 + 1, n + 1)))
        )
        < 1e-12
    )


def test_limit_ab_stated_limits():
    for sigma in (0.5, 1.0, 2.0):
        m = x1_moments("gaussian", 5, sigma=sigma)
        cs = [limit_ab(T, 5, m) for T in (3, 10, 100, 10_000, 10**8)]
        assert all(a < b for a, b in itertools.pairwise(cs))  # increasing to the limit
        assert limit_ab(math.inf, 5, m) == pytest.approx(1 / (5 * sigma**2), rel=1e-14)
        assert cs[-1] == pytest.approx(1 / (5 * sigma**2), rel=1e-5)
        # T = 100, d = 5: (98·3)/(98·15 + 4·3·H_98) σ⁻²
        assert cs[2] == pytest.approx(294 / (1470 + 12 * harmonic_number(98)) / sigma**2)
    for c in (0.5, 1.0, 2.0):
        m = x1_moments("sparse", 5, c=c)
        for T in (3, 10, 100):
            assert limit_ab(T, 5, m) == pytest.approx(1 / c**2, rel=1e-14)
    # d = 1: no cross term, c* = κ4/κ6 for every T
    assert limit_ab(7, 1, x1_moments("gaussian", 1, sigma=1.0)) == pytest.approx(0.2)


def _check_c_star(sampler, moments, T, d, n, seed, k=4.0):
    r = optimal_ab_monte_carlo(sampler, T, d, n, gen(seed))
    cs = limit_ab(T, d, moments)
    assert abs(r.c_opt - cs) <= k * r.c_opt_se + 1e-12 * cs, (T, cs, r)
    return r, cs


@pytest.mark.parametrize("c", [0.5, 1.0, 2.0])
def test_c_star_vs_monte_carlo_sparse(c):
    """Sparse x_1: N_s = (T−2)c⁴, D_s = (T−2)c⁶ for every sequence: c_opt = 1/c² with SE 0."""
    r, _ = _check_c_star(sparse(c), x1_moments("sparse", 5, c=c), 100, 5, 500, 5)
    assert r.c_opt == pytest.approx(1 / c**2, rel=1e-12) and r.c_opt_se < 1e-12


@pytest.mark.parametrize(("T", "n"), [(4, 100_000), (10, 50_000), (100, 10_000)])
def test_c_star_vs_monte_carlo_gaussian(T, n):
    _check_c_star(gaussian(1.0), x1_moments("gaussian", 5, sigma=1.0), T, 5, n, 6 + T)


@pytest.mark.parametrize("T", [4, 10])
def test_c_star_vs_monte_carlo_ones_discriminates_harmonic_term(T):
    """All-ones x_1: randomness only from the phases, SE small enough to reject an off-by-one
    harmonic term (H_{T−1}) or dropping it (the T → ∞ value)."""
    d = 5
    r, _ = _check_c_star(ones, x1_moments("ones", d), T, d, 40_000, 20 + T)
    wrong = [(T - 2) / ((T - 2) + (d - 1) * harmonic_number(T - 1)), 1.0]
    for w in wrong:
        assert abs(r.c_opt - w) > 10 * r.c_opt_se


def test_c_star_vs_monte_carlo_non_exchangeable_and_complex():
    """Coordinate-averaged moments make the formula exact for non-exchangeable laws too."""
    s = torch.tensor([0.5, 0.8, 1.0, 1.3, 1.6], dtype=F64)
    s2 = s**2
    k24 = 3 * ((s2.sum() * (s2**2).sum() - (s2**3).sum()) / 20)
    m = X1Moments(
        float(s2.mean()), float(3 * (s2**2).mean()), float(15 * (s2**3).mean()), float(k24)
    )
    _check_c_star(scaled_gaussian(s.tolist()), m, 8, 5, 60_000, 30)
    s2 = 0.7**2
    _check_c_star(
        complex_gaussian(0.7), X1Moments(s2, 2 * s2**2, 6 * s2**3, 2 * s2**3), 8, 4, 60_000, 31
    )


def test_loss_is_quadratic_with_minimizer_c_opt():
    g = gen(7)
    x = sequences(torch.randn(300, 4, generator=g, dtype=F64), 15, g)
    r = optimal_ab_from_sequences(x)
    L0 = float(0.5 * (x[:, 2:].abs() ** 2).sum(dim=(-1, -2)).mean())
    for c in (-0.5, 0.0, 0.1, r.c_opt, 1.3):
        quad = L0 - c * r.numerator + 0.5 * c**2 * r.denominator
        assert float(mesa_loss(x, c).mean()) == pytest.approx(quad, rel=1e-12)
    Lmin = float(mesa_loss(x, r.c_opt).mean())
    assert Lmin < float(mesa_loss(x, r.c_opt * 1.01).mean())
    assert Lmin < float(mesa_loss(x, r.c_opt * 0.99).mean())


# -------------------------------------------------------------------- capability, recovery
def test_predicted_ratio_per_sequence_and_mean():
    g = gen(8)
    d, T = 5, 3000
    m = x1_moments("gaussian", d, sigma=1.0)
    cs = limit_ab(100, d, m)
    x1 = torch.randn(4, d, generator=g, dtype=F64)
    x = sequences(x1, T, g)
    y = mesa_optimizer_prediction(x, cs)
    ratio = y[:, -2] / x[:, -1]  # final in-sequence step t = T−1 predicts x_T
    pred = predicted_ratio(cs, x1)
    assert pred.shape == (4, d) and pred.dtype == F64
    assert (ratio.real - pred).abs().max() < 0.05 * pred.abs().max() + 0.02  # cross term O(1/t)
    assert ratio.imag.abs().max() < 0.05
    # per-sequence ratio is exactly c·(u_j + cross/(t−1)); its mean over phases and x_1 is c·κ2
    x = sequences(torch.randn(40_000, d, generator=g, dtype=F64), 6, g)
    ratio = (mesa_optimizer_prediction(x, cs)[:, -2] / x[:, -1]).real.mean(-1)
    mean, se = float(ratio.mean()), float(ratio.std()) / math.sqrt(ratio.numel())
    assert abs(mean - predicted_mean_ratio(cs, m)) < 4 * se
    assert predicted_mean_ratio(limit_ab(math.inf, d, m), m) == pytest.approx(0.2)
    # tensor c per sequence
    cvec = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=F64)
    torch.testing.assert_close(predicted_ratio(cvec, x1), cvec[:, None] * x1**2)


def test_recovery_conditions():
    g = gen(9)
    d = 5
    for c in (0.5, 2.0):
        m = x1_moments("sparse", d, c=c)
        assert recovers_sequence(m) and recovers_sequence(m, asymptotic=True)
        x = sequences(sparse(c)(50, d, g), 30, g)
        y = mesa_optimizer_prediction(x, limit_ab(30, d, m))
        torch.testing.assert_close(y[:, 1:-1], x[:, 2:], rtol=0, atol=1e-12)  # exact, every t ≥ 2
    mg = x1_moments("gaussian", d, sigma=1.0)
    assert not recovers_sequence(mg) and not recovers_sequence(mg, asymptotic=True)
    mo = x1_moments("ones", d)
    assert recovers_sequence(mo, asymptotic=True) and not recovers_sequence(mo)
    x = sequences(ones(20, d, g), 30, g)
    y = mesa_optimizer_prediction(x, limit_ab(30, d, mo))
    assert (y[:, 1:-1] - x[:, 2:]).abs().max() > 0.1  # not exact at finite T
    mc = x1_moments_monte_carlo(complex_gaussian(1.0), d, 20_000, g)
    assert not recovers_sequence(mc, asymptotic=True, rtol=0.1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda():
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(3, 9, 4, generator=g, device="cuda", dtype=C128)
    y = mesa_optimizer_prediction(x, 0.5)
    assert y.device.type == "cuda"
    torch.testing.assert_close(y.cpu(), mesa_optimizer_prediction(x.cpu(), 0.5))
    s = lambda n, d, gg: torch.randn(n, d, generator=gg, device="cuda", dtype=F64)  # noqa: E731
    r = optimal_ab_monte_carlo(s, 10, 4, 20_000, g)
    assert abs(r.c_opt - limit_ab(10, 4, x1_moments("gaussian", 4, sigma=1.0))) < 4 * r.c_opt_se
