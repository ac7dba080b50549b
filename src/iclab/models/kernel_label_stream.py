"""The label stream of kernel attention with a hand-derived backward (Cheng, Chen & Sra 2024).

With the value x-block fixed at 0 (:mod:`iclab.models.kernel_attention`, fast path) the
covariates never move and an L-layer model is, per prompt, the recursion

    u_ℓh = A_ℓh r_ℓ,     r_{ℓ+1} = r_ℓ + Σ_h c_ℓh u_ℓh[:n],     q_{ℓ+1} = q_ℓ + Σ_h c_ℓh u_ℓh[n]

with ``X`` the (n+1)×d covariates (query last), scores ``S_ℓh = X M_ℓh X_ctxᵀ`` ((n+1)×n),
``A_ℓh`` the activation of ``S_ℓh`` without its 1/n (exp, relu; row softmax for softmax;
a linear head never forms it: ``A r = X M (X_ctxᵀ r)``) and ``c_ℓh = v_ℓh / n`` (``v_ℓh`` for
softmax). The output is ``q_L``.

**Why not autograd.** The per-prompt products are tiny ((n+1)×d times d×n); as batched matrix
products they run at well under 1 GFLOP/s on a CPU, and autograd keeps every score tensor of
the batch (fresh allocations of tens of MB, page-faulted anew on every step). Here the batch
is the *last* axis: every per-prompt contraction is a short loop of element-wise
multiply-adds over contiguous prompt vectors (:func:`_dot`); the only matrix products are real
GEMMs: ``Y = M X_ctx`` of every layer and head in one product per chunk, and the weight
gradients of every layer and head in one product per chunk (they sum over prompts). The
batch is walked in chunks whose per-layer tensors stay in cache, written into scratch buffers
reused across layers and chunks (:class:`_Scratch`, with the slices the loops use memoized:
building a view costs about a microsecond of Python and a chunk takes hundreds); the fused
objective keeps its buffers for the next call of the same shapes on a CPU (a training loop).
On a GPU the whole batch is one chunk. :func:`label_stream` keeps per chunk only ``r_ℓ`` and
``u_ℓh`` (``L·H·(2n+1)`` numbers per prompt) and its backward recomputes each layer's scores
(they depend on the covariates only); :func:`label_stream_mse` runs each chunk's backward
right after its forward and keeps the scores instead.

**Backward** (one prompt; ``g = [a; ḡ]`` with ``a = ∂ℒ/∂r_{ℓ+1}``, ``ḡ = ∂ℒ/∂q_L``,
``γ = c_ℓh g``):

- ``∂ℒ/∂c_ℓh = gᵀ u_ℓh``; ``∂ℒ/∂r_ℓ = a + Σ_h ∂(γᵀ u_ℓh)/∂r_ℓ``, which is ``A_ℓhᵀ γ`` for a
  head with scores and ``X_ctx M_ℓhᵀ Xᵀ γ`` for a linear head;
- ``∂ℒ/∂S_ℓh = diag(γ) D`` with ``D_mj = A_mj r_j`` (exp), ``1[S_mj > 0] r_j`` (relu),
  ``A_mj (r_j − u_m)`` (softmax), so ``∂ℒ/∂M_ℓh = Σ_prompts Xᵀ diag(γ) D X_ctx``; for a linear
  head ``Σ_prompts (Xᵀγ)(X_ctxᵀ r)ᵀ``.

For a head with scores both come from one contraction over the rows, with the covariates
extended by a row of ones: ``T[:, j] = Σ_m (x_m ⊕ 1) γ_m D'_mj`` (``D' = A``, ``1[S > 0]`` or
``D``, the factor ``r_j`` applied afterwards) holds ``Σ_m γ_m x_m D_mj`` in its first d rows
and, for exp, ``(Aᵀγ)_j`` in the last; ``∂ℒ/∂M_ℓh = Σ_{prompts, j} T[:d, j] x_jᵀ`` is then one
GEMM for all layers and heads at the end of the chunk.

On a CPU, :func:`label_stream_mse` runs by default the same pass compiled from C
(:mod:`iclab.models.compiled_label_stream`): per prompt, every score is formed, activated and
used while in cache, which no sequence of torch operations can do; this module's torch
pass remains for GPUs, machines without a C compiler, and as its reference in the tests.

No gradient with respect to the tokens: :class:`~iclab.models.KernelAttention` uses plain
autograd when the tokens require one (input sensitivities).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch

from iclab.models import compiled_label_stream

__all__ = ["CPU_CHUNK", "label_stream", "label_stream_mse"]

CPU_CHUNK = 4096
"""Prompts (all ensemble members together) per chunk on a CPU. The per-layer working set of a
chunk (one head's scores, 4096 · (n+1) · n floats at n = 8, 1.2 MB, and the backward's
contraction T, 0.8 MB) then stays in a core's L2 cache. Measured on the fused d = 5, n = 8,
L = 7, one exp head pass (one thread, interleaved runs, min of 15): 2048 and 4096 were equal
(72 ms), 8192 was 30% slower."""


def label_stream(
    x: torch.Tensor,
    r: torch.Tensor,
    q: torch.Tensor,
    M: torch.Tensor,
    c: torch.Tensor,
    heads: Sequence[str],
    chunk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``q_L`` (E, B) and an overflow flag (0-d bool: an exp head's output was not finite).

    ``x`` (E, B, n+1, d) covariates, query last; ``r`` (E, B, n) and ``q`` (E, B) the initial
    label slots; ``M`` (E, L, H, d, d) with scores ``s(m, j) = x_mᵀ M x_j``; ``c`` (E, L, H)
    the per-head step ``v / n`` (``v`` for softmax). ``chunk``: prompts per chunk (default: the
    whole batch on a GPU, ``CPU_CHUNK / E`` on a CPU). Differentiable in ``M`` and ``c`` only.
    """
    E, B = x.shape[:2]
    if chunk is None:
        chunk = max(1, CPU_CHUNK // E) if x.device.type == "cpu" else B
    keep = torch.is_grad_enabled() and (M.requires_grad or c.requires_grad)
    return _LabelStream.apply(x, r, q, M, c, tuple(heads), max(1, chunk), keep)


class _LabelStream(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        r: torch.Tensor,
        q: torch.Tensor,
        M: torch.Tensor,
        c: torch.Tensor,
        heads: tuple[str, ...],
        chunk: int,
        keep: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        B = x.shape[1]
        out = torch.empty_like(q)
        overflow = torch.zeros((), dtype=torch.bool, device=x.device)
        scratch = _Scratch()
        ctx.chunks = []
        for start in range(0, B, chunk):
            part = slice(start, min(start + chunk, B))
            fwd = _Chunk(x[:, part], r[:, part], M, c, heads, scratch)
            torch.add(q[:, part], fwd.q, out=out[:, part])
            overflow = overflow | fwd.overflow
            if keep:
                ctx.chunks.append((part, fwd))
        ctx.save_for_backward(M, c)
        ctx.heads = heads
        ctx.mark_non_differentiable(overflow)
        return out, overflow

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_q: torch.Tensor, _grad_overflow: Any) -> tuple[Any, ...]:
        if any(ctx.needs_input_grad[:3]):
            raise RuntimeError("label_stream: no gradient with respect to the tokens")
        if not ctx.chunks:
            raise RuntimeError("label_stream: the forward kept nothing for a backward")
        M, c = ctx.saved_tensors
        grad_M, grad_c = torch.zeros_like(M), torch.zeros_like(c)
        scratch = _Scratch()
        for part, fwd in ctx.chunks:
            fwd.backward(grad_q[:, part], M, c, ctx.heads, grad_M, grad_c, scratch)
        ctx.chunks = []
        return None, None, None, grad_M, grad_c, None, None, None


def label_stream_mse(
    x: torch.Tensor,
    r: torch.Tensor,
    q: torch.Tensor,
    target: torch.Tensor,
    M: torch.Tensor,
    c: torch.Tensor,
    heads: Sequence[str],
    sign: float,
    chunk: int | None = None,
    compiled: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean squared error per member (E,) of the predictions ``sign · q_L`` against
    ``target`` (E, B), and the overflow flag; arguments as :func:`label_stream`.

    The training objective in one pass: each chunk's backward runs right after its forward,
    seeded with ``∂loss/∂q_L = 2 sign (sign q_L − target) / B``, while its scores are still in
    cache (kept in one scratch buffer, so nothing is recomputed). The backward only scales
    the gradients so found by ``∂ℒ/∂loss`` (one number per member).

    ``compiled``: run the pass in C (:mod:`iclab.models.compiled_label_stream`; CPU, float32
    or float64). Default: where it is available and no ``chunk`` is given; ``False``: this
    module's torch pass; ``True``: the compiled pass or an error.
    """
    E, B = x.shape[:2]
    if compiled is not False:
        reason = compiled_label_stream.rejects(x, r, q, target, M, c, tuple(heads))
        if compiled and reason is not None:
            raise RuntimeError(f"label_stream_mse: the compiled pass cannot run: {reason}")
        if compiled is None:
            compiled = chunk is None and reason is None
    if chunk is None:
        chunk = max(1, CPU_CHUNK // E) if x.device.type == "cpu" else B
    keep = torch.is_grad_enabled() and (M.requires_grad or c.requires_grad)
    return _LabelStreamMSE.apply(
        x, r, q, target, M, c, tuple(heads), float(sign), max(1, chunk), keep, compiled
    )


class _LabelStreamMSE(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        r: torch.Tensor,
        q: torch.Tensor,
        target: torch.Tensor,
        M: torch.Tensor,
        c: torch.Tensor,
        heads: tuple[str, ...],
        sign: float,
        chunk: int,
        keep: bool,
        compiled: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if compiled:
            loss, grad_M, grad_c, flag = compiled_label_stream.label_stream_mse(
                x, r, q, target, M, c, heads, sign, keep
            )
            ctx.grads = (grad_M, grad_c) if keep else None
            overflow = torch.tensor(flag, device=x.device)
            ctx.mark_non_differentiable(overflow)
            return loss, overflow
        E, B = x.shape[:2]
        loss = x.new_zeros(E)
        overflow = torch.zeros((), dtype=torch.bool, device=x.device)
        grad_M, grad_c = torch.zeros_like(M), torch.zeros_like(c)
        scratch = _reusable_scratch(x, M, heads, chunk)
        for start in range(0, B, chunk):
            part = slice(start, min(start + chunk, B))
            fwd = _Chunk(x[:, part], r[:, part], M, c, heads, scratch, fused=True)
            resid = (fwd.q + q[:, part]).mul_(sign).sub_(target[:, part])  # (E, C)
            loss += resid.square().sum(-1)
            overflow = overflow | fwd.overflow
            if keep:
                fwd.backward(resid.mul_(2 * sign / B), M, c, heads, grad_M, grad_c, scratch)
        ctx.grads = (grad_M, grad_c) if keep else None
        ctx.mark_non_differentiable(overflow)
        return loss.div_(B), overflow

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_loss: torch.Tensor, _grad_overflow: Any) -> tuple[Any, ...]:
        if any(ctx.needs_input_grad[:4]):
            raise RuntimeError("label_stream_mse: no gradient with respect to tokens or targets")
        if ctx.grads is None:
            raise RuntimeError("label_stream_mse: the forward kept nothing for a backward")
        grad_M, grad_c = ctx.grads
        ctx.grads = None
        E = grad_loss.shape[0]
        return (
            None,
            None,
            None,
            None,
            grad_M * grad_loss.view(E, 1, 1, 1, 1),
            grad_c * grad_loss.view(E, 1, 1),
            None,
            None,
            None,
            None,
            None,
        )


class _Scratch:
    """Scratch tensors by (name, shape, dtype, device), reused across layers and chunks of one
    pass (on a CPU a fresh allocation of a chunk-sized tensor costs more than the arithmetic
    on it), and lists of views of them, memoized (building a view costs about a microsecond
    of Python, and a chunk takes hundreds)."""

    def __init__(self) -> None:
        self._cache: dict[tuple, torch.Tensor] = {}
        self._views: dict[tuple, Any] = {}

    def __call__(
        self, name: str, like: torch.Tensor, *shape: int, fill: float | None = None
    ) -> torch.Tensor:
        """The buffer ``name`` of this shape; ``fill``: its value when first made."""
        key = (name, shape, like.dtype, like.device)
        if key not in self._cache:
            buf = like.new_empty(shape)
            self._cache[key] = buf if fill is None else buf.fill_(fill)
        return self._cache[key]

    def views(self, key: Any, tensor: torch.Tensor, make: Callable[[torch.Tensor], Any]) -> Any:
        """``make(tensor)``, memoized by ``key`` and the tensor's address, shape and strides
        (the memo holds the views, so the address cannot be reused by another tensor)."""
        full = (key, tensor.data_ptr(), tuple(tensor.shape), tensor.stride())
        if full not in self._views:
            self._views[full] = make(tensor)
        return self._views[full]


_REUSE = threading.local()


def _reusable_scratch(
    x: torch.Tensor, M: torch.Tensor, heads: tuple[str, ...], chunk: int
) -> _Scratch:
    """The fused pass's scratch: on a CPU, the one of this thread's previous call when that
    call had the same shapes (a training loop: every step), so that its buffers — tens of MB,
    page-faulted anew when freshly allocated — and memoized views are reused; one is kept per
    thread. Elsewhere (a GPU's caching allocator has no such cost), a fresh one."""
    if x.device.type != "cpu":
        return _Scratch()
    key = (tuple(x.shape), tuple(M.shape), heads, chunk, x.dtype)
    if getattr(_REUSE, "key", None) != key:
        _REUSE.key, _REUSE.scratch = key, _Scratch()
    return _REUSE.scratch


def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor], out: torch.Tensor) -> torch.Tensor:
    """``out = Σ_k a[k] · b[k]`` (slices along the contracted axis, broadcasting) as
    multiply-adds over the contiguous last axis: on a CPU much faster than a reduction over a
    middle axis or a batched product of tiny matrices."""
    torch.mul(a[0], b[0], out=out)
    for ak, bk in zip(a[1:], b[1:]):
        out.addcmul_(ak, bk)
    return out


def _slices(t: torch.Tensor, dim: int, *shape: int) -> list[torch.Tensor]:
    """``[t.select(dim, k) for k]``, each viewed as ``shape`` if given."""
    parts = t.unbind(dim)
    return list(parts) if not shape else [p.view(shape) for p in parts]


def _score_views(S: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Columns ``S_·j`` (E, N, C) and rows ``S_m·`` (E, 1, n, C) of a score block (E, N, n, C)."""
    E, _, n, C = S.shape
    return _slices(S, 2), _slices(S, 1, E, 1, n, C)


def _steps(c: torch.Tensor, scratch: _Scratch) -> list[list[torch.Tensor]]:
    """``c[:, ℓ, h]`` viewed as (E, 1, 1), per layer and head (memoized for the pass)."""
    E, L, H = c.shape
    return scratch.views(
        "c", c, lambda c: [list(c.view(E, L, H, 1, 1)[:, k].unbind(1)) for k in range(L)]
    )


class _Chunk:
    """One chunk of prompts, prompts last: the forward recursion, and a backward that adds
    the chunk's ∂ℒ/∂M and ∂ℒ/∂c.

    Kept for the backward (layer ℓ, head h): ``r_ℓ`` (``R``), ``u_ℓh`` (``U``), for linear
    heads ``w_ℓh = X_ctxᵀ r_ℓ`` (``W``) and, with ``fused`` (the backward runs before the next
    chunk), the activated scores (``A``); then everything lives in ``scratch``. Otherwise the
    backward recomputes the scores and the rest is allocated per chunk.

    The covariates are kept as ``Xe`` (E, d+1, N, C), with a last row of ones, so that the
    backward's one contraction over the rows, ``T_ℓh[:, j] = Σ_m (x_m ⊕ 1) γ_m D_mj``, gives
    both ``Σ_m γ_m x_m D_mj`` (for ∂ℒ/∂M) and, in its last row, ``Aᵀγ`` (exp heads, where
    ``D = A``). ``T ⊙ r`` of every layer and head then meets ``X_ctx`` in one GEMM at the end.
    """

    def __init__(
        self,
        x: torch.Tensor,
        r: torch.Tensor,
        M: torch.Tensor,
        c: torch.Tensor,
        heads: tuple[str, ...],
        scratch: _Scratch,
        fused: bool = False,
    ) -> None:
        E, C, N, d = x.shape  # x (E, C, N, d) and r (E, C, n), prompts not yet last
        n, L, H = N - 1, M.shape[1], len(heads)
        self.shape = (E, d, N, C)
        self.fused = fused
        self.score = [h for h, act in enumerate(heads) if act != "linear"]

        def keep(name: str, *shape: int, fill: float | None = None) -> torch.Tensor:
            if fused:
                return scratch(name, x, *shape, fill=fill)
            return x.new_empty(shape) if fill is None else x.new_full(shape, fill)

        self.Xe = keep("Xe", E, d + 1, N, C, fill=1.0)
        self.Xe[:, :d].copy_(x.permute(0, 3, 2, 1))
        self.R = keep("R", E, L + 1, n, C)  # r_0 … r_L
        self.R[:, 0].copy_(r.transpose(1, 2))
        self.U = keep("U", E, L, H, N, C)  # u_ℓh
        self.W = keep("W", E, L, H, d, C) if len(self.score) < H else None
        self.A = None
        if fused and self.score:
            self.A = scratch("A", x, L, len(self.score), E, N, n, C)
        v = self._views(scratch)
        Y = self._keys(M, scratch)
        steps = _steps(c, scratch)
        self.q = q = keep("q", E, C).zero_()
        for layer, lv in enumerate(v["layers"]):
            r_j = lv["r_j"]
            for h, act in enumerate(heads):
                u = lv["u"][h]
                if act == "linear":  # S r = X M (X_ctxᵀ r): never form the scores
                    w = _dot(v["x_j"], r_j, out=lv["w"][h])
                    z = torch.bmm(M[:, layer, h], w, out=scratch("z", x, E, d, C))
                    _dot(v["x_a"], _slices(z, 1, E, 1, C), out=u)
                else:
                    _, A_j, _ = self._scores(Y, layer, self.score.index(h), act, v, scratch)
                    _dot(A_j, r_j, out=u)
            if H == 1:  # r_{ℓ+1} = r_ℓ + c u[:n], q += c u[n]
                step = steps[layer][0]
                torch.addcmul(lv["r"], step, lv["u_ctx"], out=lv["r_next"])
                q.addcmul_(step[:, 0], lv["u_q"])
            else:
                cu = scratch("cu", x, E, H, N, C)
                upd = torch.mul(self.U[:, layer], c[:, layer].view(E, H, 1, 1), out=cu).sum(1)
                torch.add(lv["r"], upd[:, :n], out=lv["r_next"])
                q += upd[:, n]
        # an exp output that is not finite leaves r or q non-finite for good (non-finite plus
        # anything stays so): only then look at the exp heads themselves
        self.overflow = torch.zeros((), dtype=torch.bool, device=x.device)
        if "exp" in heads and not bool(self.R[:, L].isfinite().all() & q.isfinite().all()):
            for h, act in enumerate(heads):
                if act == "exp":
                    self.overflow |= ~self.U[:, :, h].isfinite().all()

    def _views(self, scratch: _Scratch) -> dict[str, Any]:
        """Slices of the covariates and label slots used by the loops (memoized when fused:
        the buffers are then the same for every chunk of a size)."""
        E, d, N, C = self.shape
        n = N - 1

        def make(Xe: torch.Tensor) -> dict[str, Any]:
            X = Xe[:, :d]
            layers = []
            for layer in range(self.U.shape[1]):
                u = self.U[:, layer]
                layers.append(
                    {
                        "r": self.R[:, layer],
                        "r_next": self.R[:, layer + 1],
                        "r_j": _slices(self.R[:, layer], 1, E, 1, C),  # r_j (E, 1, C)
                        "r_col": self.R[:, layer, None],  # (E, 1, n, C)
                        "u": list(u.unbind(1)),  # u_ℓh (E, N, C)
                        "u_ctx": u[:, 0, :n],
                        "u_q": u[:, 0, n],
                        "w": None if self.W is None else list(self.W[:, layer].unbind(1)),
                    }
                )
            return {
                "x_a": _slices(X, 1),  # x[a] (E, N, C)
                "xs_a": _slices(X, 1, E, N, 1, C),  # x[a] as the rows of a score block
                "x_m": _slices(X, 2),  # x_m (E, d, C)
                "x_j": _slices(X[:, :, :n], 2),  # x_j (E, d, C), context
                "xctx_b": _slices(X[:, :, :n], 1, E, 1, n, C),  # x_j[b] (E, 1, n, C)
                "layers": layers,
            }

        return scratch.views("chunk", self.Xe, make) if self.fused else make(self.Xe)

    def _keys(self, M: torch.Tensor, scratch: _Scratch) -> torch.Tensor | None:
        """``Y = M X_ctx`` (E, L, Hs, d, n, C) of every score head and layer: one GEMM."""
        if not self.score:
            return None
        E, d, N, C = self.shape
        n, L, Hs = N - 1, M.shape[1], len(self.score)
        Ms = M if Hs == M.shape[2] else M[:, :, self.score]
        Y = scratch("Y", self.Xe, E, L * Hs * d, n * C)
        torch.bmm(Ms.reshape(E, L * Hs * d, d), self.Xe[:, :d, :n].reshape(E, d, n * C), out=Y)
        return Y.view(E, L, Hs, d, n, C)

    def _scores(
        self, Y: torch.Tensor, layer: int, s: int, act: str, v: dict, scratch: _Scratch
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Activated scores ``A = h(X M X_ctxᵀ)`` (E, N, n, C) of score head ``s`` at
        ``layer``, as ``Σ_a x[a] ⊗ (M X_ctx)[a]`` (into ``self.A`` when fused, else a scratch
        buffer), with its columns ``A_·j`` (E, N, C) and rows ``A_m·`` (E, 1, n, C)."""
        E, _, N, C = self.shape
        n = N - 1
        S = scratch("S", self.Xe, E, N, n, C) if self.A is None else self.A[layer, s]
        S_j, S_m = scratch.views("A", S, _score_views)
        Y_a = scratch.views(("Y", layer, s), Y, lambda Y: _slices(Y[:, layer, s], 1, E, 1, n, C))
        _dot(v["xs_a"], Y_a, out=S)
        if act == "exp":
            S.exp_()
        elif act == "relu":
            S.clamp_min_(0)
        else:
            S.copy_(torch.softmax(S, dim=-2))
        return S, S_j, S_m

    def backward(
        self,
        grad_q: torch.Tensor,
        M: torch.Tensor,
        c: torch.Tensor,
        heads: tuple[str, ...],
        grad_M: torch.Tensor,
        grad_c: torch.Tensor,
        scratch: _Scratch,
    ) -> None:
        """Add this chunk's ∂ℒ/∂M and ∂ℒ/∂c, given ∂ℒ/∂q_L (E, C), into grad_M, grad_c."""
        E, d, N, C = self.shape
        n, L, H, Hs = N - 1, M.shape[1], len(heads), len(self.score)
        Xe = self.Xe
        v = self._views(scratch)
        Y = self._keys(M, scratch) if self.A is None else None  # recompute the scores
        # G[:, ℓ] = ∂ℒ/∂(update of layer ℓ) = [∂ℒ/∂r_{ℓ+1}; ∂ℒ/∂q_L], with ∂ℒ/∂r_L = 0
        G = scratch("G", Xe, E, L, N, C)
        G[:, :, n] = grad_q[:, None]
        G[:, L - 1, :n] = 0
        T = scratch("T", Xe, E, L, Hs, d + 1, n, C) if Hs else None
        gamma = scratch("gamma", Xe, E, N, C)  # γ = c_ℓh g_ℓ = ∂ℒ/∂u_ℓh
        gamma_m = scratch.views("gamma", gamma, lambda t: _slices(t, 1, E, 1, 1, C))
        gX = scratch("gX", Xe, E, d + 1, N, C)  # (x_m ⊕ 1) γ_m
        gX_m = scratch.views("gX", gX, lambda t: _slices(t, 2, E, d + 1, 1, C))
        steps = _steps(c, scratch)

        def make(G: torch.Tensor) -> list[dict[str, Any]]:
            return [
                {
                    "g": G[:, layer],
                    "g_ctx": G[:, layer, :n],
                    "a": G[:, layer - 1, :n] if layer else None,  # ∂ℒ/∂r_ℓ, accumulated
                    "T": None if T is None else list(T[:, layer].unbind(1)),  # (E, d+1, n, C)
                    "T_d": None if T is None else list(T[:, layer, :, d].unbind(1)),
                    "T_x": None if T is None else list(T[:, layer, :, :d].unbind(1)),
                }
                for layer in range(L)
            ]

        bv = scratch.views("backward", G, make)
        for layer in reversed(range(L)):
            lv, lb = v["layers"][layer], bv[layer]
            a = lb["a"]
            if a is not None:
                a.copy_(lb["g_ctx"])
            for h, act in enumerate(heads):
                torch.mul(lb["g"], steps[layer][h], out=gamma)
                if act == "linear":  # ∂ℒ/∂M = (Xᵀγ) wᵀ, ∂ℒ/∂r_j = x_jᵀ Mᵀ Xᵀγ
                    Xg = _dot(v["x_m"], _slices(gamma, 1, E, 1, C), out=scratch("Xg", Xe, E, d, C))
                    grad_M[:, layer, h] += torch.bmm(Xg, lv["w"][h].transpose(1, 2))
                    if a is not None:
                        MtXg = torch.bmm(M[:, layer, h].transpose(1, 2), Xg)
                        back = scratch("back", Xe, E, 1, n, C)
                        a += _dot(v["xctx_b"], _slices(MtXg, 1, E, 1, 1, C), out=back)[:, 0]
                    continue
                s = self.score.index(h)
                if self.A is None:
                    A, _, A_m = self._scores(Y, layer, s, act, v, scratch)
                else:
                    A = self.A[layer, s]
                    A_m = scratch.views("A", A, _score_views)[1]
                torch.mul(Xe, gamma[:, None], out=gX)
                Th = lb["T"][s]
                if act == "exp":  # D_mj = A_mj r_j: T's last row is Aᵀγ
                    _dot(gX_m, A_m, out=Th)
                    if a is not None:
                        a += lb["T_d"][s]
                    lb["T_x"][s].mul_(lv["r_col"])
                    continue
                if a is not None:  # Aᵀγ
                    back = scratch("back", Xe, E, 1, n, C)
                    a += _dot(gamma_m, A_m, out=back)[:, 0]
                D = scratch("D", Xe, E, N, n, C)
                if act == "relu":  # D_mj = 1[S_mj > 0] r_j; A ≥ 0, so 1[S > 0] = sign(A)
                    _dot(gX_m, _slices(torch.sign(A, out=D), 1, E, 1, n, C), out=Th)
                    lb["T_x"][s].mul_(lv["r_col"])
                else:  # softmax: D_mj = A_mj (r_j − u_m)
                    torch.sub(lv["r_col"], lv["u"][h][:, :, None], out=D).mul_(A)
                    _dot(gX_m, _slices(D, 1, E, 1, n, C), out=Th)
        # ∂ℒ/∂c_ℓh = Σ g_ℓ · u_ℓh
        gu = torch.mul(self.U, G[:, :, None], out=scratch("gu", Xe, E, L, H, N, C))
        grad_c += gu.sum((-1, -2))
        if Hs:  # ∂ℒ/∂M_ℓh = Σ_{j, prompts} (T_ℓh ⊙ r_ℓ)[:d, j] x_jᵀ, all ℓ, h in one GEMM
            gM = torch.bmm(
                T.view(E, L * Hs * (d + 1), n * C),
                Xe[:, :d, :n].reshape(E, d, n * C).transpose(1, 2),
            ).view(E, L, Hs, d + 1, d)[:, :, :, :d]
            if Hs == H:
                grad_M += gM
            else:
                grad_M[:, :, self.score] += gM
