"""The compiled (C) fused label-stream pass: the same loss and gradients as the torch pass,
independent of the thread count, built once per machine into a cache, and a clean fallback to
the torch pass where it cannot be built."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings

import pytest
import torch

from iclab.models import compiled_label_stream as compiled
from iclab.models.kernel_label_stream import label_stream_mse

HEADS = [("exp",), ("relu",), ("softmax",), ("linear",), ("linear", "relu", "exp", "softmax")]


def _inputs(E: int, B: int, n: int, d: int, L: int, H: int, dtype, seed: int = 0):
    """Covariates and label slots as strided views of one token tensor (as the model passes
    them), targets, and weights that need a gradient."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randn(E, B, n + 1, d + 1, generator=gen, dtype=dtype)
    target = torch.randn(E, B, generator=gen, dtype=dtype)
    M = (0.3 * torch.randn(E, L, H, d, d, generator=gen, dtype=dtype)).requires_grad_()
    c = (0.4 * torch.randn(E, L, H, generator=gen, dtype=dtype)).requires_grad_()
    return tokens[..., :d], tokens[..., :n, d], tokens[..., n, d], target, M, c


def _run(x, r, q, target, M, c, heads, sign, use_compiled):
    loss, overflow = label_stream_mse(x, r, q, target, M, c, heads, sign, compiled=use_compiled)
    weights = torch.linspace(0.5, 1.5, loss.shape[0], dtype=loss.dtype)
    grads = torch.autograd.grad((loss * weights).sum(), [M, c])
    return loss, *grads, bool(overflow)


@pytest.fixture
def built():
    if compiled.library() is None:
        pytest.skip("no C compiler: the compiled label stream cannot be built here")


@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("E, B", [(1, 7), (3, 2 * compiled.UNIT + 37)])
def test_compiled_pass_equals_torch_pass_float64(built, heads, E, B):
    """Loss and gradients (several units of prompts, a partial last block) against the
    torch pass, in float64, to rounding."""
    args = _inputs(E, B, n=6, d=4, L=3, H=len(heads), dtype=torch.float64)
    got = _run(*args, heads, -1.0, True)
    ref = _run(*args, heads, -1.0, False)
    for g, f in zip(got[:3], ref[:3]):
        assert f.abs().max() > 0
        torch.testing.assert_close(g, f, rtol=1e-11, atol=1e-13 * f.abs().max().item())
    assert got[3] is ref[3] is False


@pytest.mark.parametrize("heads", [("exp",), ("linear", "relu", "exp", "softmax")])
def test_compiled_pass_float32_is_within_rounding(built, heads):
    """float32 (the training precision): within a few float32 roundings of the float64 pass
    on the same numbers (the C pass computes exp with its own polynomial)."""
    x, r, q, target, M, c = _inputs(2, 300, n=8, d=5, L=7, H=len(heads), dtype=torch.float32)
    with torch.no_grad():  # trained-model scale: seven layers of the test's weights explode
        M.mul_(0.5)
        c.mul_(0.05)
    args = (x, r, q, target, M, c)
    got = _run(*args, heads, 1.0, True)
    wide = [t.detach().double().requires_grad_(t.requires_grad) for t in args]
    ref = _run(*wide, heads, 1.0, False)
    for g, f in zip(got[:3], ref[:3]):
        assert 0 < f.abs().max() < 1e5  # finite and not vacuous
        torch.testing.assert_close(g.double(), f, rtol=2e-5, atol=2e-6 * f.abs().max().item())


def _one_exp_prompt(s: float, k: int, dtype) -> tuple[float, float, bool]:
    """One prompt: one context token with covariate 1, query covariate s, M = 1, one layer,
    one exp head with step c = 2^-k (exact): the prediction is 2^-k·exp(s) with the C pass's
    exp. Returns |prediction − 2^-k·exp(s)| (reference: Python's float64 exp), the reference,
    and the overflow flag."""
    s = torch.tensor(s, dtype=dtype).item()  # the covariate as stored
    x = torch.tensor([[[[1.0], [s]]]], dtype=dtype)  # (E, B, N, d): context 1, query s
    want = math.ldexp(math.exp(s), -k) if s < 709 else math.inf
    target = torch.tensor([[want if math.isfinite(want) else 0.0]], dtype=dtype)
    loss, overflow = label_stream_mse(
        x, torch.ones(1, 1, 1, dtype=dtype), torch.zeros(1, 1, dtype=dtype), target,
        torch.ones(1, 1, 1, 1, 1, dtype=dtype),
        torch.full((1, 1, 1), math.ldexp(1.0, -k), dtype=dtype), ("exp",), 1.0, compiled=True,
    )  # fmt: skip
    return loss.sqrt().item(), want, bool(overflow)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exp_of_the_compiled_pass_over_its_whole_range(built, dtype):
    """The C pass computes exp with its own polynomial. Scaled by an exact power of two, it is
    within 2 ulps of the float64 reference wherever exp(s) is a normal number, up to the last
    value below overflow; within 2 of the smallest subnormals where exp(s) is subnormal; it
    overflows (and the flag says so) just past the largest finite value, and NaN raises the
    flag too."""
    info = torch.finfo(dtype)
    top, bottom = math.log(info.max), math.log(info.tiny)  # exp(s) finite / normal
    tiniest = info.smallest_normal * info.eps  # the smallest subnormal
    k_min = -math.frexp(info.max)[1] + 1  # 2^-k_min: the largest power of two below max
    normal = [bottom + 1e-4 + (top - bottom) * i / 200 for i in range(201)]
    normal[-1] = top - 1e-4 * (1 if dtype == torch.float32 else 1e-8)
    for s in normal:
        k = round(s / math.log(2))
        err, want, overflow = _one_exp_prompt(s, k, dtype)
        assert err <= 2 * info.eps * want, (s, err, want)
        assert not overflow
    for s in [bottom - 0.5, bottom - 3.0, bottom - 10.0]:  # subnormal results
        k = max(round(s / math.log(2)), k_min)
        err, want, overflow = _one_exp_prompt(s, k, dtype)
        assert err <= 2 * math.ldexp(tiniest, -k), (s, err)
    assert _one_exp_prompt(top + 0.01, 0, dtype)[2] is True
    assert _one_exp_prompt(float("nan"), 0, dtype)[2] is True


