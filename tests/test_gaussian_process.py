import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

import iclab.tasks.gaussian_process as gp_module
from iclab.seeding import make_generator
from iclab.tasks.gaussian_process import (
    GaussianProcessConfig,
    GaussianProcessTask,
    KernelTerm,
    gp_covariance,
    kernel_function,
)
from iclab.theory.gaussian_process.functional_gd import (
    gp_expected_loss,
    gp_posterior_mean,
    kernel_ridge,
)


def _task(seeds=(0, 1), **kw):
    return GaussianProcessTask(GaussianProcessConfig(**kw), list(seeds), dtype=torch.float64)


def _stream_z(task, batch_size, purpose, index=0):
    """The standard-normal vectors z (E, B, n+1) that ``task.sample`` draws, in float64."""
    n, d = task.config.n, task.config.d
    zs = []
    for s in task.seeds:
        g = make_generator(task.device, s, purpose, index)
        kw = dict(generator=g, device=task.device, dtype=task.dtype)
        torch.randn(batch_size, n + 1, d, **kw)  # the inputs come first in the stream
        zs.append(torch.randn(batch_size, n + 1, **kw))
    return torch.stack(zs).to(torch.float64)


def _points(batch):
    return torch.cat([batch.x, batch.x_query.unsqueeze(-2)], dim=-2)


def _labels(batch):
    return torch.cat([batch.y, batch.y_query.unsqueeze(-1)], dim=-1)


def _whitened_covariance(batch):
    """Empirical covariance of Σ_y^{-1/2} [y; y_q] over all prompts (should be I)."""
    y_all = torch.cat([batch.y, batch.y_query.unsqueeze(-1)], dim=-1)
    N = y_all.shape[-1]
    cov_y = batch.kernel_matrix + batch.noise_std**2 * torch.eye(N, dtype=torch.float64)
    chol = torch.linalg.cholesky(cov_y)
    w = torch.linalg.solve_triangular(chol, y_all.unsqueeze(-1), upper=False).squeeze(-1)
    w = w.reshape(-1, N)
    return w.T @ w / w.shape[0], w.shape[0]


def test_shapes_determinism_and_ensemble_slices():
    task = _task(d=3, n=5, kernel="exp")
    b = task.sample(7, "train", 2)
    assert b.x.shape == (2, 7, 5, 3) and b.y.shape == (2, 7, 5)
    assert b.x_query.shape == (2, 7, 3) and b.y_query.shape == (2, 7)
    assert b.kernel_matrix.shape == (2, 7, 6, 6) and b.psd_violation.shape == (2, 7)
    assert b.tokens().shape == (2, 7, 6, 4)
    torch.testing.assert_close(b.x.norm(dim=-1), torch.ones(2, 7, 5, dtype=torch.float64))
    again = task.sample(7, "train", 2)
    torch.testing.assert_close(b.y, again.y, rtol=0, atol=0)
    single = _task(seeds=(1,), d=3, n=5, kernel="exp").sample(7, "train", 2)
    torch.testing.assert_close(b.y[1:], single.y, rtol=0, atol=0)
    assert not torch.equal(b.y, task.sample(7, "train", 3).y)


def test_kernel_matrix_is_the_kernel_plus_jitter_for_psd_kernels():
    cfg = dict(d=4, n=6, kernel=[{"name": "exp", "bandwidth": 2.0}, "linear"], jitter=1e-3)
    b = _task(**cfg).sample(5, "t")
    x_all = torch.cat([b.x, b.x_query.unsqueeze(-2)], dim=-2)
    g = x_all @ x_all.transpose(-1, -2)
    expected = torch.exp(g / 2.0) + g + 1e-3 * torch.eye(7, dtype=torch.float64)
    torch.testing.assert_close(b.kernel_matrix, expected, atol=1e-10, rtol=1e-10)
    assert (b.psd_violation < 1e-10).all()


def test_gaussian_inputs_have_unit_expected_norm():
    b = _task(d=6, n=4, inputs="gaussian", kernel="linear").sample(2000, "t")
    assert abs(b.x.pow(2).sum(-1).mean().item() - 1.0) < 0.02


