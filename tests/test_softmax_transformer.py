import math

import pytest
import torch
from pydantic import ValidationError

from iclab.models.softmax_transformer import (
    SIZE_PRESETS,
    SoftmaxTransformer,
    SoftmaxTransformerConfig,
)
from iclab.tasks import LinearRegressionConfig, LinearRegressionTask

F64 = torch.float64
TINY = dict(size="custom", layers=2, heads=2, width=8, mlp_ratio=2)


def _prompts(E=2, B=3, n=4, d=3, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(E, B, n, d, generator=g, dtype=dtype)
    y = torch.randn(E, B, n, generator=g, dtype=dtype)
    xq = torch.randn(E, B, d, generator=g, dtype=dtype)
    return x, y, xq


def _model(d=3, seeds=(0, 1), dtype=F64, jitter=0.3, **cfg):
    """A model whose biases and LayerNorm parameters are perturbed too (init sets them to 0/1)."""
    model = SoftmaxTransformer(
        d, SoftmaxTransformerConfig(**{**TINY, "init_std": 0.4, **cfg}), seeds, dtype=dtype
    )
    if jitter:
        g = torch.Generator().manual_seed(123)
        with torch.no_grad():
            for _, p in sorted(model.named_parameters()):
                p.add_(jitter * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


# ------------------------------------------------------------------------------- naive reference
def _ln(v, w, b, eps=1e-5):
    mu = sum(v) / len(v)
    var = sum((t - mu) ** 2 for t in v) / len(v)
    return torch.stack([(v[i] - mu) / math.sqrt(var + eps) * w[i] + b[i] for i in range(len(v))])


def _gelu(t):
    return 0.5 * t * (1 + math.tanh(math.sqrt(2 / math.pi) * (t + 0.044715 * t**3)))


def _naive(model, x, y, xq, e, b):
    """Member e, prompt b: explicit loops over layers, heads, rows and keys (floats in float64)."""
    cfg = model.config
    P = {k: v[e].detach() for k, v in model.named_parameters()}
    n = x.shape[2]
    N, W, H = n + 1, cfg.width, cfg.heads
    hd = W // H
    rows = [torch.cat([x[e, b, i], y[e, b, i : i + 1]]) for i in range(n)]
    rows.append(torch.cat([xq[e, b], torch.zeros(1, dtype=x.dtype)]))
    h = [r @ P["embed_weight"] + P["embed_bias"][0] for r in rows]
    h[n] = h[n] + P["query_embed"][0]

    def allowed(m, j):
        return j <= m if cfg.causal else (j < n or m == n)

    maps = []
    for ell in range(cfg.layers):
        a = [_ln(r, P["ln1_weight"][ell], P["ln1_bias"][ell]) for r in h]

        def proj(name, r, ell=ell):
            return r @ P[f"{name}_weight"][ell] + P[f"{name}_bias"][ell]

        q = [proj("attn_q", r) for r in a]
        k = [proj("attn_k", r) for r in a]
        v = [proj("attn_v", r) for r in a]
        layer_map = torch.zeros(H, N, N, dtype=x.dtype)
        new = []
        for m in range(N):
            heads_out = []
            for hh in range(H):
                sl = slice(hh * hd, (hh + 1) * hd)
                js = [j for j in range(N) if allowed(m, j)]
                s = [float(q[m][sl] @ k[j][sl]) / math.sqrt(hd) for j in js]
                top = max(s)
                ex = [math.exp(t - top) for t in s]
                tot = sum(ex)
                out = torch.zeros(hd, dtype=x.dtype)
                for j, w in zip(js, ex, strict=True):
                    layer_map[hh, m, j] = w / tot
                    out = out + (w / tot) * v[j][sl]
                heads_out.append(out)
            r = h[m] + proj("attn_out", torch.cat(heads_out))
            u = proj("mlp_in", _ln(r, P["ln2_weight"][ell], P["ln2_bias"][ell]))
            u = torch.stack([torch.tensor(_gelu(float(t)), dtype=x.dtype) for t in u])
            new.append(r + proj("mlp_out", u))
        h = new
        maps.append(layer_map)
    f = _ln(h[n], P["ln_f_weight"][0], P["ln_f_bias"][0])
    return float(f @ P["head_weight"][:, 0] + P["head_bias"][0, 0]), maps


@pytest.mark.parametrize("causal", [False, True])
def test_matches_naive_loop_reference(causal):
    model = _model(causal=causal)
    x, y, xq = _prompts(B=2)
    pred = model(x, y, xq)
    maps = model.attention_maps(x, y, xq)
    for e in range(2):
        for b in range(2):
            ref, ref_maps = _naive(model, x, y, xq, e, b)
            assert abs(pred[e, b].item() - ref) < 1e-10
            for ell in range(2):
                torch.testing.assert_close(maps[ell][e, b], ref_maps[ell], atol=1e-10, rtol=0)


# ------------------------------------------------------------------------------- shapes, init
def test_shapes_and_parameter_count():
    E, B, n, d = 3, 5, 7, 4
    model = SoftmaxTransformer(d, SoftmaxTransformerConfig(size="tiny"), [0, 1, 2])
    x, y, xq = _prompts(E, B, n, d, dtype=torch.float32)
    assert model(x, y, xq).shape == (E, B)
    maps = model.attention_maps(x, y, xq)
    assert [m.shape for m in maps] == [(E, B, 2, n + 1, n + 1)] * 2
    states = model.hidden_states(x, y, xq)
    assert [s.shape for s in states] == [(E, B, n + 1, 32)] * 3
    W, M, L = 32, 128, 2
    per_layer = 4 * W + 4 * (W * W + W) + (W * M + M) + (M * W + W)
    expected = (d + 1) * W + 2 * W + L * per_layer + 2 * W + W + 1
    assert model.parameter_count() == expected
    assert all(p.dim() >= 3 and p.shape[0] == E for p in model.parameters())
    assert model.predict_prepared(model.prepare(_Batch(x, y, xq))).shape == (E, B)


class _Batch:
    def __init__(self, x, y, x_query):
        self.x, self.y, self.x_query = x, y, x_query


def test_initialization_follows_gpt2():
    cfg = SoftmaxTransformerConfig(size="custom", layers=3, heads=2, width=64, init_std=0.05)
    model = SoftmaxTransformer(3, cfg, [0, 1])
    for name, p in model.named_parameters():
        if name.startswith("ln") and name.endswith("weight"):
            assert bool((p == 1).all()), name
        elif name.endswith("_bias"):
            assert bool((p == 0).all()), name
        else:
            scale = 1 / math.sqrt(6) if name in ("attn_out_weight", "mlp_out_weight") else 1.0
            assert p.std().item() == pytest.approx(0.05 * scale, rel=0.15), name


def test_ensemble_member_equals_single_seed_model():
    x, y, xq = _prompts(E=3, B=4, n=5)
    ens = SoftmaxTransformer(3, SoftmaxTransformerConfig(**TINY), [7, 8, 9], dtype=F64)
    pred = ens(x, y, xq)
    for e, seed in enumerate([7, 8, 9]):
        one = SoftmaxTransformer(3, SoftmaxTransformerConfig(**TINY), [seed], dtype=F64)
        for (name, p), (_, q) in zip(ens.named_parameters(), one.named_parameters(), strict=True):
            assert torch.equal(p[e], q[0]), name
        single = one(x[e : e + 1], y[e : e + 1], xq[e : e + 1])
        torch.testing.assert_close(pred[e : e + 1], single, atol=1e-12, rtol=1e-12)
    again = SoftmaxTransformer(3, SoftmaxTransformerConfig(**TINY), [7, 8, 9], dtype=F64)
    assert all(torch.equal(p, q) for p, q in zip(ens.parameters(), again.parameters()))
    assert not torch.equal(ens.attn_q_weight[0], ens.attn_q_weight[1])


# ------------------------------------------------------------------------------- the mask
def test_context_rows_never_see_the_query():
    model = _model(causal=False)
    x, y, xq = _prompts()
    base = model.hidden_states(x, y, xq)
    moved = model.hidden_states(x, y, xq + torch.randn_like(xq))
    for s0, s1 in zip(base[1:], moved[1:], strict=True):
        torch.testing.assert_close(s0[..., :-1, :], s1[..., :-1, :], atol=0, rtol=0)
        assert (s0[..., -1, :] - s1[..., -1, :]).abs().min() > 0
    # every context row does see every other context row
    y2 = y.clone()
    y2[:, :, -1] += 1.0
    moved = model.hidden_states(x, y2, xq)
    assert bool(((base[1] - moved[1]).abs().amax(-1) > 1e-8).all())
    assert model.attention_mask(4)[:-1].sum().item() == 4 * 4  # context rows: context keys
    for a in model.attention_maps(x, y, xq):
        torch.testing.assert_close(a.sum(-1), torch.ones_like(a[..., 0]))
        assert bool((a[..., ~model.attention_mask(4)] == 0).all())


def test_causal_mask():
    model = _model(causal=True)
    x, y, xq = _prompts(n=5)
    base = model.hidden_states(x, y, xq)
    for i in range(5):
        x2 = x.clone()
        x2[:, :, i] += 1.0
        moved = model.hidden_states(x2, y, xq)
        for s0, s1 in zip(base[1:], moved[1:], strict=True):
            torch.testing.assert_close(s0[..., :i, :], s1[..., :i, :], atol=0, rtol=0)
            assert bool(((s0[..., i:, :] - s1[..., i:, :]).abs().amax(-1) > 1e-8).all())
    for a in model.attention_maps(x, y, xq):
        torch.testing.assert_close(a.sum(-1), torch.ones_like(a[..., 0]))
        assert bool((a.triu(1) == 0).all())
    assert torch.equal(model.attention_mask(5), torch.ones(6, 6, dtype=torch.bool).tril())


def test_prediction_invariant_to_context_order():
    model = _model(causal=False)
    x, y, xq = _prompts(n=6)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    torch.testing.assert_close(
        model(x, y, xq), model(x[:, :, perm], y[:, :, perm], xq), atol=1e-12, rtol=1e-12
    )


# ------------------------------------------------------------------------------- training
def test_gradients_reach_every_parameter_of_every_member():
    model = _model(seeds=(0, 1, 2), jitter=0.1)
    x, y, xq = _prompts(E=3)
    model(x, y, xq).pow(2).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert bool((p.grad.flatten(1).abs().amax(1) > 0).all()), name


def test_dropout_is_seeded_per_member_and_off_without_grad():
    cfg = dict(TINY, dropout=0.3)
    x, y, xq = _prompts(E=2)
    ens = SoftmaxTransformer(3, SoftmaxTransformerConfig(**cfg), [4, 5], dtype=F64)
    one = SoftmaxTransformer(3, SoftmaxTransformerConfig(**cfg), [5], dtype=F64)
    first = ens(x, y, xq)
    torch.testing.assert_close(first[1:], one(x[1:], y[1:], xq[1:]), atol=1e-12, rtol=1e-12)
    assert not torch.allclose(first, ens(x, y, xq))  # a fresh mask each training forward
    assert int(ens.dropout_step) == 2
    with torch.no_grad():
        clean = ens(x, y, xq)
        torch.testing.assert_close(clean, ens(x, y, xq), atol=0, rtol=0)
    no_drop = SoftmaxTransformer(3, SoftmaxTransformerConfig(**TINY), [4, 5], dtype=F64)
    torch.testing.assert_close(clean, no_drop(x, y, xq), atol=1e-12, rtol=1e-12)
    assert int(ens.dropout_step) == 2


def test_a_few_adam_steps_reduce_the_icl_loss():
    """y = <w, x>, d = 3, n = 8: predicting 0 costs E[y²] = 3; the model must use the context."""
    task = LinearRegressionTask(LinearRegressionConfig(d=3, n=8), [0, 1])
    model = SoftmaxTransformer(3, SoftmaxTransformerConfig(size="tiny"), [0, 1])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    test = task.sample(256, "test")

    def test_loss():
        with torch.no_grad():
            return (model(test.x, test.y, test.x_query) - test.y_query).pow(2).mean(-1)

    before = test_loss()
    for step in range(120):
        b = task.sample(128, "train", step)
        loss = (model(b.x, b.y, b.x_query) - b.y_query).pow(2).mean(-1).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = test_loss()
    assert bool((after < 0.8 * before).all()), (before, after)


# ------------------------------------------------------------------------------- config
def test_size_presets_fill_and_round_trip():
    for size, (layers, heads, width) in SIZE_PRESETS.items():
        cfg = SoftmaxTransformerConfig(size=size)
        assert (cfg.layers, cfg.heads, cfg.width) == (layers, heads, width)
        assert SoftmaxTransformerConfig.model_validate(cfg.model_dump()) == cfg
    cfg = SoftmaxTransformerConfig(size="tiny", layers=2)  # agreeing with the preset is fine
    assert cfg.layers == 2
    custom = SoftmaxTransformerConfig(size="custom", layers=1, heads=3, width=12)
    assert custom.head_dim == 4 and custom.mlp_width == 48


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"size": "huge"}, "size"),
        ({"size": "tiny", "layers": 3}, "layers"),
        ({"size": "small", "width": 100}, "width"),
        ({"size": "custom", "heads": 2, "width": 8}, "layers"),
        ({"size": "custom", "layers": 1, "width": 8}, "heads"),
        ({"size": "custom", "layers": 1, "heads": 2}, "width"),
        ({"size": "custom", "layers": 1, "heads": 3, "width": 8}, "width"),
        ({"size": "custom", "layers": 0, "heads": 1, "width": 8}, "layers"),
        ({"size": "custom", "layers": 1, "heads": 0, "width": 8}, "heads"),
        ({"mlp_ratio": 0}, "mlp_ratio"),
        ({"dropout": 1.0}, "dropout"),
        ({"init_std": -0.1}, "init_std"),
        ({"kind": "lsa"}, "kind"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_bad_config_names_the_field(kw, field):
    with pytest.raises(ValidationError) as err:
        SoftmaxTransformerConfig(**kw)
    assert field in str(err.value)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="d:"):
        SoftmaxTransformer(0, SoftmaxTransformerConfig(**TINY))
    with pytest.raises(ValueError, match="seeds"):
        SoftmaxTransformer(3, SoftmaxTransformerConfig(**TINY), [])
    model = SoftmaxTransformer(3, SoftmaxTransformerConfig(**TINY), [0, 1], dtype=F64)
    with pytest.raises(ValueError, match="tokens"):
        model.predict_tokens(torch.zeros(2, 2, 5, 5, dtype=F64))
    with pytest.raises(ValueError, match="tokens"):
        model.predict_tokens(torch.zeros(3, 2, 5, 4, dtype=F64))