def test_compiled_pass_does_not_depend_on_the_thread_count(built):
    """Fixed units with their own float64 partial sums, added in unit order: one thread and
    two give bitwise the same loss and gradients."""
    args = _inputs(2, 3 * compiled.UNIT + 5, n=5, d=3, L=2, H=2, dtype=torch.float32)
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _run(*args, ("exp", "linear"), 1.0, True)
        torch.set_num_threads(2)
        two = _run(*args, ("exp", "linear"), 1.0, True)
    finally:
        torch.set_num_threads(saved)
    for a, b in zip(one[:3], two[:3]):
        assert torch.equal(a, b)


def test_compiled_pass_reports_exp_overflow(built):
    """An exp head whose scores overflow float32 raises the overflow flag (not a NaN loss
    passed on silently); the same weights at a tenth of the scale do not."""
    x, r, q, target, M, c = _inputs(1, 40, n=4, d=3, L=1, H=1, dtype=torch.float32)
    with torch.no_grad():
        M.copy_(30 * torch.eye(3))
    assert _run(x, r, q, target, M, c, ("exp",), 1.0, True)[3] is True
    with torch.no_grad():
        M.copy_(torch.eye(3))
    assert _run(x, r, q, target, M, c, ("exp",), 1.0, True)[3] is False


