"""The sandwich covariance of fitted weights against the spread of fits over independent
samples (Monte Carlo), and the Gaussian draws built from it."""

import torch

from iclab.analysis.sampling_error import gaussian_draws, weight_covariance
from iclab.config import make_config
from iclab.training import build_model, build_task


def _one_layer(n_seeds=2):
    cfg = make_config(
        {
            "n_seeds": n_seeds,
            "task": {"d": 2, "n": 12, "covariance": "rotated", "weight_prior": "inverse_covariance",
                     "noise_std": 0.3},
            "model": {"layers": 1, "parametrization": "sparse_pgd"},
        }
    )  # fmt: skip
    dev, dt = torch.device("cpu"), torch.float64
    return build_task(cfg, dev, dt), build_model(cfg, dev, dt)


def _least_squares(task, N, k):
    """Each member's least-squares preconditioner (flattened A) on N prompts of stream k, and
    the prompts' per-member features (ŷ = feats · vec(A) for the sparse one-layer model)."""
    b = task.sample(N, "fit", k)
    v = (b.x.transpose(-1, -2) @ b.y.unsqueeze(-1)).squeeze(-1) / b.x.shape[-2]
    feats = (b.x_query.unsqueeze(-1) * v.unsqueeze(-2)).flatten(-2)
    return torch.linalg.lstsq(feats, b.y_query.unsqueeze(-1)).solution.squeeze(-1)


def test_sandwich_covariance_matches_the_spread_of_independent_fits():
    task, model = _one_layer()
    N, fits = 2000, 400
    sols = torch.stack([_least_squares(task, N, k) for k in range(fits)])  # (fits, E, P)
    mc = torch.einsum("fep,feq->epq", sols - sols.mean(0), sols - sols.mean(0)) / (fits - 1)
    # the sandwich at the population optimum (approximated by a fit on many prompts)
    model.set_pgd(_least_squares(task, 200_000, 10_000).reshape(2, 1, 1, 2, 2))
    probe = task.sample(200_000, "probe", 0)
    cov = weight_covariance(model, model.prepare(probe), probe.y_query, N)
    # total variance within 15% (400 fits: the Monte Carlo trace has ~5% relative error; the
    # sandwich is asymptotic, 10–15% high at N = 400, 3–8% at N = 2000)
    ratio = cov.diagonal(dim1=1, dim2=2).sum(-1) / mc.diagonal(dim1=1, dim2=2).sum(-1)
    assert ((ratio - 1).abs() < 0.15).all(), ratio
    # and the same shape: correlation of the entries of the two matrices
    for e in range(2):
        c = torch.corrcoef(torch.stack([cov[e].flatten(), mc[e].flatten()]))[0, 1]
        assert c > 0.9, c


def test_gaussian_draws_have_the_requested_covariance():
    torch.manual_seed(0)
    R = torch.randn(2, 4, 4, dtype=torch.float64)
    cov = R @ R.transpose(1, 2) / 4
    cov[:, 3, :] = 0  # a direction of zero variance (pseudo-inverse case)
    cov[:, :, 3] = 0
    z = gaussian_draws(cov, 40_000, seed=1)
    emp = torch.einsum("edp,edq->epq", z, z) / z.shape[1]
    torch.testing.assert_close(emp, cov, atol=0.05 * float(cov.abs().max()), rtol=0)
    assert float(z[..., 3].abs().max()) == 0.0
    torch.testing.assert_close(gaussian_draws(cov, 5, seed=1), gaussian_draws(cov, 5, seed=1))
