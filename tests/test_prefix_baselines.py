"""Tests of iclab.algorithms.prefix_baselines: Garg et al.'s baselines at every prefix.

Each batched baseline is compared, prompt by prompt and prefix by prefix, with the reference it
documents: numpy / scikit-learn (least squares, k-NN, Lasso, trees, boosting), a naive loop
(averaging) or a per-prompt torch loop from the same initialization (the two-layer network).
Covariates are Gaussian, so distance ties (k-NN) and non-unique Lasso solutions have probability
zero; the k-NN tie rule has its own test.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import Lasso, LinearRegression
from sklearn.neighbors import KNeighborsRegressor
from sklearn.tree import DecisionTreeRegressor

from iclab.algorithms.prefix_baselines import (
    DEFAULT_ALPHAS,
    prefix_averaging,
    prefix_decision_tree,
    prefix_gradient_boosting,
    prefix_knn,
    prefix_lasso,
    prefix_lasso_path,
    prefix_least_squares,
    prefix_two_layer_net,
    two_layer_net_init,
)

F64 = torch.float64
SHAPES = [(2, 3, 12, 5), (1, 2, 7, 10)]  # (E, B, N, d): N > d and N < d


def sequences(E, B, N, d, seed=0, dtype=F64, noise=0.1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(E, B, N, d, generator=g, dtype=F64)
    w = torch.randn(E, B, d, generator=g, dtype=F64)
    y = (x * w.unsqueeze(-2)).sum(-1) + noise * torch.randn(E, B, N, generator=g, dtype=F64)
    return x.to(dtype), y.to(dtype)


def each_prefix(x, y):
    """(e, b, i, X_i, y_i, x_i) as float64 numpy for every prompt and prefix length i >= 1."""
    E, B, N, _ = x.shape
    for e in range(E):
        for b in range(B):
            X, Y = x[e, b].double().numpy(), y[e, b].double().numpy()
            for i in range(1, N):
                yield e, b, i, X[:i], Y[:i], X[i : i + 1]


# ------------------------------------------------------------------------------ least squares
@pytest.mark.parametrize("shape", SHAPES)
def test_least_squares_matches_numpy_lstsq(shape):
    x, y = sequences(*shape, seed=1)
    out = prefix_least_squares(x, y)
    assert out.shape == shape[:3] and out.dtype == F64
    assert (out[..., 0] == 0).all()
    for e, b, i, X, Y, q in each_prefix(x, y):
        w = np.linalg.lstsq(X, Y, rcond=None)[0]  # min-norm for i < d
        np.testing.assert_allclose(out[e, b, i].item(), (q @ w)[0], rtol=1e-9, atol=1e-10)
        if i in (2, shape[2] - 1):
            ref = LinearRegression(fit_intercept=False).fit(X, Y).predict(q)[0]
            np.testing.assert_allclose(out[e, b, i].item(), ref, rtol=1e-8, atol=1e-10)


def test_least_squares_rank_deficient_is_min_norm():
    x, y = sequences(1, 3, 10, 4, seed=2)
    x[..., 3] = x[..., 0] - 2 * x[..., 1]  # rank 3 at every prefix
    out = prefix_least_squares(x, y)
    for e, b, i, X, Y, q in each_prefix(x, y):
        w = np.linalg.pinv(X, rcond=max(X.shape) * np.finfo(float).eps) @ Y
        np.testing.assert_allclose(out[e, b, i].item(), (q @ w)[0], rtol=1e-8, atol=1e-9)


def test_least_squares_float32():
    x, y = sequences(2, 3, 12, 4, seed=3, dtype=torch.float32)
    out = prefix_least_squares(x, y)
    assert out.dtype == torch.float32
    ref = prefix_least_squares(x.double(), y.double())
    well_posed = [i for i in range(12) if abs(i - 4) >= 3]  # away from the i = d peak
    torch.testing.assert_close(
        out[..., well_posed].double(), ref[..., well_posed], rtol=1e-4, atol=1e-4
    )


# ------------------------------------------------------------------------------ averaging
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_averaging_matches_naive_loop(dtype):
    x, y = sequences(2, 3, 9, 4, seed=4, dtype=dtype)
    out = prefix_averaging(x, y)
    assert out.dtype == dtype and (out[..., 0] == 0).all()
    tol = 1e-12 if dtype == F64 else 1e-5
    for e, b, i, X, Y, q in each_prefix(x, y):
        w = sum(Y[j] * X[j] for j in range(i)) / i
        np.testing.assert_allclose(out[e, b, i].item(), (q @ w)[0], rtol=tol, atol=tol)


# ------------------------------------------------------------------------------ k-NN
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("shape", SHAPES)
def test_knn_matches_sklearn(shape, k):
    x, y = sequences(*shape, seed=5)
    out = prefix_knn(x, y, k=k)
    assert (out[..., 0] == 0).all()
    for e, b, i, X, Y, q in each_prefix(x, y):
        ref = KNeighborsRegressor(n_neighbors=min(k, i)).fit(X, Y).predict(q)[0]
        np.testing.assert_allclose(out[e, b, i].item(), ref, rtol=1e-12, atol=1e-12)


def test_knn_float32_and_tie_rule():
    x, y = sequences(1, 4, 8, 3, seed=6, dtype=torch.float32)
    torch.testing.assert_close(prefix_knn(x, y).double(), prefix_knn(x.double(), y.double()))
    # Query x_4 = 0; prefix points at distances 1, 1, 2, 2: the earlier of tied points is nearer.
    x = torch.tensor([[[[1.0], [-1.0], [2.0], [-2.0], [0.0]]]], dtype=F64)
    y = torch.tensor([[[10.0, 20.0, 30.0, 40.0, 0.0]]], dtype=F64)
    assert prefix_knn(x, y, k=1)[0, 0, 4].item() == 10.0
    assert prefix_knn(x, y, k=3)[0, 0, 4].item() == 20.0  # (10 + 20 + 30) / 3
    assert prefix_knn(x, y, k=3)[0, 0, 2].item() == 15.0  # fewer than k points: all of them


# ------------------------------------------------------------------------------ Lasso
def _sk_lasso(X, Y, alpha):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return Lasso(alpha=alpha, fit_intercept=False, tol=1e-13, max_iter=10**6).fit(X, Y)


@pytest.mark.parametrize("shape", SHAPES)
def test_lasso_path_matches_sklearn(shape):
    x, y = sequences(*shape, seed=7)
    out = prefix_lasso_path(x, y)  # the default grid
    assert out.shape == (len(DEFAULT_ALPHAS), *shape[:3])
    assert (out[..., 0] == 0).all()
    for e, b, i, X, Y, q in each_prefix(x, y):
        for a, alpha in enumerate(DEFAULT_ALPHAS):
            ref = _sk_lasso(X, Y, alpha).predict(q)[0]
            np.testing.assert_allclose(out[a, e, b, i].item(), ref, rtol=1e-5, atol=1e-7)


def test_lasso_single_alpha_float32_and_fallback():
    x, y = sequences(2, 2, 9, 3, seed=8)
    ref = prefix_lasso_path(x, y, [0.05, 0.5])
    torch.testing.assert_close(prefix_lasso(x, y, 0.5), ref[1], rtol=1e-10, atol=1e-12)
    out32 = prefix_lasso(x.float(), y.float(), 0.05)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), ref[0], rtol=1e-5, atol=1e-5)
    # One homotopy event is not enough for most rows: coordinate descent finishes them.
    cd = prefix_lasso_path(x, y, [0.05, 0.5], max_events=1)
    torch.testing.assert_close(cd, ref, rtol=1e-6, atol=1e-8)
    with pytest.warns(RuntimeWarning, match="did not reach"):
        prefix_lasso_path(x, y, [1e-3], max_events=1, max_sweeps=1, check_every=1)


# ------------------------------------------------------------------------------ two-layer net
def _naive_net(x, y, width, steps, lr, seed):
    """A per-prompt, per-prefix loop from the same initialization (torch.optim.Adam)."""
    E, B, N, d = x.shape
    init = two_layer_net_init(E, B, d, width, seed, dtype=x.dtype)
    out = torch.zeros(E, B, N, dtype=x.dtype)
    for e in range(E):
        for b in range(B):
            for i in range(1, N):
                p = [init[k][e, b].clone().requires_grad_(True) for k in ("W1", "b1", "w2", "b2")]
                opt = torch.optim.Adam(p, lr=lr)

                def f(z, p=p):
                    return torch.relu(z @ p[0].T + p[1]) @ p[2] + p[3]

                for _ in range(steps):
                    opt.zero_grad()
                    loss = ((f(x[e, b, :i]) - y[e, b, :i]) ** 2).mean()
                    loss.backward()
                    opt.step()
                with torch.no_grad():
                    out[e, b, i] = f(x[e, b, i : i + 1])[0]
    return out


@pytest.mark.parametrize(("dtype", "tol"), [(F64, 1e-9), (torch.float32, 2e-4)])
def test_two_layer_net_matches_naive_loop(dtype, tol):
    x, y = sequences(2, 2, 6, 3, seed=9, dtype=dtype)
    kw = {"width": 16, "steps": 60, "lr": 5e-3, "seed": 3}
    out = prefix_two_layer_net(x, y, **kw)
    assert out.dtype == dtype and (out[..., 0] == 0).all()
    torch.testing.assert_close(out, _naive_net(x, y, **kw), rtol=tol, atol=tol)


def test_two_layer_net_fits_its_prefix():
    # Trained long enough, the network interpolates a smooth target better than predicting 0.
    x, y = sequences(1, 2, 12, 2, seed=10, noise=0.0)
    out = prefix_two_layer_net(x, y, width=32, steps=300, positions=[11])
    assert torch.isnan(out[..., :11]).all()
    assert ((out[..., 11] - y[..., 11]) ** 2).mean() < (y[..., 11] ** 2).mean()


# ------------------------------------------------------------------------------ trees, boosting
def test_decision_tree_and_boosting_match_sklearn():
    x, y = sequences(2, 2, 8, 3, seed=11)
    tree = prefix_decision_tree(x, y, max_depth=3, random_state=1)
    boost = prefix_gradient_boosting(x, y, n_estimators=8, random_state=1)
    for out in (tree, boost):
        assert out.dtype == F64 and (out[..., 0] == 0).all()
    for e, b, i, X, Y, q in each_prefix(x, y):
        t = DecisionTreeRegressor(max_depth=3, random_state=1).fit(X, Y).predict(q)[0]
        g = GradientBoostingRegressor(n_estimators=8, random_state=1).fit(X, Y).predict(q)[0]
        assert tree[e, b, i].item() == t
        assert boost[e, b, i].item() == g


def test_sklearn_learners_parallel_equals_serial():
    x, y = sequences(2, 3, 7, 2, seed=12, dtype=torch.float32)
    serial = prefix_decision_tree(x, y, workers=1)
    parallel = prefix_decision_tree(x, y, workers=2)
    assert serial.dtype == torch.float32
    assert torch.equal(serial, parallel)


# ------------------------------------------------------------------------------ prefix property
FAST = {
    "least_squares": prefix_least_squares,
    "averaging": prefix_averaging,
    "knn": prefix_knn,
    "lasso": lambda x, y: prefix_lasso(x, y, 0.05),
    "net": lambda x, y: prefix_two_layer_net(x, y, width=8, steps=5),
    "tree": prefix_decision_tree,
}


@pytest.mark.parametrize("name", list(FAST))
@settings(max_examples=8, deadline=None)
@given(i=st.integers(0, 6), seed=st.integers(0, 2**16))
def test_prefix_property(name, i, seed):
    """Changing (x_j, y_j) for j >= i leaves the predictions at positions <= i unchanged."""
    fn = FAST[name]
    x, y = sequences(1, 3, 7, 3, seed=seed)
    x2, y2 = x.clone(), y.clone()
    x2[..., i + 1 :, :] += 1.0  # later points and labels
    y2[..., i:] -= 2.0  # the label at i too: it is not used for prediction i
    a, b = fn(x, y), fn(x2, y2)
    torch.testing.assert_close(a[..., : i + 1], b[..., : i + 1], rtol=1e-10, atol=1e-12)
    assert (a[..., 0] == 0).all()


def test_positions_subset_equals_full_run():
    x, y = sequences(1, 2, 9, 3, seed=13)
    pos = [0, 2, 8]
    for call in (
        lambda p: prefix_least_squares(x, y, positions=p),
        lambda p: prefix_averaging(x, y, positions=p),
        lambda p: prefix_knn(x, y, positions=p),
        lambda p: prefix_lasso(x, y, 0.05, positions=p),
        lambda p: prefix_two_layer_net(x, y, width=8, steps=5, positions=p),
        lambda p: prefix_decision_tree(x, y, positions=p),
    ):
        full, part = call(None), call(pos)
        torch.testing.assert_close(part[..., pos], full[..., pos], rtol=1e-10, atol=1e-12)
        others = [i for i in range(9) if i not in pos]
        assert torch.isnan(part[..., others]).all()


def test_validation_errors_name_the_argument():
    x, y = sequences(1, 2, 5, 2)
    with pytest.raises(ValueError, match="x: expected shape"):
        prefix_averaging(x[0], y)
    with pytest.raises(ValueError, match="y: expected shape"):
        prefix_knn(x, y[..., :-1])
    with pytest.raises(ValueError, match="positions"):
        prefix_least_squares(x, y, positions=[5])
    with pytest.raises(ValueError, match="k: "):
        prefix_knn(x, y, k=0)
    with pytest.raises(ValueError, match="alphas"):
        prefix_lasso_path(x, y, [0.1, -1.0])
    with pytest.raises(ValueError, match="steps"):
        prefix_two_layer_net(x, y, steps=0)
    with pytest.raises(ValueError, match="workers"):
        prefix_decision_tree(x, y, workers=0)
    with pytest.raises(TypeError, match="x, y"):
        prefix_averaging(x, y.float())