def test_relu_kernel_is_not_psd_and_is_projected():
    # 8 equally spaced unit vectors in a plane: circulant relu(cos) matrix with eigenvalue 1 − √2
    th = torch.arange(8, dtype=torch.float64) * 2 * math.pi / 8
    u = torch.stack([th.cos(), th.sin()], dim=-1)
    K = kernel_function(u, u, "relu")
    lam = torch.linalg.eigvalsh(K)
    assert lam[0].item() == pytest.approx(1 - math.sqrt(2), abs=1e-12)
    cov, _, _, lam_min = gp_covariance(u, "relu", jitter=1e-4)
    w, V = np.linalg.eigh(K.numpy())
    K_plus = (V * np.clip(w, 0, None)) @ V.T + 1e-4 * np.eye(8)
    np.testing.assert_allclose(cov.numpy(), K_plus, atol=1e-12)
    assert lam_min.item() == pytest.approx(1 - math.sqrt(2), abs=1e-12)
    # random prompts in d = 2 mostly violate PSD; the batch reports it
    b = _task(d=2, n=8, kernel="relu").sample(50, "t")
    x_all = torch.cat([b.x, b.x_query.unsqueeze(-2)], dim=-2)
    raw_min = torch.linalg.eigvalsh(kernel_function(x_all, x_all, "relu"))[..., 0]
    torch.testing.assert_close(b.min_eigenvalue, raw_min, atol=1e-12, rtol=0)
    torch.testing.assert_close(b.psd_violation, (-raw_min).clamp_min(0), atol=1e-12, rtol=0)
    assert (b.psd_violation > 1e-3).float().mean() > 0.5
    assert torch.isfinite(b.y).all() and torch.isfinite(b.y_query).all()


