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
GEMMs (``M`` times the covariates, and the weight gradients, which sum over prompts). The
batch is walked in chunks whose per-layer tensors stay in cache, written into scratch buffers
reused across layers and chunks (:class:`_Scratch`); on a GPU the whole batch is one chunk.
The forward keeps per chunk only ``r_ℓ`` and ``u_ℓh`` (``L·H·(2n+1)`` numbers per prompt);
the backward recomputes each layer's scores (they depend on the covariates only), which
costs less than storing them.

**Backward** (one prompt; ``g = [a; ḡ]`` with ``a = ∂ℒ/∂r_{ℓ+1}``, ``ḡ = ∂ℒ/∂q_L``,
``γ = c_ℓh g``):

- ``∂ℒ/∂c_ℓh = gᵀ u_ℓh``; ``∂ℒ/∂r_ℓ = a + Σ_h ∂(γᵀ u_ℓh)/∂r_ℓ``, which is ``A_ℓhᵀ γ`` for a
  head with scores and ``X_ctx M_ℓhᵀ Xᵀ γ`` for a linear head;
- ``∂ℒ/∂S_ℓh = diag(γ) D`` with ``D_mj = A_mj r_j`` (exp), ``1[S_mj > 0] r_j`` (relu),
  ``A_mj (r_j − u_m)`` (softmax), so ``∂ℒ/∂M_ℓh = Σ_prompts Xᵀ diag(γ) D X_ctx``; for a linear
  head ``Σ_prompts (Xᵀγ)(X_ctxᵀ r)ᵀ``.

No gradient with respect to the tokens: :class:`~iclab.models.KernelAttention` uses plain
autograd when the tokens require one (input sensitivities).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["CPU_CHUNK", "label_stream", "label_stream_mse"]

