"""Constructed LSA weights equal preconditioned GD / GD++ exactly (float64, naive loops)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from iclab.models import LinearSelfAttention, LSAConfig
from iclab.tasks import LinearRegressionConfig, LinearRegressionTask
from iclab.theory import gd_plus_plus_weights, preconditioned_gd_weights

F64 = torch.float64
TOL = 1e-10


def _batch(d: int, n: int, size: int = 5, seeds=(0,)):
    cfg = LinearRegressionConfig(d=d, n=n, covariance="rotated", noise_std=0.1)
    return LinearRegressionTask(cfg, seeds=list(seeds), dtype=F64).sample(size, "constructions")


def _random(shape, seed: int, scale: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=F64) * scale


def _preconditioners(L: int, d: int, seed: int) -> torch.Tensor:
    """Random non-symmetric A_ℓ around a moderate step size (keeps iterates O(1))."""
    return 0.3 * torch.eye(d, dtype=F64) + _random((L, d, d), seed, 0.25 / d**0.5)


def _pgd_naive(x, y, xq, As):
    """One prompt: w_ℓ = w_{ℓ−1} − A_ℓ ∇R(w_{ℓ−1}), R(w) = (1/2n)‖Xw − y‖², w_0 = 0.

    Returns the prediction x_qᵀ w_L, the residual vectors y − X w_ℓ and the iterates w_ℓ for
    ℓ = 0..L."""
    n, d = x.shape
    w = np.zeros(d)
    residuals, iterates = [y.copy()], [w.copy()]
    for A in As:
        grad = np.zeros(d)
        for i in range(n):
            grad += x[i] * (x[i] @ w - y[i])
        w = w - A @ (grad / n)
        residuals.append(np.array([y[i] - x[i] @ w for i in range(n)]))
        iterates.append(w.copy())
    return float(xq @ w), residuals, iterates


def _gdpp_naive(x, y, xq, As, Bs):
    """One prompt of GD++ exactly as documented in gd_plus_plus_weights."""
    n, d = x.shape
    X, r, q, y_hat = x.copy(), y.copy(), xq.copy(), 0.0
    states = [(X.copy(), r.copy())]
    for A, B in zip(As, Bs):
        S = X.T @ X / n
        step = A @ (X.T @ r) / n
        r = r - X @ step
        y_hat += q @ step
        T = np.eye(d) - B @ S @ A.T
        X = X @ T.T
        q = T @ q
        states.append((X.copy(), r.copy()))
    return y_hat, states


def _model(d, L, parametrization, readout, E=1):
    cfg = LSAConfig(layers=L, parametrization=parametrization, readout=readout)
    return LinearSelfAttention(d, cfg, seeds=list(range(E)), dtype=F64)


def _predictions(model, batch):
    with torch.no_grad():
        return model(batch.x, batch.y, batch.x_query), model.predict_tokens(batch.tokens())


GRID = list(itertools.product([1, 2, 3, 4], [1, 3, 5], [1, 4, 20]))


@pytest.mark.parametrize("L, d, n", GRID)
def test_preconditioned_gd_construction(L, d, n):
    batch = _batch(d, n)
    As = _preconditioners(L, d, seed=100 * L + 10 * d + n)
    x, y, xq = batch.x[0].numpy(), batch.y[0].numpy(), batch.x_query[0].numpy()
    expected = torch.tensor(
        [_pgd_naive(x[b], y[b], xq[b], As.numpy())[0] for b in range(len(x))], dtype=F64
    )
    readouts = ["negative", "positive"] if L == 1 else ["negative"]
    for readout in readouts:
        P, Q = preconditioned_gd_weights(As, readout=readout)
        assert P.shape == Q.shape == (1, L, 1, d + 1, d + 1) and P.dtype == F64
        full = _model(d, L, "full", readout)
        full.set_matrices(P, Q)
        sparse = _model(d, L, "sparse_pgd", readout)
        sparse.set_pgd(As[None, :, None])
        for model in (full, sparse):
            for pred in _predictions(model, batch):
                assert torch.allclose(pred[0], expected, atol=TOL, rtol=0), (readout, model)
            assert torch.allclose(model.preconditioners()[0, :, 0], As, atol=1e-14)
    assert expected.abs().max() < 30  # the check is on O(1)-scale numbers


@pytest.mark.parametrize("L, d, n", GRID)
def test_gd_plus_plus_construction(L, d, n):
    batch = _batch(d, n)
    seed = 100 * L + 10 * d + n
    As = _preconditioners(L, d, seed)
    Bs = _random((L, d, d), seed + 1, 0.5 / (d * (1 + d / n)))
    x, y, xq = batch.x[0].numpy(), batch.y[0].numpy(), batch.x_query[0].numpy()
    An, Bn = As.numpy(), Bs.numpy()
    expected = torch.tensor(
        [_gdpp_naive(x[b], y[b], xq[b], An, Bn)[0] for b in range(len(x))], dtype=F64
    )
    readouts = ["negative", "positive"] if L == 1 else ["negative"]
    for readout in readouts:
        P, Q = gd_plus_plus_weights(As, Bs, readout=readout)
        full = _model(d, L, "full", readout)
        full.set_matrices(P, Q)
        models = [full]
        if readout == "negative":
            pgd = _model(d, L, "pgd", readout)
            pgd.set_pgd(As[None, :, None], Bs[None, :, None])
            models.append(pgd)
        for model in models:
            for pred in _predictions(model, batch):
                assert torch.allclose(pred[0], expected, atol=TOL, rtol=0), (readout, model)
        assert torch.allclose(
            full.covariate_transforms()[0, :, 0], Bs * (1 if readout == "negative" else -1)
        )
    assert expected.abs().max() < 30


@pytest.mark.parametrize("L, d, n", [(3, 3, 4), (4, 5, 20), (2, 1, 1)])
def test_token_slots_hold_residuals(L, d, n):
    batch = _batch(d, n)
    As = _preconditioners(L, d, seed=7)
    P, Q = preconditioned_gd_weights(As)
    full, sparse = _model(d, L, "full", "negative"), _model(d, L, "sparse_pgd", "negative")
    full.set_matrices(P, Q)
    sparse.set_pgd(As[None, :, None])
    x, y, xq = batch.x[0].numpy(), batch.y[0].numpy(), batch.x_query[0].numpy()
    for model in (full, sparse):
        with torch.no_grad():
            Zs = model.forward_tokens(batch.tokens())
        assert len(Zs) == L + 1
        for b in range(x.shape[0]):
            _, residuals, iterates = _pgd_naive(x[b], y[b], xq[b], As.numpy())
            for layer, Z in enumerate(Zs):
                Zb = Z[0, b].numpy()
                np.testing.assert_allclose(Zb[:n, d], residuals[layer], atol=TOL, rtol=0)
                # covariates (context and query) never change
                np.testing.assert_array_equal(Zb[:, :d], Zs[0][0, b, :, :d].numpy())
                # the query slot holds −x_qᵀ w_ℓ
                np.testing.assert_allclose(Zb[n, d], -(xq[b] @ iterates[layer]), atol=TOL, rtol=0)


def test_gd_plus_plus_token_slots_follow_the_documented_algorithm():
    d, n, L = 3, 6, 3
    batch = _batch(d, n)
    As = _preconditioners(L, d, seed=3)
    Bs = _random((L, d, d), 4, 0.3)
    P, Q = gd_plus_plus_weights(As, Bs)
    model = _model(d, L, "full", "negative")
    model.set_matrices(P, Q)
    with torch.no_grad():
        Zs = model.forward_tokens(batch.tokens())
    x, y, xq = batch.x[0].numpy(), batch.y[0].numpy(), batch.x_query[0].numpy()
    for b in range(x.shape[0]):
        _, states = _gdpp_naive(x[b], y[b], xq[b], As.numpy(), Bs.numpy())
        for Z, (X, r) in zip(Zs, states):
            np.testing.assert_allclose(Z[0, b, :n, :d].numpy(), X, atol=TOL, rtol=0)
            np.testing.assert_allclose(Z[0, b, :n, d].numpy(), r, atol=TOL, rtol=0)


def test_ensemble_of_preconditioners():
    d, n, L, E = 3, 5, 2, 2
    batch = _batch(d, n, seeds=(0, 1))
    As = torch.stack([_preconditioners(L, d, seed=s) for s in (1, 2)])  # (E, L, d, d)
    P, Q = preconditioned_gd_weights(As)
    assert P.shape == (E, L, 1, d + 1, d + 1)
    model = _model(d, L, "full", "negative", E=E)
    model.set_matrices(P, Q)
    with torch.no_grad():
        pred = model(batch.x, batch.y, batch.x_query)
    for e in range(E):
        x, y, xq = batch.x[e].numpy(), batch.y[e].numpy(), batch.x_query[e].numpy()
        for b in range(x.shape[0]):
            expected = _pgd_naive(x[b], y[b], xq[b], As[e].numpy())[0]
            assert abs(float(pred[e, b]) - expected) < TOL


def test_positive_readout_beyond_one_layer_is_rejected():
    As = _preconditioners(2, 3, seed=0)
    with pytest.raises(ValueError, match="positive"):
        preconditioned_gd_weights(As, readout="positive")
    with pytest.raises(ValueError, match="positive"):
        gd_plus_plus_weights(As, As, readout="positive")
    with pytest.raises(ValueError):
        preconditioned_gd_weights(As, readout="sideways")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        preconditioned_gd_weights(torch.ones(3, 2))
