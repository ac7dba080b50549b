import itertools
import math
import types

import numpy as np
import pytest
import torch
from pydantic import ValidationError

import iclab.models.kernel_label_stream as stream
from iclab.algorithms.kernel_methods import (
    attention_kernel_weights,
    functional_gd,
    tune_functional_gd_steps,
)
from iclab.models import compiled_label_stream
from iclab.models.kernel_attention import KernelAttention, KernelAttentionConfig
from iclab.tasks.gaussian_process import GaussianProcessConfig, GaussianProcessTask
from iclab.theory.gaussian_process.functional_gd import functional_gd_weights, gp_posterior_mean

ACTIVATIONS = ["linear", "relu", "exp", "softmax"]


def _batch(d=4, n=6, seeds=(0, 1), size=5, kernel="exp", noise=0.1, purpose="t"):
    cfg = GaussianProcessConfig(d=d, n=n, kernel=kernel, noise_std=noise)
    return GaussianProcessTask(cfg, list(seeds), dtype=torch.float64).sample(size, purpose)


def _h(act, s):
    return {"linear": s, "relu": np.maximum(s, 0.0), "exp": np.exp(s)}[act]


def _naive_forward(tokens, B, v, Q, K, heads, sign):
    """One prompt, explicit double loop over tokens m and keys j. tokens (n+1, d+1)."""
    Z = tokens.copy()
    n, d = Z.shape[0] - 1, Z.shape[1] - 1
    for layer in range(B.shape[0]):
        new = Z.copy()
        for h, act in enumerate(heads):
            P = np.zeros((d + 1, d + 1))
            P[:d, :d] = B[layer, h]
            P[d, d] = v[layer, h]
            for m in range(n + 1):
                s = np.array(
                    [(Q[layer, h] @ Z[j, :d]) @ (K[layer, h] @ Z[m, :d]) for j in range(n)]
                )
                a = np.exp(s - s.max()) / np.exp(s - s.max()).sum() if act == "softmax" else None
                for j in range(n):
                    weight = a[j] if act == "softmax" else _h(act, s[j]) / n
                    new[m] += weight * (P @ Z[j])
        Z = new
    return sign * Z[n, d]


def _naive_functional_gd(x, y, xq, act, steps):
    """One prompt, explicit loops."""
    n = len(y)
    pts = np.vstack([x, xq[None]])

    def w(m, j):
        if act == "softmax":
            s = np.array([pts[i] @ pts[m] for i in range(n)])
            return np.exp(s[j]) / np.exp(s).sum()
        return _h(act, pts[j] @ pts[m]) / n

    r, f = y.copy(), 0.0
    for eta in steps:
        f += eta * sum(w(n, j) * r[j] for j in range(n))
        r = r - eta * np.array([sum(w(m, j) * r[j] for j in range(n)) for m in range(n)])
    return f