CPU_CHUNK = 8192
"""Prompts (all ensemble members together) per chunk on a CPU. One head's scores of a chunk,
8192 · (n+1) · n floats at n = 8, are 2.4 MB: about a core's L2 cache. Measured on the
d = 5, n = 8, L = 7 train step (2 cores): 4096 and 16384 were 10–25% slower."""


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
            X = x[:, part].permute(0, 3, 2, 1).contiguous()  # (E, d, N, C): prompts last
            fwd = _Chunk(X, r[:, part].transpose(1, 2), M, c, heads, scratch)
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean squared error per member (E,) of the predictions ``sign · q_L`` against
    ``target`` (E, B), and the overflow flag; arguments as :func:`label_stream`.

    The training objective in one pass: each chunk's backward runs right after its forward,
    seeded with ``∂loss/∂q_L = 2 sign (sign q_L − target) / B``, while its scores are still in
    cache (kept in one scratch buffer, so nothing is recomputed). The backward only scales
    the gradients so found by ``∂ℒ/∂loss`` (one number per member).
    """
    E, B = x.shape[:2]
    if chunk is None:
        chunk = max(1, CPU_CHUNK // E) if x.device.type == "cpu" else B
    keep = torch.is_grad_enabled() and (M.requires_grad or c.requires_grad)
    return _LabelStreamMSE.apply(
        x, r, q, target, M, c, tuple(heads), float(sign), max(1, chunk), keep
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
    ) -> tuple[torch.Tensor, torch.Tensor]:
        E, B = x.shape[:2]
        loss = x.new_zeros(E)
        overflow = torch.zeros((), dtype=torch.bool, device=x.device)
        grad_M, grad_c = torch.zeros_like(M), torch.zeros_like(c)
        scratch = _Scratch()
        for start in range(0, B, chunk):
            part = slice(start, min(start + chunk, B))
            X = x[:, part].permute(0, 3, 2, 1).contiguous()  # (E, d, N, C): prompts last
            fwd = _Chunk(X, r[:, part].transpose(1, 2), M, c, heads, scratch, fused=True)
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
        )


class _Scratch:
    """Scratch tensors by (name, shape, dtype, device), reused across layers and chunks of one
    forward or backward (on a CPU a fresh allocation of a chunk-sized tensor costs more than
    the arithmetic on it)."""

    def __init__(self) -> None:
        self._cache: dict[tuple, torch.Tensor] = {}

    def __call__(self, name: str, like: torch.Tensor, *shape: int) -> torch.Tensor:
        key = (name, shape, like.dtype, like.device)
        if key not in self._cache:
            self._cache[key] = like.new_empty(shape)
        return self._cache[key]


def _dot(a: torch.Tensor, b: torch.Tensor, dim: int, out: torch.Tensor) -> torch.Tensor:
    """``out = Σ_k a.select(dim, k) · b.select(dim, k)`` (equal sizes along ``dim``, the other
    axes broadcast) as multiply-adds over the contiguous last axis: much faster on a CPU than
    a reduction over a middle axis."""
    torch.mul(a.select(dim, 0), b.select(dim, 0), out=out)
    for k in range(1, a.shape[dim]):
        out.addcmul_(a.select(dim, k), b.select(dim, k))
    return out


class _Chunk:
    """Forward of one chunk (prompts last), keeping what its backward needs: the covariates,
    ``r_ℓ``, ``u_ℓh``, ``X_ctxᵀ r_ℓ`` of linear heads and, when ``fused`` (the backward runs
    before the next chunk), the scores. Otherwise the backward recomputes the scores, and
    the rest is allocated per chunk rather than taken from ``scratch``."""

    def __init__(
        self,
        X: torch.Tensor,
        r: torch.Tensor,
        M: torch.Tensor,
        c: torch.Tensor,
        heads: tuple[str, ...],
        scratch: _Scratch,
        fused: bool = False,
    ) -> None:
        E, d, N, C = X.shape
        n, L, H = N - 1, M.shape[1], len(heads)
        self.X = X

        def keep(name: str, *shape: int) -> torch.Tensor:
            return scratch(name, X, *shape) if fused else X.new_empty(shape)

        X_ctx = X[:, :, :n]  # (E, d, n, C)
        self.r = keep("r", L + 1, E, n, C)  # r_0 … r_L
        self.r[0] = r
        self.u = keep("u", L, H, E, N, C)  # u_ℓh
        self.w = keep("w", L, H, E, d, C)  # X_ctxᵀ r_ℓ (linear heads)
        self.A = scratch("A", X, L, H, E, N, n, C) if fused else None  # activated scores
        q = X.new_zeros(E, C)
        upd = scratch("upd", X, E, N, C)
        for layer in range(L):
            r = self.r[layer]
            upd.zero_()
            for h, act in enumerate(heads):
                u = self.u[layer, h]
                if act == "linear":  # S r = X M (X_ctxᵀ r)
                    w = _dot(X_ctx, r[:, None], 2, out=self.w[layer, h])
                    _dot(X, torch.bmm(M[:, layer, h], w)[:, :, None], 1, out=u)
                else:
                    out = None if self.A is None else self.A[layer, h]
                    A = _scores(X, M[:, layer, h], act, scratch, out)
                    _dot(A, r[:, None], 2, out=u)
                upd.addcmul_(c[:, layer, h].view(E, 1, 1), u)
            torch.add(r, upd[:, :n], out=self.r[layer + 1])
            q += upd[:, n]
        self.q = q  # (E, C), without the initial query slot
        # an exp output that is not finite leaves r or q non-finite for good (non-finite plus
        # anything stays so): only then look at the exp heads themselves
        self.overflow = torch.zeros((), dtype=torch.bool, device=X.device)
        if "exp" in heads and not bool(self.r[L].isfinite().all() & q.isfinite().all()):
            for h, act in enumerate(heads):
                if act == "exp":
                    self.overflow |= ~self.u[:, h].isfinite().all()

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
        X = self.X
        E, d, N, C = X.shape
        n = N - 1
        X_ctx = X[:, :, :n]
        g = scratch("g", X, E, N, C)  # ∂ℒ/∂(layer update) = [∂ℒ/∂r_{ℓ+1}; ∂ℒ/∂q_L]
        g[:, n] = grad_q
        a = scratch("a", X, E, n, C).zero_()  # ∂ℒ/∂r_ℓ, accumulated
        gamma, gX = scratch("gamma", X, E, N, C), scratch("gX", X, E, d, N, C)
        back = scratch("back", X, E, n, C)
        rx, V = scratch("rx", X, E, d, n, C), scratch("V", X, E, d, N, C)
        for layer in reversed(range(M.shape[1])):
            g[:, :n] = a
            r = self.r[layer]
            torch.mul(X_ctx, r[:, None], out=rx)  # rows r_j x_j
            for h, act in enumerate(heads):
                u = self.u[layer, h]
                grad_c[:, layer, h] += torch.mul(g, u, out=gamma).sum((1, 2))
                torch.mul(g, c[:, layer, h].view(E, 1, 1), out=gamma)  # ∂ℒ/∂u_ℓh
                torch.mul(X, gamma[:, None], out=gX)
                if act == "linear":
                    Xg = gX.sum(2)  # Xᵀγ (E, d, C)
                    grad_M[:, layer, h] += torch.bmm(Xg, self.w[layer, h].transpose(1, 2))
                    MtXg = torch.bmm(M[:, layer, h].transpose(1, 2), Xg)  # Mᵀ Xᵀ γ
                    a += _dot(X_ctx, MtXg[:, :, None], 1, out=back)
                    continue
                A = (  # (E, N, n, C), kept or recomputed
                    self.A[layer, h]
                    if self.A is not None
                    else _scores(X, M[:, layer, h], act, scratch)
                )
                a += _dot(A, gamma[:, :, None], 1, out=back)  # Aᵀγ
                # V[c, m] = Σ_j D_mj x_j[c] with D of the module docstring
                if act == "softmax":
                    D = torch.sub(r[:, None], u[:, :, None], out=scratch("D", A, *A.shape))
                    _dot(D.mul_(A)[:, None], X_ctx[:, :, None], 3, out=V)
                else:  # relu: A ≥ 0, so sign(A) = 1[S > 0]
                    D = A if act == "exp" else A.sign_()
                    _dot(D[:, None], rx[:, :, None], 3, out=V)
                grad_M[:, layer, h] += torch.bmm(
                    gX.view(E, d, N * C), V.view(E, d, N * C).transpose(1, 2)
                )


def _scores(
    X: torch.Tensor,
    M: torch.Tensor,
    act: str,
    scratch: _Scratch,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Activated scores ``A = h(X M X_ctxᵀ)`` (E, N, n, C) of one head (``M`` (E, d, d)), as
    ``Σ_a X[a] ⊙ (M X_ctx)[a]`` with prompts last, in ``out`` (default: a scratch buffer)."""
    E, d, N, C = X.shape
    n = N - 1
    Y = torch.bmm(M, X[:, :, :n].reshape(E, d, n * C), out=scratch("Y", X, E, d, n * C))
    S = scratch("S", X, E, N, n, C) if out is None else out
    _dot(X[:, :, :, None], Y.view(E, d, 1, n, C), 1, out=S)
    if act == "exp":
        return S.exp_()
    if act == "relu":
        return S.clamp_min_(0)
    return S.copy_(torch.softmax(S, dim=-2))
