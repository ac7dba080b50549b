"""Tests of the classic per-prompt baselines in iclab.algorithms.classic_baselines (float64).

Each batched learner is compared with the scikit-learn estimator it documents, fitted prompt by
prompt. Tolerances: ridge / least squares are direct solves (agree to ~1e-10 even on rank-deficient
Markov contexts with the 1e-6 ridge); logistic regression and the SVM are iterative on both sides
(Newton to ~1e-15 here, newton-cg / liblinear's trust-region Newton with tol=1e-10 in
scikit-learn; observed differences ≲ 2e-7), so probabilities, weights and decision values are
compared to 1e-6. Predicted
states are compared exactly, except on prompts whose top two scores (or a rounding boundary) lie
within 1e-6 of each other, where either answer is correct to the solvers' precision.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
from sklearn.neighbors import KNeighborsClassifier
from sklearn.svm import LinearSVC

from iclab.algorithms.classic_baselines import (
    ClassifierPrediction,
    k_nearest_neighbors,
    linear_regression_classifier,
    linear_svm,
    logistic_regression,
)

F64 = torch.float64
LOOSE = dict(rtol=1e-6, atol=1e-6)
MARGIN = 1e-6


# ------------------------------------------------------------------------------ prompts
def markov_prompts(E, B, n, d, S, seed):
    """Prompts from a random S-state Markov chain per prompt: x_i = (s_i, …, s_{i+d−1}), y_i = s_{i+d}.

    The covariates are discrete (repeated rows, rank-deficient designs, distance ties) and
    identical rows may carry different labels (non-separable contexts).
    """
    rng = np.random.default_rng(seed)
    T = n + d + 1
    seqs = np.empty((E, B, T), dtype=np.int64)
    trans = rng.dirichlet(np.ones(S), size=(E, B, S))  # (E, B, S, S)
    seqs[..., 0] = rng.integers(0, S, size=(E, B))
    for t in range(1, T):
        cdf = np.take_along_axis(trans, seqs[..., t - 1, None, None], axis=2)[..., 0, :].cumsum(-1)
        seqs[..., t] = (rng.random((E, B, 1)) > cdf).sum(-1).clip(max=S - 1)
    windows = np.lib.stride_tricks.sliding_window_view(seqs, d, axis=-1)  # (E, B, T−d+1, d)
    x = torch.tensor(windows[..., :n, :], dtype=F64)
    y = torch.tensor(seqs[..., d : d + n], dtype=F64)
    xq = torch.tensor(windows[..., n, :], dtype=F64)
    return x, y, xq


def blob_prompts(E, B, n, d, S, seed, spread=1.0):
    """Gaussian blobs: one random centre (norm ≈ 3√d) per state, unit-variance points around it."""
    rng = np.random.default_rng(seed)
    centres = 3 * rng.normal(size=(E, B, S, d))
    y = rng.integers(0, S, size=(E, B, n))
    y[..., :S] = np.arange(S)  # every state present (the test of absent states is separate)
    x = np.take_along_axis(centres, y[..., None], axis=2) + spread * rng.normal(size=(E, B, n, d))
    yq = rng.integers(0, S, size=(E, B))
    xq = np.take_along_axis(centres, yq[..., None, None], axis=2)[..., 0, :]
    xq = xq + spread * rng.normal(size=(E, B, d))
    return torch.tensor(x), torch.tensor(y, dtype=F64), torch.tensor(xq)


def prompts(kind, S, seed=0, E=2, B=5, n=10, d=3):
    if kind == "markov":
        return markov_prompts(E, B, n, d, S, seed)
    return blob_prompts(E, B, n, d, S, seed)


CASES = [("markov", 2), ("markov", 3), ("blobs", 2), ("blobs", 3)]


def each_prompt(x, y, xq):
    """(e, b, X, labels, x_query) per prompt, as numpy (labels int)."""
    E, B = y.shape[:2]
    for e in range(E):
        for b in range(B):
            yield e, b, x[e, b].numpy(), y[e, b].numpy().astype(int), xq[e, b].numpy()[None]


def clear_winner(scores):
    """Prompts whose best score beats the runner-up by more than MARGIN."""
    top2 = torch.topk(scores, 2, dim=-1).values
    return (top2[..., 0] - top2[..., 1]) > MARGIN


# ------------------------------------------------------------------------------ vs scikit-learn
@pytest.mark.parametrize(("kind", "S"), CASES)
def test_linear_regression_matches_sklearn_ridge(kind, S):
    x, y, xq = prompts(kind, S, seed=1)
    out = linear_regression_classifier(x, y, xq, S, ridge=1e-6)
    for e, b, X, lab, q in each_prompt(x, y, xq):
        ref = Ridge(alpha=1e-6).fit(X, lab)
        np.testing.assert_allclose(out.value[e, b].item(), ref.predict(q)[0], rtol=1e-8, atol=1e-8)
        np.testing.assert_allclose(out.weights[e, b].numpy(), ref.coef_, rtol=1e-6, atol=1e-6)
        v = ref.predict(q)[0]
        if abs(v - np.floor(v) - 0.5) > MARGIN:
            assert out.state[e, b].item() == int(np.clip(np.round(v), 0, S - 1))


def test_linear_regression_ridge_zero_is_least_squares():
    x, y, xq = prompts("blobs", 3, seed=2)  # n = 10 > d = 3: full rank
    out = linear_regression_classifier(x, y, xq, 3, ridge=0.0)
    for e, b, X, lab, q in each_prompt(x, y, xq):
        ref = LinearRegression().fit(X, lab)
        np.testing.assert_allclose(out.value[e, b].item(), ref.predict(q)[0], rtol=1e-10)
        np.testing.assert_allclose(out.intercept[e, b].item(), ref.intercept_, rtol=1e-10)
    no_icpt = linear_regression_classifier(x, y, xq, 3, ridge=0.0, fit_intercept=False)
    X, lab, q = x[0, 0].numpy(), y[0, 0].numpy(), xq[0, 0].numpy()[None]
    ref = LinearRegression(fit_intercept=False).fit(X, lab)
    np.testing.assert_allclose(no_icpt.value[0, 0].item(), ref.predict(q)[0], rtol=1e-10)


def _sk_logistic(X, lab, l2=1.0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        # newton-cg: the default lbfgs minimizes the same objective but needs seconds per prompt
        # to reach tol=1e-10 on the Markov contexts.
        model = LogisticRegression(C=1 / l2, solver="newton-cg", tol=1e-10, max_iter=10_000)
        return model.fit(X, lab)


@pytest.mark.parametrize(("kind", "S"), CASES)
def test_logistic_regression_matches_sklearn(kind, S):
    x, y, xq = prompts(kind, S, seed=3)
    l2 = 0.5
    out = logistic_regression(x, y, xq, S, l2=l2)
    assert out.converged.all()
    clear = clear_winner(out.probabilities)
    checked = 0
    for e, b, X, lab, q in each_prompt(x, y, xq):
        classes = np.unique(lab)
        if classes.size == 1:  # scikit-learn refuses to fit; covered by a separate test
            continue
        ref = _sk_logistic(X, lab, l2)
        prob = np.zeros(S)
        prob[classes] = ref.predict_proba(q)[0]
        np.testing.assert_allclose(out.probabilities[e, b].numpy(), prob, **LOOSE)
        if classes.size == 2:  # binary: coef_ = w_c − w_a
            w = out.weights[e, b]
            np.testing.assert_allclose(
                (w[classes[1]] - w[classes[0]]).numpy(), ref.coef_[0], **LOOSE
            )
        if clear[e, b]:
            assert out.state[e, b].item() == ref.predict(q)[0]
        checked += 1
    assert checked >= 6


@pytest.mark.parametrize(("kind", "S"), CASES)
def test_linear_svm_matches_sklearn_linearsvc(kind, S):
    x, y, xq = prompts(kind, S, seed=4)
    C = 0.7
    out = linear_svm(x, y, xq, S, C=C)
    assert out.converged.all()
    clear = clear_winner(out.scores)
    checked = 0
    for e, b, X, lab, q in each_prompt(x, y, xq):
        classes = np.unique(lab)
        if classes.size == 1:
            continue
        ref = LinearSVC(C=C, dual=False, tol=1e-10, max_iter=10_000).fit(X, lab)
        rows = classes[1:] if classes.size == 2 else classes  # binary: coef_ is the upper class
        np.testing.assert_allclose(out.weights[e, b, rows].numpy(), ref.coef_, **LOOSE)
        np.testing.assert_allclose(out.intercept[e, b, rows].numpy(), ref.intercept_, **LOOSE)
        dec = ref.decision_function(q)[0]
        np.testing.assert_allclose(out.scores[e, b, rows].numpy(), np.atleast_1d(dec), **LOOSE)
        if clear[e, b]:
            assert out.state[e, b].item() == ref.predict(q)[0]
        checked += 1
    assert checked >= 6


def test_linear_svm_intercept_scaling_matches_sklearn():
    x, y, xq = prompts("blobs", 3, seed=5)
    out = linear_svm(x, y, xq, 3, C=2.0, intercept_scaling=5.0)
    for e, b, X, lab, _ in list(each_prompt(x, y, xq))[:3]:
        ref = LinearSVC(C=2.0, intercept_scaling=5.0, dual=False, tol=1e-10).fit(X, lab)
        np.testing.assert_allclose(out.weights[e, b].numpy(), ref.coef_, **LOOSE)
        np.testing.assert_allclose(out.intercept[e, b].numpy(), ref.intercept_, **LOOSE)


def test_no_intercept_matches_sklearn():
    x, y, xq = prompts("blobs", 3, seed=11)
    logi = logistic_regression(x, y, xq, 3, fit_intercept=False)
    svm = linear_svm(x, y, xq, 3, fit_intercept=False)
    assert (logi.intercept == 0).all() and (svm.intercept == 0).all()
    for e, b, X, lab, q in list(each_prompt(x, y, xq))[:3]:
        ref = LogisticRegression(
            fit_intercept=False, solver="newton-cg", tol=1e-10, max_iter=10_000
        ).fit(X, lab)
        np.testing.assert_allclose(
            logi.probabilities[e, b].numpy(), ref.predict_proba(q)[0], **LOOSE
        )
        svc = LinearSVC(fit_intercept=False, dual=False, tol=1e-10).fit(X, lab)
        np.testing.assert_allclose(svm.weights[e, b].numpy(), svc.coef_, **LOOSE)


@pytest.mark.parametrize(("kind", "S"), CASES)
def test_knn_matches_sklearn(kind, S):
    x, y, xq = prompts(kind, S, seed=6, B=20)  # Markov contexts often tie at the k-th point
    k = 3
    out = k_nearest_neighbors(x, y, xq, S, k=k)
    dist = ((x - xq.unsqueeze(-2)) ** 2).sum(-1).sort(-1).values
    unambiguous = dist[..., k] > dist[..., k - 1]  # the k nearest are a well-defined set
    checked = 0
    for e, b, X, lab, q in each_prompt(x, y, xq):
        if not unambiguous[e, b]:
            continue
        ref = KNeighborsClassifier(n_neighbors=k).fit(X, lab)
        prob = np.zeros(S)
        prob[ref.classes_] = ref.predict_proba(q)[0]
        np.testing.assert_array_equal(out.probabilities[e, b].numpy(), prob)
        assert out.state[e, b].item() == ref.predict(q)[0]  # includes vote ties (S ≥ 3)
        checked += 1
    assert checked >= 3


def test_knn_tie_rules():
    # Context points on a line; the query at 0. Distances: 1, 1, 2, 2, 3 (indices 0..4).
    x = torch.tensor([[[[1.0], [-1.0], [2.0], [-2.0], [3.0]]]], dtype=F64)
    xq = torch.zeros(1, 1, 1, dtype=F64)
    # k = 1: the distance tie between indices 0 and 1 goes to the earlier one (label 2).
    y = torch.tensor([[[2.0, 0.0, 1.0, 1.0, 0.0]]], dtype=F64)
    assert k_nearest_neighbors(x, y, xq, 3, k=1).state.item() == 2
    # k = 3 with a tie at the 3rd neighbour: index 2 (label 2) is taken before index 3.
    y = torch.tensor([[[0.0, 1.0, 2.0, 0.0, 0.0]]], dtype=F64)
    out = k_nearest_neighbors(x, y, xq, 3, k=3)
    assert out.probabilities.tolist() == [[[1 / 3, 1 / 3, 1 / 3]]]
    assert out.state.item() == 0  # three-way vote tie: the smallest state
    y = torch.tensor([[[2.0, 1.0, 1.0, 2.0, 0.0]]], dtype=F64)
    out = k_nearest_neighbors(x, y, xq, 3, k=4)  # votes: 2 for state 1, 2 for state 2
    assert out.state.item() == 1
    assert out.value.item() == pytest.approx(1.5)


# ------------------------------------------------------------------------------ batching
def _all_learners(S):
    return {
        "linreg": lambda x, y, q: linear_regression_classifier(x, y, q, S),
        "logistic": lambda x, y, q: logistic_regression(x, y, q, S),
        "svm": lambda x, y, q: linear_svm(x, y, q, S),
        "knn": lambda x, y, q: k_nearest_neighbors(x, y, q, S, k=3),
    }


@pytest.mark.parametrize("name", ["linreg", "logistic", "svm", "knn"])
def test_batched_member_equals_member_alone(name):
    x, y, xq = markov_prompts(3, 6, 10, 3, 3, seed=7)
    fn = _all_learners(3)[name]
    full = fn(x, y, xq)
    for e in range(3):
        alone = fn(x[e : e + 1], y[e : e + 1], xq[e : e + 1])
        assert torch.equal(full.state[e], alone.state[0])
        torch.testing.assert_close(full.value[e], alone.value[0], rtol=1e-12, atol=1e-12)
        if full.probabilities is not None:
            torch.testing.assert_close(
                full.probabilities[e], alone.probabilities[0], rtol=1e-12, atol=1e-12
            )


@pytest.mark.parametrize("S", [2, 3, 4])
def test_all_learners_over_num_states(S):
    x, y, xq = blob_prompts(2, 4, 12, 3, S, seed=10 + S)
    y[0, 0] = torch.where(y[0, 0] == S - 1, 0.0, y[0, 0])  # state S−1 absent from one context
    E, B = y.shape[:2]
    for name, fn in _all_learners(S).items():
        out = fn(x, y, xq)
        assert isinstance(out, ClassifierPrediction)
        assert out.state.shape == (E, B) and out.state.dtype == torch.long
        assert out.value.shape == (E, B) and out.value.dtype == F64
        assert ((out.state >= 0) & (out.state < S)).all()
        if out.probabilities is not None:
            assert out.probabilities.shape == (E, B, S)
            torch.testing.assert_close(out.probabilities.sum(-1), torch.ones(E, B, dtype=F64))
            states = torch.arange(S, dtype=F64)
            torch.testing.assert_close(out.value, (out.probabilities * states).sum(-1))
        if name in ("logistic", "svm", "knn"):
            assert out.state[0, 0].item() != S - 1  # never an absent state
        if name == "logistic":
            assert out.probabilities[0, 0, S - 1].item() == 0.0
            assert torch.equal(out.state, out.probabilities.argmax(-1))
        if name == "svm":
            assert out.scores[0, 0, S - 1].item() == float("-inf")
        if name in ("logistic", "svm"):
            assert out.weights.shape == (E, B, S, 3) and out.intercept.shape == (E, B, S)
    # Well-separated blobs: every learner agrees with scikit-learn on the predicted state.
    x, y, xq = blob_prompts(1, 6, 12, 3, S, seed=20 + S, spread=0.3)
    logi, svm = logistic_regression(x, y, xq, S), linear_svm(x, y, xq, S)
    knn = k_nearest_neighbors(x, y, xq, S)
    for e, b, X, lab, q in each_prompt(x, y, xq):
        assert logi.state[e, b].item() == _sk_logistic(X, lab).predict(q)[0]
        svc = LinearSVC(dual=False, tol=1e-10).fit(X, lab)
        assert svm.state[e, b].item() == svc.predict(q)[0]
        nn = KNeighborsClassifier(n_neighbors=3).fit(X, lab)
        assert knn.state[e, b].item() == nn.predict(q)[0]


def test_single_state_context_predicts_that_state():
    x, _, xq = blob_prompts(1, 2, 6, 2, 3, seed=8)
    y = torch.full(x.shape[:3], 2.0, dtype=F64)
    for fn in _all_learners(3).values():
        out = fn(x, y, xq)
        assert (out.state == 2).all()
    out = logistic_regression(x, y, xq, 3)
    torch.testing.assert_close(out.probabilities[..., 2], torch.ones(1, 2, dtype=F64))
    assert out.converged.all() and torch.isfinite(out.weights).all()


def test_float32_close_to_float64():
    x, y, xq = markov_prompts(2, 8, 10, 3, 3, seed=9)
    for fn in (logistic_regression, linear_svm):
        ref = fn(x, y, xq, 3)
        out = fn(x.float(), y.float(), xq.float(), 3)
        assert out.converged.all()
        assert out.weights.dtype == torch.float32
        torch.testing.assert_close(out.weights.double(), ref.weights, rtol=1e-3, atol=1e-3)


# ------------------------------------------------------------------------------ validation
def test_validation_errors_name_the_argument():
    x, y, xq = markov_prompts(1, 2, 5, 2, 3, seed=0)
    with pytest.raises(ValueError, match="num_states"):
        logistic_regression(x, y, xq, 1)
    with pytest.raises(ValueError, match="num_states"):
        linear_regression_classifier(x, y, xq, 2.0)
    bad = y.clone()
    bad[0, 0, 0] = 3.0
    with pytest.raises(ValueError, match="y: labels"):
        linear_svm(x, bad, xq, 3)
    bad[0, 0, 0] = 0.5
    with pytest.raises(ValueError, match="y: labels"):
        k_nearest_neighbors(x, bad, xq, 3)
    bad[0, 0, 0] = -1.0
    with pytest.raises(ValueError, match="y: labels"):
        linear_regression_classifier(x, bad, xq, 3)
    with pytest.raises(ValueError, match="x_query"):
        logistic_regression(x, y, xq[..., :1], 3)
    with pytest.raises(ValueError, match="y: expected shape"):
        linear_svm(x, y[..., :-1], xq, 3)
    with pytest.raises(ValueError, match="k: "):
        k_nearest_neighbors(x, y, xq, 3, k=6)
    with pytest.raises(ValueError, match="k: "):
        k_nearest_neighbors(x, y, xq, 3, k=0)
    with pytest.raises(ValueError, match="l2"):
        logistic_regression(x, y, xq, 3, l2=0.0)
    with pytest.raises(ValueError, match="C: "):
        linear_svm(x, y, xq, 3, C=-1.0)
    with pytest.raises(ValueError, match="intercept_scaling"):
        linear_svm(x, y, xq, 3, intercept_scaling=0.0)
    with pytest.raises(ValueError, match="ridge"):
        linear_regression_classifier(x, y, xq, 3, ridge=float("nan"))
    with pytest.raises(ValueError, match="iterations"):
        logistic_regression(x, y, xq, 3, iterations=0)
    with pytest.raises(ValueError, match="x: need at least one"):
        k_nearest_neighbors(x[..., :0, :], y[..., :0], xq, 3, k=1)