@pytest.mark.parametrize("activation, layers", list(itertools.product(ACTIVATIONS, [1, 3])))
def test_constructed_weights_run_functional_gd(activation, layers):
    b = _batch()
    steps = torch.tensor([[0.7, 0.4, 1.1], [0.2, 0.9, 0.5]], dtype=torch.float64)[:, :layers]
    model = KernelAttention(
        4, KernelAttentionConfig(layers=layers, heads=[activation]), [0, 1], dtype=torch.float64
    )
    model.set_weights(**functional_gd_weights(activation, layers, steps, d=4))
    ref = functional_gd(b.x, b.y, b.x_query, activation, steps, return_trajectory=True)
    pred = model(b.x, b.y, b.x_query)
    torch.testing.assert_close(pred, ref.prediction, atol=1e-10, rtol=1e-10)
    tokens = model.forward_tokens(b.tokens())
    assert len(tokens) == layers + 1
    for layer in range(layers + 1):  # query slot holds −f_ℓ(x_q), context slots the residuals
        torch.testing.assert_close(
            -tokens[layer][..., -1, 4], ref.trajectory[..., layer], atol=1e-10, rtol=1e-10
        )
    torch.testing.assert_close(tokens[-1][..., :-1, 4], ref.residuals, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(tokens[-1][..., :4], b.tokens()[..., :4], atol=0, rtol=0)
    # the batched algorithm matches an explicit per-prompt loop
    for e, i in [(0, 0), (1, 3)]:
        naive = _naive_functional_gd(
            b.x[e, i].numpy(),
            b.y[e, i].numpy(),
            b.x_query[e, i].numpy(),
            activation,
            steps[e].tolist(),
        )
        assert ref.prediction[e, i].item() == pytest.approx(naive, abs=1e-10)


def test_positive_readout_one_layer_and_refusal_beyond():
    b = _batch()
    model = KernelAttention(
        4,
        KernelAttentionConfig(layers=1, heads=["exp"], readout="positive"),
        [0, 1],
        dtype=torch.float64,
    )
    model.set_weights(**functional_gd_weights("exp", 1, [0.8], d=4, readout="positive"))
    ref = functional_gd(b.x, b.y, b.x_query, "exp", [0.8]).prediction
    torch.testing.assert_close(model(b.x, b.y, b.x_query), ref, atol=1e-10, rtol=1e-10)
    with pytest.raises(ValueError, match="positive"):
        functional_gd_weights("exp", 2, [0.8, 0.5], d=4, readout="positive")
    with pytest.raises(ValueError, match="activation"):
        functional_gd_weights("tanh", 1, [0.8], d=4)
    with pytest.raises(ValueError, match="step_sizes"):
        functional_gd_weights("exp", 3, [0.8, 0.5], d=4)


@pytest.mark.parametrize(
    "heads, readout, value_block",
    [
        (["exp", "linear"], "negative", True),
        (["relu", "softmax"], "positive", True),
        (["softmax"], "negative", False),
    ],
)
def test_forward_matches_naive_loop(heads, readout, value_block):
    b = _batch(d=3, n=5, size=3)
    cfg = KernelAttentionConfig(
        layers=2, heads=heads, readout=readout, init_std=0.5, train_value_block=value_block
    )
    model = KernelAttention(3, cfg, [0, 1], dtype=torch.float64)
    pred = model(b.x, b.y, b.x_query)
    assert pred.shape == (2, 3)
    torch.testing.assert_close(model.predict_prepared(model.prepare(b)), pred, rtol=0, atol=0)
    args = [t.detach().numpy() for t in (model.B, model.v, model.Q, model.K)]
    tok = b.tokens().numpy()
    naive = np.array(
        [
            [_naive_forward(tok[e, i], *(a[e] for a in args), heads, model.sign) for i in range(3)]
            for e in range(2)
        ]
    )
    np.testing.assert_allclose(pred.detach().numpy(), naive, atol=1e-10, rtol=1e-10)
    if not value_block:
        assert "B" not in dict(model.named_parameters())
        assert torch.all(model.B == 0)


@pytest.mark.parametrize(
    "heads",
    [["linear"], ["relu"], ["exp"], ["softmax"], ["exp", "linear"], ["relu", "softmax", "exp"]],
)
@pytest.mark.parametrize("readout", ["negative", "positive"])
def test_fast_label_path_equals_token_layer_loop(heads, readout):
    """predict_tokens (B = 0 fast path) vs the token-level loop: values and gradients, float64."""
    b = _batch(d=4, n=6, size=7, seeds=(0, 1, 2))
    cfg = KernelAttentionConfig(layers=3, heads=heads, readout=readout, init_std=0.4)
    model = KernelAttention(4, cfg, [0, 1, 2], dtype=torch.float64)
    tokens = b.tokens()
    tokens[..., -1, -1] = 0.3  # a non-zero initial query slot must be carried too
    fast = model.predict_tokens(tokens)
    slow = model.sign * model.forward_tokens(tokens)[-1][..., -1, 4]
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-12)
    g_fast = torch.autograd.grad(fast.pow(2).sum(), list(model.parameters()))
    g_slow = torch.autograd.grad(slow.pow(2).sum(), list(model.parameters()))
    for a, c in zip(g_fast, g_slow):
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-12)


