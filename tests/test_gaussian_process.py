import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from iclab.tasks.gaussian_process import (
    GaussianProcessConfig,
    GaussianProcessTask,
    KernelTerm,
    gp_covariance,
    kernel_function,
)
from iclab.theory.functional_gd import gp_expected_loss, gp_posterior_mean, kernel_ridge


def _task(seeds=(0, 1), **kw):
    return GaussianProcessTask(GaussianProcessConfig(**kw), list(seeds), dtype=torch.float64)


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
