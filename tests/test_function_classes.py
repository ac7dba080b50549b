"""The function-class task: each family's law, each input shift's law, pools, determinism,
evaluate(params, x), dtypes and the refusal of bad input."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from iclab import registry
from iclab.config import ConfigError, make_config
from iclab.tasks import FunctionClassConfig, FunctionClassTask, FunctionParams, evaluate
from iclab.tasks.function_classes import draw_functions, leaf_index
from iclab.tasks.input_shifts import skewed_spectrum

F64 = torch.float64
FAMILY_KW = {
    "linear": {},
    "sparse_linear": {"sparsity": 2},
    "linear_classification": {},
    "noisy_linear": {"noise_std": 0.5},
    "quadratic": {},
    "relu_network": {"width": 16},
    "decision_tree": {"depth": 3},
}


def sample(seeds=(0,), batch=2000, dtype=F64, purpose="mc", index=0, **cfg):
    task = FunctionClassTask(FunctionClassConfig(**cfg), seeds=list(seeds), dtype=dtype)
    return task, task.sample(batch, purpose, index)


def assert_mean(values, target, k=5.0):
    """The sample mean of independent ``values`` is within k standard errors of ``target``."""
    v = values.reshape(-1).to(F64)
    se = v.std().item() / math.sqrt(v.numel())
    assert abs(v.mean().item() - target) < k * se + 1e-12, (v.mean().item(), target, se)


# ---------------------------------------------------------------------------- shapes, evaluate


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("family", list(FAMILY_KW))
def test_shapes_dtype_and_evaluate_reproduces_the_labels(family, dtype):
    _, b = sample(seeds=(0, 1), batch=64, dtype=dtype, family=family, d=4, n=6, **FAMILY_KW[family])
    assert b.x.shape == (2, 64, 6, 4) and b.y.shape == (2, 64, 6)
    assert b.x_query.shape == (2, 64, 4) and b.y_query.shape == (2, 64)
    assert all(t.dtype == dtype for t in (b.x, b.y, b.x_query, b.y_query))
    assert b.params.batch_shape == (2, 64)
    assert b.tokens().shape == (2, 64, 7, 5)
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-12, "rtol": 0}
    if family == "noisy_linear":
        # the residual is the noise: not zero, and no larger than a few σ
        r = b.y - b.evaluate(b.x)
        assert r.abs().max() > 0.1 and r.abs().max() < 0.5 * 8
    else:
        torch.testing.assert_close(b.evaluate(b.x), b.y, **tol)
        torch.testing.assert_close(b.evaluate(b.x_query), b.y_query, **tol)
    # a float64 copy keeps the tree's coordinates as integers
    b64 = b.to(F64)
    assert b64.x.dtype == F64
    if family == "decision_tree":
        assert b64.params.split_coords.dtype == torch.int64
        assert b64.params.leaf_values.dtype == F64


def test_evaluate_weight_families_match_their_formulas():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 4, generator=g, dtype=F64)
    for family, expect in [
        ("linear", lambda w: torch.einsum("bmd,bd->bm", x, w)),
        ("quadratic", lambda w: torch.einsum("bmd,bd->bm", x * x, w)),
        ("linear_classification", lambda w: torch.sign(torch.einsum("bmd,bd->bm", x, w))),
    ]:
        p = draw_functions(family, 3, 4, g, dtype=F64)
        torch.testing.assert_close(evaluate(p, x), expect(p.w))
    p = draw_functions("relu_network", 3, 4, g, dtype=F64, width=6, scale=2.0)
    naive = torch.stack(
        [
            torch.stack(
                [
                    2.0 * sum(p.output[b, j] * max(0.0, p.hidden[b, j] @ x[b, m]) for j in range(6))
                    for m in range(5)
                ]
            )
            for b in range(3)
        ]
    )
    torch.testing.assert_close(evaluate(p, x), naive)
    torch.testing.assert_close(evaluate(p, x[:, 0]), naive[:, 0])  # one point per function


# ---------------------------------------------------------------------------- family laws


def test_linear_second_moment_is_d():
    _, b = sample(batch=40_000, family="linear", d=5, n=1)
    assert_mean(b.y[..., 0] ** 2, 5.0)
    assert_mean(b.y[..., 0], 0.0)


def test_sparse_linear_has_exactly_k_nonzeros_on_a_uniform_support():
    d, k = 6, 2
    _, b = sample(batch=30_000, family="sparse_linear", d=d, n=1, sparsity=k)
    nonzero = b.w[0] != 0
    assert torch.all(nonzero.sum(-1) == k)
    freq = nonzero.to(F64).mean(0)  # each coordinate is in the support with probability k/d
    se = math.sqrt((k / d) * (1 - k / d) / nonzero.shape[0])
    assert torch.all((freq - k / d).abs() < 5 * se), freq
    assert_mean(b.w[0][nonzero] ** 2, 1.0)  # the non-zero values are N(0, 1)
    assert_mean(b.y[..., 0] ** 2, float(k))


def test_classification_labels_are_signs_with_half_positive():
    _, b = sample(batch=40_000, family="linear_classification", d=3, n=2, y_scale=2.0)
    assert set(b.y.unique().tolist()) == {-2.0, 2.0}
    s = torch.einsum("ebnd,ebd->ebn", b.x, b.w)
    assert torch.equal(b.y, 2.0 * torch.where(s >= 0, 1.0, -1.0).to(F64))
    assert_mean((b.y[..., 0] > 0).to(F64), 0.5)


def test_noisy_linear_residual_has_variance_sigma_squared():
    sigma, y_scale = 0.7, 2.0
    _, b = sample(batch=20_000, family="noisy_linear", d=3, n=4, noise_std=sigma, y_scale=y_scale)
    r = (b.y - b.evaluate(b.x)) / y_scale
    rq = (b.y_query - b.evaluate(b.x_query)) / y_scale
    assert b.noise_std == sigma
    assert_mean(r, 0.0)
    assert_mean(r**2, sigma**2)
    assert_mean(rq**2, sigma**2)  # the query's label is noisy as well
    assert abs(torch.corrcoef(torch.stack([r[0, :, 0], rq[0]]))[0, 1].item()) < 0.04


@pytest.mark.parametrize("normalize, c2", [(True, 1 / 3), (False, 1.0)])
def test_quadratic_moments_match_the_closed_form(normalize, c2):
    d = 4
    _, b = sample(batch=60_000, family="quadratic", d=d, n=1, normalize=normalize)
    y = b.y[0, :, 0]
    assert_mean(y, 0.0)
    assert_mean(y**2, 3 * c2 * d)  # E[y²] = 3c²d
    # given w: E[y | w] = c Σ w_i and Var(y | w) = 2c² Σ w_i²
    cw = math.sqrt(c2) * b.w[0].sum(-1)
    assert_mean(y - cw, 0.0)
    assert_mean((y - cw) ** 2 - 2 * c2 * (b.w[0] ** 2).sum(-1), 0.0)


@pytest.mark.parametrize("width", [1, 7, 100])
def test_relu_network_second_moment_is_the_input_norm(width):
    _, b = sample(batch=30_000, family="relu_network", d=5, n=1, width=width)
    y, x = b.y[0, :, 0], b.x[0, :, 0]
    assert_mean(y**2, 5.0)  # E[y²] = E‖x‖² = d, whatever the width
    assert_mean(y**2 - (x**2).sum(-1), 0.0)  # and E[y² | x] = ‖x‖²
    assert_mean(y, 0.0)
    assert b.params.hidden.shape == (1, 30_000, width, 5)


def _naive_leaf(coords, x, depth):
    node = 0
    for _ in range(depth):
        node = 2 * node + (2 if x[coords[node]] > 0 else 1)
    return node - (2**depth - 1)


def _leaf_probabilities(coords, depth):
    """P(leaf) for x ~ N(0, I): 2^-(distinct coordinates on the path), 0 if the path contradicts."""
    probs = []
    for leaf in range(2**depth):
        node, need, ok = 0, {}, True
        for level in reversed(range(depth)):
            right = (leaf >> level) & 1
            c = int(coords[node])
            ok &= need.setdefault(c, right) == right
            node = 2 * node + 1 + right
        probs.append(2.0 ** -len(need) if ok else 0.0)
    return torch.tensor(probs, dtype=F64)


def test_tree_matches_a_naive_walk_and_the_leaf_law():
    depth, d = 3, 3
    _, b = sample(batch=300, family="decision_tree", d=d, n=5, depth=depth)
    leaves = leaf_index(b.params, b.x)
    coords, x = b.params.split_coords[0], b.x[0]
    naive = torch.tensor(
        [[_naive_leaf(coords[i], x[i, m], depth) for m in range(5)] for i in range(300)]
    )
    assert torch.equal(leaves[0], naive)
    torch.testing.assert_close(b.y, b.params.leaf_values.gather(-1, leaves))
    # occupancy of a few trees under many Gaussian inputs against the exact law; with d = 3 and
    # depth 3 some trees repeat a coordinate on a path, so the law is not uniform in general
    trees = b.params.map(lambda t: t[0, :8])
    g = torch.Generator().manual_seed(1)
    m = 20_000
    hits = leaf_index(trees, torch.randn(8, m, d, generator=g, dtype=F64))
    saw_unreachable = False
    for t in range(8):
        p = _leaf_probabilities(trees.split_coords[t], depth)
        assert p.sum().item() == pytest.approx(1.0)
        emp = torch.bincount(hits[t], minlength=2**depth).to(F64) / m
        se = (p * (1 - p) / m).sqrt()
        assert torch.all((emp - p).abs() <= 5 * se + 1e-12), (emp, p)
        saw_unreachable |= bool((p == 0).any())
    assert saw_unreachable
    # a tree whose paths never repeat a coordinate fills its 2^depth leaves uniformly
    uniform = FunctionParams(
        "decision_tree",
        split_coords=torch.tensor([[0, 1, 1, 2, 2, 2, 2]]),
        leaf_values=torch.arange(8, dtype=F64).unsqueeze(0),
    )
    emp = torch.bincount(
        leaf_index(uniform, torch.randn(1, m, 3, generator=g, dtype=F64))[0], minlength=8
    )
    assert torch.all((emp / m - 1 / 8).abs() < 5 * math.sqrt(1 / 8 * 7 / 8 / m))
    # leaf values are N(0, 1), so E[y²] = 1 for any tree
    _, big = sample(batch=30_000, family="decision_tree", d=4, n=1, depth=4)
    assert_mean(big.y[0, :, 0] ** 2, 1.0)


# ---------------------------------------------------------------------------- input laws and shifts


def test_skewed_inputs_have_eigenvalues_proportional_to_one_over_i_and_trace_d():
    d = 4
    task, b = sample(seeds=(0, 1), batch=20_000, x_distribution="skewed", d=d, n=2)
    target = skewed_spectrum(d)
    assert target.sum().item() == pytest.approx(d)
    torch.testing.assert_close(target * torch.arange(1, d + 1), target[0].expand(d).clone())
    for e in range(2):
        torch.testing.assert_close(
            torch.linalg.eigvalsh(task.covariance[e]).flip(0), target, atol=1e-12, rtol=0
        )
        x = b.x[e].reshape(-1, d)
        emp = x.T @ x / x.shape[0]
        torch.testing.assert_close(emp, task.covariance[e], atol=0.05, rtol=0)
        assert torch.trace(emp).item() == pytest.approx(d, rel=0.02)
    assert not torch.allclose(task.covariance[0], task.covariance[1])  # one rotation per seed


def test_low_rank_inputs_span_an_r_dimensional_subspace():
    task, b = sample(seeds=(0, 1), batch=200, x_distribution="low_rank", rank=2, d=5, n=3)
    for e in range(2):
        x = torch.cat([b.x[e].reshape(-1, 5), b.x_query[e]])
        assert torch.linalg.matrix_rank(x).item() == 2
        torch.testing.assert_close(x @ task.covariance[e], x)  # inside the subspace
    assert not torch.allclose(task.covariance[0], task.covariance[1])


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (F64, 1e-12)])
def test_orthogonal_query_is_orthogonal_to_the_context_with_the_standard_norm(dtype, tol):
    d, n = 6, 3
    _, b = sample(batch=20_000, dtype=dtype, query="orthogonal", d=d, n=n)
    dots = torch.einsum("ebnd,ebd->ebn", b.x, b.x_query)
    scale = b.x.norm(dim=-1) * b.x_query.norm(dim=-1, keepdim=True)
    assert (dots.abs() / scale).max().item() < tol
    assert_mean((b.x_query**2).sum(-1), float(d))  # ‖x_q‖² keeps its χ²_d mean
    # inside a low-rank support the query stays in the subspace
    task, lr = sample(batch=50, x_distribution="low_rank", rank=4, query="orthogonal", d=d, n=2)
    torch.testing.assert_close(lr.x_query[0] @ task.covariance[0], lr.x_query[0])
    assert torch.einsum("bnd,bd->bn", lr.x[0], lr.x_query[0]).abs().max() < 1e-10


def test_context_point_query_is_one_of_the_context_inputs():
    n = 4
    _, b = sample(batch=8000, query="context_point", family="linear", d=3, n=n)
    same = (b.x == b.x_query.unsqueeze(2)).all(-1)  # (E, B, n): exact equality
    assert torch.all(same.sum(-1) == 1)
    which = same.to(torch.int64).argmax(-1)
    freq = torch.bincount(which[0], minlength=n).to(F64) / which.shape[1]
    assert torch.all((freq - 1 / n).abs() < 5 * math.sqrt(1 / n * (1 - 1 / n) / which.shape[1]))
    torch.testing.assert_close(b.y_query, b.y.gather(-1, which.unsqueeze(-1)).squeeze(-1))


@pytest.mark.parametrize("mode", ["random", "opposite"])
def test_quadrants_share_one_sign_pattern_per_prompt(mode):
    _, b = sample(batch=20_000, quadrants=mode, d=3, n=5)
    s = torch.sign(b.x)
    assert torch.all(s == s[:, :, :1])  # one pattern for every context input of a prompt
    expect = s[:, :, 0] if mode == "random" else -s[:, :, 0]
    assert torch.equal(torch.sign(b.x_query), expect)
    assert_mean((s[0, :, 0] > 0).to(F64), 0.5)  # each sign is a fair coin per prompt
    assert_mean(b.x[0, :, 0, 0] ** 2, 1.0)  # absolute values keep their N(0, 1) law


def test_active_dims_zero_the_trailing_coordinates_and_sample_overrides():
    task, b = sample(batch=50, active_dims=2, d=5, n=3)
    assert torch.all(b.x[..., 2:] == 0) and torch.all(b.x_query[..., 2:] == 0)
    assert torch.all(b.x[..., :2] != 0) and b.active_dims == 2
    torch.testing.assert_close(b.y, b.evaluate(b.x))
    c = task.sample(50, "mc", 0, n=7, active_dims=4)
    assert c.x.shape == (1, 50, 7, 5) and torch.all(c.x[..., 4:] == 0)
    assert torch.all(c.x[..., :4] != 0) and c.active_dims == 4
    full = task.sample(50, "mc", 0, active_dims=5)
    # the override changes only which coordinates are zeroed: the same draws underneath
    torch.testing.assert_close(full.x[..., :2], b.x[..., :2])
    with pytest.raises(ValueError, match=r"^active_dims: must be in \[1, d=5\], got 6$"):
        task.sample(5, "mc", active_dims=6)
    with pytest.raises(ValueError, match=r"^n: must be >= 1, got 0$"):
        task.sample(5, "mc", n=0)
    with pytest.raises(ValueError, match=r"^batch_size: must be >= 1"):
        task.sample(0, "mc")
    orth = FunctionClassTask(FunctionClassConfig(d=5, n=2, query="orthogonal"), seeds=[0])
    with pytest.raises(ValueError, match=r"^query: 'orthogonal' needs n < 2.*got n=2$"):
        orth.sample(5, "mc", active_dims=2)
    assert orth.sample(5, "mc", active_dims=3).active_dims == 3


def test_x_and_y_scales_multiply_the_same_draws():
    _, base = sample(batch=100, family="relu_network", d=3, n=4)
    _, xs = sample(batch=100, family="relu_network", d=3, n=4, x_scale=2.0)
    _, ys = sample(batch=100, family="relu_network", d=3, n=4, y_scale=3.0)
    assert torch.equal(xs.x, 2 * base.x)
    torch.testing.assert_close(xs.y, 2 * base.y)  # a ReLU network without biases is 1-homogeneous
    assert torch.equal(ys.x, base.x)
    torch.testing.assert_close(ys.y, 3 * base.y)


# ---------------------------------------------------------------------------- pools


def test_pool_has_exactly_pool_size_functions_fixed_per_seed():
    cfg = FunctionClassConfig(family="linear", d=4, n=2, pool_size=5)
    task = FunctionClassTask(cfg, seeds=[0, 1], dtype=F64)
    a, b = task.sample(2000, "train", 0), task.sample(2000, "test", 3)
    for e in range(2):
        seen_a, seen_b = a.w[e].unique(dim=0), b.w[e].unique(dim=0)
        assert seen_a.shape[0] == 5 and torch.equal(seen_a, seen_b)  # same pool everywhere
        torch.testing.assert_close(a.w[e], task.pools[e].w[a.pool_index[e]])
        counts = torch.bincount(a.pool_index[e], minlength=5).to(F64) / 2000
        assert torch.all((counts - 0.2).abs() < 5 * math.sqrt(0.2 * 0.8 / 2000))
    assert not torch.equal(a.w[0].unique(dim=0), a.w[1].unique(dim=0))  # a pool per seed
    single = FunctionClassTask(cfg, seeds=[1], dtype=torch.float32)
    torch.testing.assert_close(single.pools[0].w, task.pools[1].w.float())  # any dtype, same pool
    assert torch.equal(single.sample(2000, "train", 0).pool_index[0], a.pool_index[1])


def test_pool_of_trees_and_networks():
    for family, kw in [("decision_tree", {"depth": 2}), ("relu_network", {"width": 3})]:
        _, b = sample(batch=500, family=family, d=3, n=2, pool_size=3, **kw)
        leaves = b.params.leaf_values if family == "decision_tree" else b.params.output
        assert leaves[0].unique(dim=0).shape[0] == 3
        torch.testing.assert_close(b.y, b.evaluate(b.x))


# ---------------------------------------------------------------------------- determinism


SHIFTS = [
    {},
    {"x_distribution": "skewed"},
    {"x_distribution": "low_rank", "rank": 2},
    {"query": "orthogonal"},
    {"query": "context_point"},
    {"quadrants": "opposite"},
    {"pool_size": 3},
    {"active_dims": 2},
]


@pytest.mark.parametrize("family", list(FAMILY_KW))
@pytest.mark.parametrize("shift", SHIFTS, ids=lambda s: "-".join(map(str, s.values())) or "none")
def test_same_keys_same_batch_and_member_equals_single_seed(family, shift):
    cfg = FunctionClassConfig(family=family, d=4, n=3, **FAMILY_KW[family], **shift)
    ens = FunctionClassTask(cfg, seeds=[3, 4]).sample(16, "train", 2)
    again = FunctionClassTask(cfg, seeds=[3, 4]).sample(16, "train", 2)
    single = FunctionClassTask(cfg, seeds=[4]).sample(16, "train", 2)
    other = FunctionClassTask(cfg, seeds=[3, 4]).sample(16, "train", 3)
    for name in ("x", "y", "x_query", "y_query"):
        assert torch.equal(getattr(ens, name), getattr(again, name))
        assert torch.equal(getattr(ens, name)[1], getattr(single, name)[0])
    for k, v in ens.params._tensors().items():
        assert torch.equal(v[1], getattr(single.params, k)[0])
    assert not torch.equal(ens.x, other.x)


@settings(max_examples=30, deadline=None)
@given(
    family=st.sampled_from(list(FAMILY_KW)),
    d=st.integers(1, 6),
    n=st.integers(1, 5),
    seed=st.integers(0, 2**31),
    dtype=st.sampled_from([torch.float32, F64]),
)
def test_any_config_gives_labels_that_evaluate_reproduces(family, d, n, seed, dtype):
    kw = dict(FAMILY_KW[family])
    if family == "sparse_linear":
        kw["sparsity"] = min(2, d)
    cfg = FunctionClassConfig(family=family, d=d, n=n, **kw)
    b = FunctionClassTask(cfg, seeds=[seed], dtype=dtype).sample(8, "train")
    assert b.x.shape == (1, 8, n, d) and torch.isfinite(b.y).all()
    if family != "noisy_linear":
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        torch.testing.assert_close(b.evaluate(b.x), b.y, atol=tol, rtol=tol)
        torch.testing.assert_close(b.evaluate(b.x_query), b.y_query, atol=tol, rtol=tol)


# ---------------------------------------------------------------------------- configuration


def test_family_defaults_are_filled_and_round_trip():
    relu = FunctionClassConfig(family="relu_network")
    assert relu.width == 100 and relu.depth is None and relu.normalize is None
    assert FunctionClassConfig(family="decision_tree").depth == 4
    assert FunctionClassConfig(family="quadratic").normalize is True
    for cfg in (relu, FunctionClassConfig(family="sparse_linear", sparsity=3)):
        assert FunctionClassConfig.model_validate(cfg.model_dump()) == cfg


@pytest.mark.parametrize(
    "task, message",
    [
        ({"family": "cubic"}, "task.family: Input should be 'linear', 'sparse_linear'"),
        ({"family": "sparse_linear", "d": 3, "sparsity": 4}, "task.sparsity: must be <= d = 3"),
        ({"family": "sparse_linear"}, "task.sparsity: required by family 'sparse_linear'"),
        ({"sparsity": 2}, "task.sparsity: only used by family 'sparse_linear'"),
        ({"family": "noisy_linear"}, "task.noise_std: required by family 'noisy_linear'"),
        ({"family": "noisy_linear", "noise_std": -0.1}, "task.noise_std: Input should be greater"),
        ({"noise_std": 0.5}, "task.noise_std: only used by family 'noisy_linear'"),
        ({"family": "relu_network", "width": 0}, "task.width: Input should be greater"),
        ({"family": "quadratic", "width": 10}, "task.width: only used by family 'relu_network'"),
        ({"family": "decision_tree", "depth": 0}, "task.depth: Input should be greater"),
        ({"family": "decision_tree", "depth": 21}, "task.depth: Input should be less"),
        ({"depth": 3}, "task.depth: only used by family 'decision_tree'"),
        ({"normalize": False}, "task.normalize: only used by family 'quadratic'"),
        ({"x_distribution": "low_rank", "d": 4, "rank": 5}, "task.rank: must be <= d = 4"),
        ({"x_distribution": "low_rank"}, "task.rank: required by x_distribution 'low_rank'"),
        ({"rank": 2}, "task.rank: only used by x_distribution 'low_rank'"),
        ({"x_distribution": "uniform"}, "task.x_distribution: Input should be 'gaussian'"),
        ({"d": 4, "active_dims": 5}, "task.active_dims: must be <= d = 4"),
        ({"active_dims": 0}, "task.active_dims: Input should be greater"),
        ({"pool_size": 0}, "task.pool_size: Input should be greater"),
        ({"x_scale": float("inf")}, "task.x_scale: Input should be a finite number"),
        ({"y_scale": float("nan")}, "task.y_scale: Input should be a finite number"),
        ({"x_scale": 0.0}, "task.x_scale: Input should be greater than 0"),
        ({"query": "far"}, "task.query: Input should be 'standard'"),
        ({"quadrants": "all"}, "task.quadrants: Input should be 'none'"),
        ({"d": 4, "n": 4, "query": "orthogonal"}, "query: 'orthogonal' needs n < 4"),
        (
            {"x_distribution": "low_rank", "rank": 2, "n": 2, "query": "orthogonal"},
            "query: 'orthogonal' needs n < 2",
        ),
        ({"quadrants": "random", "query": "context_point"}, "quadrants: 'random' sets the query"),
        ({"n": 0}, "task.n: Input should be greater"),
    ],
)
def test_bad_config_fails_with_one_line_naming_the_field(task, message):
    with pytest.raises(ConfigError) as err:
        make_config({"task": {"kind": "function_class", **task}})
    text = str(err.value)
    assert message in text and "\n" not in text, text


def test_registered_and_readable_by_the_prompt_models():
    assert registry.task_kind("function_class").builder is FunctionClassTask
    models = registry.compatible_models("function_class")
    assert {"lsa", "softmax_transformer"} <= set(models)
    _, b = sample(seeds=(0, 1), batch=4, dtype=torch.float32, family="decision_tree", d=3, n=5)
    for name in ("lsa", "softmax_transformer"):
        kind = registry.model_kind(name)
        model = kind.builder(3, kind.config(), [0, 1])
        assert model.predict_prepared(model.prepare(b)).shape == (2, 4)


def test_trains_and_reloads_from_its_run_folder(tmp_path):
    from iclab.training import train
    from iclab.training.trainer import load_run

    data = {
        "task": {"kind": "function_class", "family": "relu_network", "d": 3, "n": 5, "width": 8},
        "train": {"steps": 2, "batch_size": 16, "test_size": 32, "eval_every": 1},
    }
    res = train(make_config(data), tmp_path / "run", progress=False)
    assert res.info["status"] == "completed"
    loaded = load_run(tmp_path / "run")  # the dumped config, family defaults filled, reloads
    assert loaded.config.task == res.config.task and loaded.config.task.width == 8
    assert isinstance(loaded.task, FunctionClassTask)