def test_ensemble_member_matches_single_seed_and_gradients_flow():
    b = _batch(d=3, n=5, size=4)
    cfg = KernelAttentionConfig(layers=2, heads=["exp", "linear"], init_std=0.3)
    both = KernelAttention(3, cfg, [0, 1], dtype=torch.float64)
    one = KernelAttention(3, cfg, [1], dtype=torch.float64)
    for name, p in one.named_parameters():
        torch.testing.assert_close(p[0], dict(both.named_parameters())[name][1], rtol=0, atol=0)
    loss = ((both(b.x, b.y, b.x_query) - b.y_query) ** 2).mean()
    loss.backward()
    for p in both.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()


def test_exp_overflow_raises_instead_of_rescaling():
    b = _batch(d=3, n=5, size=2).to(torch.float32)
    model = KernelAttention(3, KernelAttentionConfig(layers=1, heads=["exp"]), [0, 1])
    model.set_weights(Q=10 * torch.eye(3), K=10 * torch.eye(3), v=torch.tensor(1.0))
    with pytest.raises(FloatingPointError, match="overflow"):
        model(b.x, b.y, b.x_query)
    with pytest.raises(FloatingPointError, match="overflow"):
        model.forward_tokens(b.tokens())
    # softmax with the same logits is exact (max-subtracted) and finite
    sm = KernelAttention(3, KernelAttentionConfig(layers=1, heads=["softmax"]), [0, 1])
    sm.set_weights(Q=10 * torch.eye(3), K=10 * torch.eye(3), v=torch.tensor(1.0))
    assert torch.isfinite(sm(b.x, b.y, b.x_query)).all()


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"heads": ["tanh"]}, "heads"),
        ({"heads": []}, "heads"),
        ({"layers": 0}, "layers"),
        ({"readout": "up"}, "readout"),
        ({"init_std": -1.0}, "init_std"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_bad_config_names_the_field(kw, field):
    with pytest.raises(ValidationError) as err:
        KernelAttentionConfig(**kw)
    assert field in str(err.value)


def test_value_block_requires_flag_and_bad_shapes_are_named():
    model = KernelAttention(3, KernelAttentionConfig(layers=1), [0], dtype=torch.float64)
    with pytest.raises(ValueError, match="B"):
        model.set_weights(B=torch.ones(3, 3))
    with pytest.raises(ValueError, match="Q"):
        model.set_weights(Q=torch.ones(4, 4))
    with pytest.raises(ValueError, match="tokens"):
        model.forward_tokens(torch.zeros(1, 2, 4, 5, dtype=torch.float64))


def test_softmax_weights_are_row_stochastic():
    b = _batch()
    W = attention_kernel_weights(b.x, b.x, "softmax")
    torch.testing.assert_close(W.sum(-1), torch.ones(2, 5, 6, dtype=torch.float64))


def test_one_step_tuning_matches_closed_form():
    """L = 1: the prediction is η·m with m = w_qᵀ y, so η* = Σ m y_q / Σ m²."""
    b = _batch(size=200, kernel="linear")
    tuned = tune_functional_gd_steps(b.x, b.y, b.x_query, b.y_query, "exp", layers=1)
    m = functional_gd(b.x, b.y, b.x_query, "exp", 1.0).prediction
    eta = (m * b.y_query).sum(-1) / (m * m).sum(-1)
    torch.testing.assert_close(tuned.step_sizes[:, 0], eta, atol=1e-8, rtol=1e-8)


def test_local_tuning_starts_only_from_init():
    """``local=True``: L-BFGS from the given steps only; from the tuned optimum it stays there."""
    b = _batch(size=300, kernel="relu")
    tuned = tune_functional_gd_steps(b.x, b.y, b.x_query, b.y_query, "relu", layers=3)
    again = tune_functional_gd_steps(
        b.x, b.y, b.x_query, b.y_query, "relu", 3, init=tuned.step_sizes, local=True
    )
    torch.testing.assert_close(again.loss, tuned.loss, rtol=1e-6, atol=1e-10)
    torch.testing.assert_close(again.initial_loss, tuned.loss, rtol=1e-6, atol=1e-10)
    with pytest.raises(ValueError, match="local"):
        tune_functional_gd_steps(b.x, b.y, b.x_query, b.y_query, "relu", 3, local=True)


def test_matched_activation_approaches_bayes_and_mismatched_is_worse():
    """Linear GP data (d = 5, n = 14, σ = 0.1), L = 7 tuned steps on 2000 held-out prompts.

    Matched (linear attention = GD on least squares): within 20% of the Bayes loss (≈ σ² + the
    posterior variance, ≈ 0.015; measured ≈ 9% above). Mismatched: exp attention. Its RKHS
    spends most of the spectrum of K/n on the constant and higher-order components of
    exp(⟨u,v⟩) that the linear-kernel labels lack, so 7 steps cannot isolate the linear
    component (measured ≈ 4× the Bayes loss); the paired difference must exceed 3 SE.
    """
    held = _batch(d=5, n=14, seeds=(0,), size=2000, kernel="linear", purpose="tune")
    test = _batch(d=5, n=14, seeds=(0,), size=4000, kernel="linear", purpose="test")
    bayes = gp_posterior_mean(test.x, test.y, test.x_query, "linear", noise_std=0.1)
    errs = {}
    for act in ("linear", "exp"):
        tuned = tune_functional_gd_steps(held.x, held.y, held.x_query, held.y_query, act, 7)
        pred = tuned.predict(test.x, test.y, test.x_query).prediction
        errs[act] = ((pred - test.y_query) ** 2).flatten()
    bayes_loss = ((bayes - test.y_query) ** 2).mean().item()
    assert errs["linear"].mean().item() < 1.2 * bayes_loss
    diff = errs["exp"] - errs["linear"]
    se = diff.std().item() / math.sqrt(diff.numel())
    assert diff.mean().item() > 3 * se
    assert errs["exp"].mean().item() > 2 * bayes_loss


def _use_label_pass(label_pass: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make loss_prepared run the compiled fused pass or the torch one."""
    if label_pass == "torch":
        monkeypatch.setenv("ICLAB_COMPILED_KERNELS", "0")
    elif compiled_label_stream.library() is None:
        pytest.skip("no C compiler: the compiled label stream cannot be built here")
    assert compiled_label_stream.supports(torch.zeros(1)) == (label_pass == "compiled")


@pytest.mark.parametrize(
    "heads",
    [
        ["linear"],
        ["relu"],
        ["exp"],
        ["softmax"],
        ["exp", "linear"],
        ["exp", "exp"],
        ["relu", "softmax"],
        ["linear", "relu", "exp", "softmax"],
    ],
)
@pytest.mark.parametrize("layers, d, n, size", [(1, 3, 4, 5), (3, 4, 6, 37), (5, 5, 8, 19)])
@pytest.mark.parametrize(
    "chunk, label_pass", [(None, "compiled"), (None, "torch"), (4, "torch")]
)  # the compiled pass has no chunks
def test_chunked_label_stream_and_fused_loss_equal_autograd(
    heads, layers, d, n, size, chunk, label_pass, monkeypatch
):
    """The hand-derived backward (predict_tokens) and the fused loss (loss_prepared), in C
    and in torch, against the label stream in plain autograd: values and gradients in
    float64, whole batch and chunks of 4 prompts (which leaves a partial last chunk)."""
    _use_label_pass(label_pass, monkeypatch)
    seeds = [0, 1, 2]
    cfg = KernelAttentionConfig(layers=layers, heads=heads, init_std=0.4)
    model = KernelAttention(d, cfg, seeds, dtype=torch.float64)
    gen = torch.Generator().manual_seed(7)
    tokens = torch.randn(3, size, n + 1, d + 1, generator=gen, dtype=torch.float64)
    tokens[..., -1, -1] = 0.3
    batch = types.SimpleNamespace(y_query=torch.randn(3, size, generator=gen, dtype=torch.float64))
    weights = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)  # distinct ∂ℒ/∂loss per member
    params = list(model.parameters())

    ref_pred = model.sign * model._label_stream_autograd(tokens)
    ref_loss = (ref_pred - batch.y_query).pow(2).mean(-1)
    ref_grads = torch.autograd.grad((ref_loss * weights).sum(), params)
    saved = stream.CPU_CHUNK
    stream.CPU_CHUNK = 3 * chunk if chunk else saved
    try:
        pred = model.predict_tokens(tokens)
        grads = torch.autograd.grad(
            ((pred - batch.y_query).pow(2).mean(-1) * weights).sum(), params
        )
        loss = model.loss_prepared(tokens, batch)
        fused = torch.autograd.grad((loss * weights).sum(), params)
    finally:
        stream.CPU_CHUNK = saved
    torch.testing.assert_close(pred, ref_pred, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=1e-12)
    for g, f, ref in zip(grads, fused, ref_grads):
        assert ref.abs().max() > 0  # the comparison is not vacuous
        torch.testing.assert_close(g, ref, rtol=1e-10, atol=1e-12 * ref.abs().max().item())
        torch.testing.assert_close(f, ref, rtol=1e-10, atol=1e-12 * ref.abs().max().item())


@pytest.mark.parametrize("label_pass", ["compiled", "torch"])
def test_fused_loss_is_the_trainer_objective_and_raises_on_overflow(label_pass, monkeypatch):
    """loss_prepared equals the MSE of predict_prepared, without gradients too, and an exp
    overflow raises FloatingPointError from the fused pass (C or torch) as from the
    prediction."""
    _use_label_pass(label_pass, monkeypatch)
    b = _batch(d=3, n=5, size=6)
    model = KernelAttention(3, KernelAttentionConfig(layers=2, heads=["exp"], init_std=0.3), [0, 1],
                            dtype=torch.float64)  # fmt: skip
    state = model.prepare(b)
    with torch.no_grad():
        loss = model.loss_prepared(state, b)
    expected = (model.predict_prepared(state) - b.y_query).pow(2).mean(-1)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)
    b32 = b.to(torch.float32)
    hot = KernelAttention(3, KernelAttentionConfig(layers=1, heads=["exp"]), [0, 1])
    hot.set_weights(Q=10 * torch.eye(3), K=10 * torch.eye(3), v=torch.tensor(1.0))
    with pytest.raises(FloatingPointError, match="overflow"):
        hot.loss_prepared(hot.prepare(b32), b32)


@pytest.mark.parametrize("heads", [["exp"], ["linear", "relu", "exp", "softmax"]])
@pytest.mark.parametrize("label_pass", ["compiled", "torch"])
def test_fused_loss_reuses_its_buffers_across_calls_exactly(heads, label_pass, monkeypatch):
    """On a CPU the fused pass keeps its scratch buffers (and views of them) for the next call
    with the same shapes: repeated calls with new prompts and new weights, and a call with
    other shapes in between, still give the autograd loss and gradients (float64); so does
    the compiled pass, which keeps nothing between calls."""
    _use_label_pass(label_pass, monkeypatch)
    d, n, size = 4, 5, 23
    cfg = KernelAttentionConfig(layers=3, heads=heads, init_std=0.4)
    model = KernelAttention(d, cfg, [0, 1], dtype=torch.float64)
    params = list(model.parameters())
    gen = torch.Generator().manual_seed(3)

    def check(size: int, chunk: int) -> None:
        tokens = torch.randn(2, size, n + 1, d + 1, generator=gen, dtype=torch.float64)
        tokens[..., -1, -1] = 0.0
        y = torch.randn(2, size, generator=gen, dtype=torch.float64)
        with torch.no_grad():
            for p in params:
                p.copy_(0.4 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
        ref_loss = (model.sign * model._label_stream_autograd(tokens) - y).pow(2).mean(-1)
        ref = torch.autograd.grad(ref_loss.sum(), params)
        saved = stream.CPU_CHUNK
        stream.CPU_CHUNK = chunk
        try:
            loss = model.loss_prepared(tokens, types.SimpleNamespace(y_query=y))
            grads = torch.autograd.grad(loss.sum(), params)
        finally:
            stream.CPU_CHUNK = saved
        torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=1e-12)
        for g, r in zip(grads, ref):
            assert r.abs().max() > 0
            torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12 * r.abs().max().item())

    for size_, chunk in [(size, 14), (size, 14), (9, 14), (size, 14), (size, 46)]:
        check(size_, chunk)