def test_library_is_built_once_into_the_cache(tmp_path, monkeypatch):
    """A fresh process state builds the library into $ICLAB_CACHE_DIR; a second one loads the
    same file without compiling again."""
    monkeypatch.setenv("ICLAB_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(compiled, "_state", {})
    if compiled.library() is None:
        pytest.skip("no C compiler: the compiled label stream cannot be built here")
    built_files = list((tmp_path / "kernels").glob("label_stream_*.so"))
    assert len(built_files) == 1
    stamp = built_files[0].stat().st_mtime_ns
    monkeypatch.setattr(compiled, "_state", {})
    assert compiled.library() is not None
    assert [p.stat().st_mtime_ns for p in (tmp_path / "kernels").glob("*.so")] == [stamp]
    assert not list((tmp_path / "kernels").glob("tmp*"))  # no half-written library left


def test_without_a_compiler_the_torch_pass_runs_after_one_warning(tmp_path, monkeypatch):
    """No working compiler: one RuntimeWarning, then label_stream_mse runs the torch pass
    (the same numbers), and asking for the compiled pass is a clear error."""
    monkeypatch.setenv("ICLAB_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setattr(compiled, "_state", {})
    args = _inputs(1, 9, n=3, d=2, L=2, H=1, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="could not be built"):
        assert compiled.library() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once only
        got = _run(*args, ("exp",), 1.0, None)
    ref = _run(*args, ("exp",), 1.0, False)
    for a, b in zip(got[:3], ref[:3]):
        assert torch.equal(a, b)
    with pytest.raises(RuntimeError, match="compiled pass cannot run: no C compiler"):
        _run(*args, ("exp",), 1.0, True)


def test_switched_off_by_environment(monkeypatch):
    monkeypatch.setenv("ICLAB_COMPILED_KERNELS", "0")
    assert compiled.library() is None
    assert not compiled.supports(torch.zeros(1))


@pytest.mark.parametrize("switch", ["1", "0"])
def test_run_json_records_which_pass_trained_the_run(tmp_path, monkeypatch, switch):
    """The two passes agree to rounding, not bit for bit: run.json says which one ran."""
    from iclab.config import make_config
    from iclab.training.trainer import train

    monkeypatch.setenv("ICLAB_COMPILED_KERNELS", switch)
    cfg = make_config(
        {
            "task": {"kind": "gaussian_process", "d": 2, "n": 4},
            "model": {"kind": "kernel_attention", "heads": ["exp"], "layers": 2},
            "train": {"steps": 3, "batch_size": 16, "test_size": 16, "eval_every": 3},
        }
    )
    train(cfg, tmp_path / "run", progress=False)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    on = switch == "1" and compiled.library() is not None
    expected = "compiled C label stream" if on else "torch label stream"
    assert info["implementation"] == {"objective": expected}


def test_a_damaged_cached_library_is_built_again(tmp_path, monkeypatch):
    """A cached library that does not load (here: overwritten with junk) is rebuilt, without a
    warning, by the next process that needs it."""
    monkeypatch.setenv("ICLAB_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(compiled, "_state", {})
    if compiled.library() is None:
        pytest.skip("no C compiler: the compiled label stream cannot be built here")
    (path,) = (tmp_path / "kernels").glob("label_stream_*.so")
    path.unlink()  # this process keeps its mapping of the old file
    path.write_bytes(b"not a shared library")
    code = (
        "import warnings; warnings.simplefilter('error');"
        "from iclab.models import compiled_label_stream as c; print(c.library() is not None)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.stdout.strip() == "True", done.stderr
    assert path.read_bytes() != b"not a shared library"


def test_a_forked_child_runs_the_compiled_pass(built):
    """A child forked after the parent used its thread pool gets a pool of its own (the
    parent's threads do not exist in the child: waiting on them would hang)."""
    import multiprocessing as mp

    args = _inputs(1, 2 * compiled.UNIT, n=4, d=3, L=2, H=1, dtype=torch.float64)
    saved = torch.get_num_threads()
    torch.set_num_threads(2)  # two units on two threads: the parent's pool is made
    try:
        want = _run(*args, ("exp",), 1.0, True)[0].item()
    finally:
        torch.set_num_threads(saved)
    ctx = mp.get_context("fork")
    with ctx.Pool(1) as pool:
        got = pool.apply_async(_child_loss, (2 * compiled.UNIT,)).get(timeout=60)
    assert got == want


def _child_loss(B: int) -> float:
    torch.set_num_threads(2)
    args = _inputs(1, B, n=4, d=3, L=2, H=1, dtype=torch.float64)
    return _run(*args, ("exp",), 1.0, True)[0].item()


def test_arguments_the_compiled_pass_cannot_take_go_to_the_torch_pass(built):
    """The C reads raw memory: a weight of another dtype, a target that only broadcasts, an
    empty batch, or an unknown activation is refused by the compiled pass with the reason,
    and by default handled by the torch pass (which raises or broadcasts as torch does)."""
    x, r, q, target, M, c = _inputs(1, 6, n=3, d=2, L=1, H=1, dtype=torch.float32)
    wide = M.detach().double().requires_grad_()
    with pytest.raises(RuntimeError, match=r"cannot run: M is torch\.float64"):
        label_stream_mse(x, r, q, target, wide, c, ("exp",), 1.0, compiled=True)
    with pytest.raises(RuntimeError):  # what the torch pass says of mixed dtypes
        label_stream_mse(x, r, q, target, wide, c, ("exp",), 1.0)
    x2, r2, q2, target2, M2, c2 = _inputs(2, 6, n=3, d=2, L=1, H=1, dtype=torch.float64)
    one_row = target2[:1]  # (1, B): broadcasts over the members in torch
    with pytest.raises(RuntimeError, match="cannot run: target of shape"):
        label_stream_mse(x2, r2, q2, one_row, M2, c2, ("exp",), 1.0, compiled=True)
    got = label_stream_mse(x2, r2, q2, one_row, M2, c2, ("exp",), 1.0)[0]
    ref = label_stream_mse(x2, r2, q2, one_row, M2, c2, ("exp",), 1.0, compiled=False)[0]
    assert torch.equal(got, ref)
    empty = [t[:, :0] for t in (x2, r2, q2, target2)]
    with pytest.raises(RuntimeError, match="cannot run: x of shape"):
        label_stream_mse(*empty, M2, c2, ("exp",), 1.0, compiled=True)
    assert compiled.rejects(x2, r2, q2, target2, M2, c2, ("tanh",)).startswith("head")
    assert compiled.rejects(x2, r2, q2, target2, M2, c2, ("exp", "exp")).startswith("M of")
    assert compiled.rejects(x2, r2, q2, target2, M2, c2, ("exp",)) is None


def test_asking_for_the_compiled_pass_with_a_chunk_still_runs_it(built, monkeypatch):
    """``compiled=True`` means the compiled pass (it has no chunks), not the torch pass; by
    default a given chunk selects the torch pass."""
    calls = []
    real = compiled.label_stream_mse
    monkeypatch.setattr(compiled, "label_stream_mse", lambda *a: calls.append(1) or real(*a))
    args = _inputs(1, 50, n=4, d=3, L=2, H=1, dtype=torch.float32)
    plain = label_stream_mse(*args, ("exp",), 1.0, compiled=True)[0]
    chunked = label_stream_mse(*args, ("exp",), 1.0, chunk=7, compiled=True)[0]
    assert len(calls) == 2 and torch.equal(plain, chunked)
    label_stream_mse(*args, ("exp",), 1.0, chunk=7)
    assert len(calls) == 2