@pytest.mark.parametrize(
    "kernel, d, noise", [("relu", 2, 0.0), ("exp", 5, 0.1), ("linear", 5, 0.0)]
)
def test_sampled_covariance_matches_kernel_matrix_by_monte_carlo(kernel, d, noise):
    """Whitening by the reported covariance (K⁺ + jitter·I + σ²I) gives N(0, I) labels."""
    b = _task(seeds=(0, 1), d=d, n=8, kernel=kernel, jitter=1e-3, noise_std=noise).sample(
        4000, "mc"
    )
    C, N = _whitened_covariance(b)
    # entries of the empirical covariance have sd ≈ 1/√N (diagonal √(2/N)); allow 5 sd
    assert (C - torch.eye(9, dtype=torch.float64)).abs().max().item() < 5 * math.sqrt(2 / N)
    if kernel == "relu":
        assert (b.psd_violation > 1e-3).float().mean() > 0.5


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"kernel": "rbf"}, "kernel"),
        ({"kernel": [{"name": "exp", "bandwidth": -1.0}]}, "bandwidth"),
        ({"kernel": [{"name": "exp", "weight": 0.0}]}, "weight"),
        ({"kernel": []}, "kernel"),
        ({"d": 0}, "d"),
        ({"n": 0}, "n"),
        ({"inputs": "cube"}, "inputs"),
        ({"jitter": -1.0}, "jitter"),
        ({"noise_std": -0.1}, "noise_std"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_bad_config_names_the_field(kw, field):
    with pytest.raises(ValidationError) as err:
        GaussianProcessConfig(**kw)
    assert field in str(err.value)


def test_config_accepts_a_single_name_and_round_trips():
    cfg = GaussianProcessConfig(kernel="relu")
    assert cfg.kernel == [KernelTerm(name="relu")]
    assert GaussianProcessConfig.model_validate(cfg.model_dump()) == cfg
    with pytest.raises(ValueError, match="batch_size"):
        GaussianProcessTask(cfg, [0]).sample(0, "t")


def test_posterior_mean_matches_naive_formula_and_kernel_ridge():
    sigma = 0.2
    b = _task(d=3, n=6, kernel="exp", jitter=0.0, noise_std=sigma).sample(4, "t")
    mean = gp_posterior_mean(b.x, b.y, b.x_query, "exp", noise_std=sigma, jitter=0.0)
    x, y, xq = b.x.numpy(), b.y.numpy(), b.x_query.numpy()
    for e in range(2):
        for i in range(4):
            K = np.exp(x[e, i] @ x[e, i].T)
            kq = np.exp(x[e, i] @ xq[e, i])
            ref = kq @ np.linalg.solve(K + sigma**2 * np.eye(6), y[e, i])
            assert mean[e, i].item() == pytest.approx(ref, abs=1e-10)
    kr = kernel_ridge(b.x, b.y, b.x_query, "exp", lam=sigma**2 / 6)
    torch.testing.assert_close(kr, mean, atol=1e-10, rtol=1e-10)
    with pytest.raises(ValueError, match="lam"):
        kernel_ridge(b.x, b.y, b.x_query, "exp", lam=-1.0)


@pytest.mark.parametrize("kernel, d, noise", [("exp", 5, 0.2), ("relu", 2, 0.1)])
def test_gp_expected_loss_matches_monte_carlo(kernel, d, noise):
    b = _task(seeds=(0, 1), d=d, n=8, kernel=kernel, noise_std=noise).sample(4000, "mc")
    mean = gp_posterior_mean(b.x, b.y, b.x_query, kernel, noise_std=noise)
    predicted = gp_expected_loss(b.x, b.x_query, kernel, noise_std=noise)
    z = ((mean - b.y_query) ** 2 - predicted).flatten()
    se = z.std().item() / math.sqrt(z.numel())
    assert abs(z.mean().item()) < 3 * se
    assert (predicted >= noise**2 - 1e-12).all()


@pytest.mark.parametrize(
    "kernel, jitter", [("exp", 1e-6), ([{"name": "exp", "bandwidth": 0.5}, "linear"], 1e-3)]
)
def test_cholesky_path_draws_f_as_cholesky_factor_times_z(kernel, jitter):
    """PSD-by-construction kernels: f = L z with L Lᵀ = Σ = K + jitter·I (the stream's z)."""
    task = _task(seeds=(3, 4), d=5, n=8, kernel=kernel, jitter=jitter)
    b = task.sample(500, "chol", 1)
    x_all = _points(b)
    K = kernel_function(x_all, x_all, kernel)
    sigma = (K + K.mT) / 2 + jitter * torch.eye(9, dtype=torch.float64)
    torch.testing.assert_close(b.kernel_matrix, sigma, atol=1e-12, rtol=0)
    L = torch.linalg.cholesky(sigma)
    torch.testing.assert_close(L @ L.mT, b.kernel_matrix, atol=1e-10, rtol=0)
    f = (L @ _stream_z(task, 500, "chol", 1).unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(_labels(b), f, atol=1e-10, rtol=0)
    assert "min_eigenvalue" not in b.__dict__  # not computed at sampling time


def test_cholesky_path_empirical_covariance_on_fixed_points():
    """Many z for one fixed set of points: the empirical covariance of f is Σ."""
    g = torch.Generator().manual_seed(0)
    pts = torch.nn.functional.normalize(torch.randn(6, 3, generator=g, dtype=torch.float64), dim=-1)
    N = 40000
    z = torch.randn(N, 6, generator=g, dtype=torch.float64)
    kernel = [{"name": "exp", "bandwidth": 0.7}, "linear"]
    f, cov = gp_module._draw_f(pts.expand(N, 6, 3), z, kernel, 1e-3)
    sigma = cov[0]
    torch.testing.assert_close(cov, sigma.expand(N, 6, 6), atol=0, rtol=0)
    emp = f.T @ f / N
    # sd of an entry of the empirical covariance: √((Σ_ij² + Σ_ii Σ_jj) / N); allow 5 sd
    sd = ((sigma**2 + sigma.diagonal()[:, None] * sigma.diagonal()[None, :]) / N).sqrt()
    assert ((emp - sigma).abs() / sd).max().item() < 5


def test_rank_deficient_linear_kernel_falls_back_to_eigh_exactly(monkeypatch):
    """linear, jitter 0, n+1 > d: K is singular; failed factorizations take the eigh path."""
    calls = []
    real = gp_module.gp_covariance

    def spy(x_all, kernel, jitter):
        calls.append(x_all.shape[:-2])
        return real(x_all, kernel, jitter)

    monkeypatch.setattr(gp_module, "gp_covariance", spy)
    task = _task(seeds=(0, 1), d=8, n=8, kernel="linear", jitter=0.0)
    b = task.sample(400, "fb")
    x_all = _points(b)
    K = kernel_function(x_all, x_all, "linear")
    K = (K + K.mT) / 2
    _, info = torch.linalg.cholesky_ex(K)
    failed = info > 0
    assert 0 < failed.sum().item() < failed.numel()  # both paths are exercised
    assert calls == [torch.Size([failed.sum().item()])]  # only the failed prompts, once
    z = _stream_z(task, 400, "fb")
    cov, lam, V, _ = real(x_all[failed], "linear", 0.0)
    f_eigh = (V @ (lam.sqrt() * z[failed]).unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(_labels(b)[failed], f_eigh, atol=1e-12, rtol=0)
    torch.testing.assert_close(b.kernel_matrix[failed], cov, atol=1e-12, rtol=0)
    # the samples lie in the span of the d features, y = X w (up to the ~√eps floor of the
    # clipped round-off eigenvalues; a jitter of 1e-6 would leave residuals ~1e-3) ...
    b5 = _task(seeds=(2,), d=5, n=8, kernel="linear", jitter=0.0).sample(400, "fb")
    for bb in (b, b5):
        x_all, y_all = _points(bb), _labels(bb)
        w = torch.linalg.lstsq(x_all, y_all.unsqueeze(-1)).solution
        assert ((x_all @ w).squeeze(-1) - y_all).abs().max().item() < 1e-6
    # ... so at d = 5 the query label is predicted from the 8 context pairs by least squares
    w = torch.linalg.lstsq(b5.x, b5.y.unsqueeze(-1)).solution.squeeze(-1)
    assert ((b5.x_query * w).sum(-1) - b5.y_query).abs().max().item() < 1e-5
    # ensemble member e equals a single-seed run, fallback included
    single = _task(seeds=(1,), d=8, n=8, kernel="linear", jitter=0.0).sample(400, "fb")
    torch.testing.assert_close(b.y[1:], single.y, rtol=0, atol=0)
    torch.testing.assert_close(b.kernel_matrix[1:], single.kernel_matrix, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lazy_min_eigenvalue_is_eigvalsh_of_the_raw_kernel(dtype):
    kernel = [{"name": "exp", "bandwidth": 2.0}, "linear"]
    task = GaussianProcessTask(GaussianProcessConfig(d=4, n=6, kernel=kernel), [0, 1], dtype=dtype)
    b = task.sample(300, "lazy")
    assert "min_eigenvalue" not in b.__dict__ and "psd_violation" not in b.__dict__
    x_all = _points(b).to(torch.float64)
    K = kernel_function(x_all, x_all, kernel)
    expected = torch.linalg.eigvalsh((K + K.mT) / 2)[..., 0]
    assert b.min_eigenvalue.shape == (2, 300) and b.min_eigenvalue.dtype == dtype
    assert b.psd_violation.shape == (2, 300) and b.psd_violation.dtype == dtype
    torch.testing.assert_close(b.min_eigenvalue, expected.to(dtype), atol=1e-12, rtol=0)
    torch.testing.assert_close(b.psd_violation, (-expected).clamp_min(0).to(dtype))
    assert b.min_eigenvalue is b.min_eigenvalue  # cached
    # the same values as the eigendecomposition the sampler used to run for every prompt
    *_, lam_min = gp_covariance(_points(b), kernel, 1e-6)
    tol = 1e-12 if dtype == torch.float64 else 1e-6  # eigh vs eigvalsh: round-off apart
    torch.testing.assert_close(b.min_eigenvalue, lam_min.to(dtype), atol=tol, rtol=0)
    assert b.to(torch.float64).min_eigenvalue.dtype == torch.float64


@pytest.mark.parametrize("kernel", ["relu", ["relu", {"name": "exp", "bandwidth": 2.0}]])
def test_relu_kernels_project_exactly_the_prompts_that_are_not_positive_definite(
    kernel, monkeypatch
):
    calls = []
    real = gp_module.gp_covariance
    monkeypatch.setattr(
        gp_module, "gp_covariance", lambda *a: calls.append(a[0].shape[:-2]) or real(*a)
    )
    task = _task(seeds=(0, 1), d=5, n=8, kernel=kernel, jitter=1e-4)
    b = task.sample(300, "relu", 2)
    x_all = _points(b)
    cov, _, _, lam_min = real(x_all, kernel, 1e-4)
    not_pd = torch.linalg.cholesky_ex(gp_module.raw_kernel64(x_all, kernel))[1] != 0
    assert 0 < int(not_pd.sum()) < not_pd.numel()  # d = 5: both paths occur
    assert calls == [torch.Size([int(not_pd.sum())])]  # eigh only for the non-PD prompts
    assert bool((lam_min[~not_pd] > 0).all())  # the Cholesky prompts have K⁺ = K
    # every prompt is a draw from Σ = K⁺ + jitter·I: same Σ as the all-eigh path to round-off
    torch.testing.assert_close(b.kernel_matrix, cov, atol=1e-12, rtol=0)
    z = _stream_z(task, 300, "relu", 2)
    # (eigenvectors of repeated eigenvalues are not unique: decompose the same subset)
    _, lam_s, V_s, _ = real(x_all[not_pd], kernel, 1e-4)
    f_eigh = (V_s @ (lam_s.sqrt() * z[not_pd]).unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(_labels(b)[not_pd], f_eigh, atol=1e-12, rtol=0)
    chol = torch.linalg.cholesky(cov[~not_pd])
    f_chol = (chol @ z[~not_pd].unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(_labels(b)[~not_pd], f_chol, atol=1e-12, rtol=0)
    assert "min_eigenvalue" not in b.__dict__  # lazy
    torch.testing.assert_close(b.min_eigenvalue, lam_min, atol=1e-12, rtol=0)
    torch.testing.assert_close(b.psd_violation, (-lam_min).clamp_min(0), atol=1e-12, rtol=0)
