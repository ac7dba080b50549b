"""One-layer causal linear attention on linear-dynamics sequences (Zheng et al. 2024).

Tokens ``e_t = [x_t; x_{t−1}] ∈ C^{2d}`` (``x_0 = 0``), ``E_t = [e_1 … e_t]``; no softmax, no
residual. For t ≥ 2 (1-based) the prediction of ``x_{t+1}`` is

    ŷ_t = W^{PV} (E_t E_tᴴ) W^{KQ} e_t / (t − 1),   W^{KQ} ∈ C^{2d×2d},  W^{PV} ∈ C^{d×2d}.

ŷ_1 (division by 0) is undefined: :meth:`CausalLinearAttention.predict_all` returns 0 there.
The loss is ``(1/m) Σ_seq Σ_{t=2}^{T−1} ½‖ŷ_t − x_{t+1}‖²`` per member (ŷ_T, the prediction of
the unseen x_{T+1}, is returned but not in the loss).

**Block convention.** Block ``(r, c)`` (1-based) of a matrix is the d×d sub-matrix in block-row r
and block-column c, with block-column 1 acting on ``x_t`` and block-column 2 on ``x_{t−1}``:
``W^{KQ}_{21} = W_KQ[..., d:, :d]`` and ``W^{PV}_{11} = W_PV[..., :, :d]``. The diagonal
initialization ``W^{KQ}_{21} = a·I``, ``W^{PV}_{11} = b·I`` (all else 0) gives
``W^{KQ} e_t = [0; a x_t]``, ``E_t E_tᴴ [0; a x_t] = a Σ_{i≤t} e_i (x_{i−1}ᴴ x_t)`` and then
``W^{PV}`` keeps the top half: ``ŷ_t = (ab/(t−1)) Σ_{i≤t} x_i x_{i−1}ᴴ x_t
= (ab/(t−1)) Σ_{i<t} x_{i+1} x_iᴴ x_t`` — one GD step from 0 on the in-context OLS
(:func:`iclab.theory.linear_dynamics.mesa_optimizer.mesa_optimizer_prediction`), tested equal to 1e-10 in
float64.

**Computation (exact, two interchangeable forms).** ``C_t = E_t E_tᴴ = Σ_{i≤t} e_i e_iᴴ`` does not
depend on the parameters. Every loss position t = 2..T−1 gives ``ŷ_t = W^{PV} (F_t κ)`` with
``κ = vec W^{KQ}`` and data features ``F_t[p, (q, r)] = C_t[p, q] e_t[r] / (t − 1)``: the loss is a
quadratic form in the prediction, so it and its gradients follow exactly from the moments
``M = Σ_{seq,t} F̄_t ⊗ F_t`` ((2d·4d²)² = 10⁶ complex numbers for d = 5), ``H = Σ x̄_{t+1} ⊗ F_t``
and ``S = Σ‖x_{t+1}‖²`` (:mod:`iclab.models.prediction_moments`); an epoch then costs O(d⁶)
whatever m is. For d = 5 M is larger than the data for m < 2000 (T = 100), and summing it costs
≈ 2.8·10⁵ complex multiply-adds per position (one pass, complex128 GEMMs, only the products
that the symmetries of M leave distinct: :class:`~iclab.models.prediction_moments.GramTokenMoments`),
about as much as 40 streamed epochs on CPU. The restricted sets use the same identity with far smaller moments
(``diagonal_blocks``: ``F_t[p, (q, r)] = B_t[p, q] x_t[r] / (t − 1)`` with
``B_t = Σ_{i≤t} x_i x_{i−1}ᴴ``, d⁶ numbers; ``scalars``: ``F_t = B_t x_t / (t − 1)``, d²). So a
:class:`SequenceState` starts by **streaming**: chunks of sequences form their ``C_t`` (cumulative
sums of outer products, at most :data:`CHUNK_BYTES` at a time), ``k_t = W^{KQ} e_t``,
``u_t = C_t k_t``, ``ŷ_t = W^{PV} u_t / (t−1)``, and the gradients are summed in the same pass
(``C_t`` is Hermitian, so the backward is ``C_t`` times the gradient of ``u_t``); memory is the
data plus one chunk, whatever m and the number of epochs. When the trainer plans at least
:meth:`~CausalLinearAttention.moment_threshold` gradient steps on the same state (≈ the
build's cost in epochs: 40 for d = 5 and all weights, 1 for the restricted sets; see
:meth:`~CausalLinearAttention.plan`) the moments are built at its first gradient step and every
loss on it uses them (summed and contracted in complex128, then cast to the working dtype: in
float32 the two forms differ by float32 rounding only, and the choice depends on the planned
count alone, so a resumed run takes the same one). M is the smallest exact statistic in general: the loss depends
on ``W^{PV}`` through ``W^{PV}ᴴW^{PV}`` (4d² numbers) and on ``W^{KQ}`` through ``κκᴴ`` (16d⁴),
and every position adds a generic rank-one term. Both forms are tested equal to
:func:`naive_predict_all`, which forms ``E_t E_tᴴ`` from the tokens for every t (O(T²·d²)), to
1e-10 in float64, gradients included. (Storing all ``C_t``, the previous form, took 800 MB in
complex64 for m = 10 000, T = 100, d = 5 and was re-read twice per epoch.)

**Parameters** ``W_KQ`` (E, 2d, 2d) and ``W_PV`` (E, d, 2d) are complex (complex64 for float32,
complex128 for float64). PyTorch's gradient of a real loss w.r.t. a complex parameter is
``∂L/∂Re + i ∂L/∂Im``, so (S)GD/Adam on them is GD/Adam on the real and imaginary parts.
Initialization (member e from the stream ``(seeds[e], "init")``, parameters in name order):

- ``diagonal``: ``W^{KQ}_{21} = a0·I``, ``W^{PV}_{11} = b0·I``, all else 0 (no draw);
- ``gaussian``: i.i.d. circular complex Gaussian entries, real and imaginary parts
  N(0, init_std²/2) each (so E|w|² = init_std²).

**Trainable set** (``trainable``), enforced by a fixed linear projection Π applied to the raw
parameters in every forward (``W_eff = Π(W)``), so the gradient of the raw parameter is Π of the
full gradient and any optimizer step keeps the raw parameters in the subspace (entries outside get
exactly zero gradient; the initialization is projected too, so raw = effective throughout):

- ``all``: Π = identity (the paper);
- ``diagonal_blocks``: only the two d×d blocks ``W^{KQ}_{21}`` and ``W^{PV}_{11}`` (every entry
  of them) are trainable; all other entries stay 0;
- ``scalars``: only ``a·I`` and ``b·I``: Π replaces each of the two blocks by the mean of its
  diagonal times I and zeroes everything else. A GD step then moves a and b exactly as the full
  model's GD would along that subspace.

:meth:`~CausalLinearAttention.ab` reports ``a·b`` with ``a = mean diag W^{KQ}_{21}``,
``b = mean diag W^{PV}_{11}``: the prediction depends on (a, b) only through the complex product
(it is invariant under a → s·a, b → b/s), whose theory limit c* is real; ``ab()`` returns its real
part and ``ab_complex()`` the full value.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import BaseModel, Field
from torch import nn

from iclab.batches import SequenceBatch
from iclab.device import complex_dtype
from iclab.models.ensemble import EnsembleModel
from iclab.models.prediction_moments import (
    GramTokenMoments,
    PredictionMoments,
    accumulate_moments,
    empty_moments,
    mirror_moments,
    moment_loss,
)
from iclab.registry import register_model
from iclab.seeding import make_generator
from iclab.validation import STRICT_CONFIG, FiniteFloat

__all__ = [
    "CausalLinearAttention",
    "CausalLinearAttentionConfig",
    "SequenceState",
    "naive_predict_all",
    "tokens",
]


class CausalLinearAttentionConfig(BaseModel):
    """One-layer causal linear attention with complex weights (see the module docstring)."""

    model_config = STRICT_CONFIG

    kind: Literal["causal_linear_attention"] = "causal_linear_attention"
    init: Literal["diagonal", "gaussian"] = Field(
        "diagonal",
        description="'diagonal': W^KQ_21 = a0·I, W^PV_11 = b0·I, else 0; 'gaussian': i.i.d. "
        "complex N(0, init_std²) entries",
    )
    a0: FiniteFloat = Field(0.1, description="a0 of the diagonal initialization (W^KQ_21 = a0·I)")
    b0: FiniteFloat = Field(0.1, description="b0 of the diagonal initialization (W^PV_11 = b0·I)")
    init_std: FiniteFloat = Field(
        0.1, ge=0.0, description="std of the Gaussian initialization (E|w|² = init_std²)"
    )
    trainable: Literal["all", "diagonal_blocks", "scalars"] = Field(
        "all",
        description="'all' entries; 'diagonal_blocks': the d×d blocks W^KQ_21 and W^PV_11 only; "
        "'scalars': a·I and b·I only",
    )


# Largest working tensor of one chunk of sequences (prefix Gram sums, moment features), bytes.
CHUNK_BYTES = 64 * 2**20


@dataclass(eq=False)
class SequenceState:
    """Parameter-free state of a data set: the sequences and their tokens; the prediction
    moments once built (see the module docstring, "Computation")."""

    x: torch.Tensor  # (E, m, T, d) the sequences (targets x_{t+1})
    e: torch.Tensor  # (E, m, T, 2d) tokens e_t = [x_t; x_{t-1}]
    moments: PredictionMoments | None = None
    use_moments: bool = False  # set by :meth:`CausalLinearAttention.plan`


def tokens(x: torch.Tensor) -> torch.Tensor:
    """Tokens ``e_t = [x_t; x_{t−1}]`` (…, T, 2d) from x (…, T, d), with ``x_0 = 0``."""
    prev = torch.cat([torch.zeros_like(x[..., :1, :]), x[..., :-1, :]], dim=-2)
    return torch.cat([x, prev], dim=-1)


def _inv_t_minus_1(T: int, device, dtype) -> torch.Tensor:
    """(T, 1): 1/(t−1) for 1-based t ≥ 2 and 0 at t = 1 (ŷ_1 := 0)."""
    t = torch.arange(1, T + 1, device=device, dtype=dtype)
    return torch.where(t > 1, 1.0 / (t - 1).clamp_min(1), torch.zeros_like(t)).unsqueeze(-1)


def naive_predict_all(W_KQ: torch.Tensor, W_PV: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reference: forms ``E_t E_tᴴ`` from the tokens for every t (O(T²·d²) per sequence).

    ``W_KQ`` (E, 2d, 2d), ``W_PV`` (E, d, 2d), ``x`` (E, m, T, d) → ŷ (E, m, T, d), ŷ_1 = 0.
    """
    e = tokens(x.to(W_KQ.dtype))
    T = x.shape[-2]
    out = [torch.zeros_like(x[..., 0, :]).to(W_KQ.dtype)]
    for t in range(2, T + 1):  # 1-based t
        Et = e[..., :t, :]  # (E, m, t, 2d): rows e_1..e_t
        Ct = Et.mT @ Et.conj()  # Σ_i e_i e_iᴴ
        k = torch.einsum("eij,emj->emi", W_KQ, e[..., t - 1, :])
        u = (Ct @ k.unsqueeze(-1)).squeeze(-1)
        out.append(torch.einsum("eij,emj->emi", W_PV, u) / (t - 1))
    return torch.stack(out, dim=-2)


def _prefix_gram(e: torch.Tensor) -> torch.Tensor:
    """``C_t = Σ_{i≤t} e_i e_iᴴ`` (…, T, 2d, 2d) from tokens e (…, T, 2d)."""
    C = e.unsqueeze(-1) * e.conj().unsqueeze(-2)
    return C.cumsum_(dim=-3) if not C.requires_grad else C.cumsum(dim=-3)


def _chunks(m: int, per_sequence_bytes: int) -> Iterator[slice]:
    """Slices of the m sequences whose working tensors stay within :data:`CHUNK_BYTES`."""
    step = max(1, CHUNK_BYTES // max(1, per_sequence_bytes))
    for start in range(0, m, step):
        yield slice(start, min(m, start + step))


def _gram_bytes(x: torch.Tensor) -> int:
    """Bytes of the prefix Gram sums of one sequence (all members)."""
    E, _, T, d = x.shape
    return E * T * (2 * d) ** 2 * x.element_size()


def _stream_loss(
    W_KQ: torch.Tensor, W_PV: torch.Tensor, x: torch.Tensor, grads: bool
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The loss per member (E,) and, if ``grads``, its gradients (PyTorch's complex convention
    ``∂L/∂Re + i ∂L/∂Im``) w.r.t. ``W_KQ`` and ``W_PV``, chunk by chunk over the sequences, so
    that no more than one chunk's prefix Gram sums exist at a time. With ``r_t = ŷ_t − x_{t+1}``
    and ``u_t = C_t k_t``: ``∇W_PV = (1/m) Σ s_t r_t u_tᴴ``, ``g_t = C_t (s_t W_PVᴴ r_t)``
    (``C_t`` is Hermitian) and ``∇W_KQ = (1/m) Σ g_t e_tᴴ``."""
    W_KQ, W_PV = W_KQ.detach(), W_PV.detach()
    E, m, T, _ = x.shape
    s = _inv_t_minus_1(T, x.device, x.real.dtype)[1 : T - 1]
    loss = torch.zeros(E, dtype=x.real.dtype, device=x.device)
    g_kq = torch.zeros_like(W_KQ) if grads else None
    g_pv = torch.zeros_like(W_PV) if grads else None
    for sl in _chunks(m, 2 * _gram_bytes(x)):
        xc = x[:, sl]
        e = tokens(xc)
        C = _prefix_gram(e)[:, :, 1 : T - 1]
        e = e[:, :, 1 : T - 1]
        k = torch.einsum("eij,emtj->emti", W_KQ, e)
        u = (C @ k.unsqueeze(-1)).squeeze(-1)
        r = torch.einsum("eij,emtj->emti", W_PV, u) * s - xc[:, :, 2:]
        loss += 0.5 * (r.real.square() + r.imag.square()).sum((1, 2, 3))
        if grads:
            rs = r * s
            g_pv += torch.einsum("emti,emtj->eij", rs, u.conj())
            gu = torch.einsum("eji,emtj->emti", W_PV.conj(), rs)
            g = (C @ gu.unsqueeze(-1)).squeeze(-1)
            g_kq += torch.einsum("emti,emtj->eij", g, e.conj())
    if grads:
        return loss / m, g_kq / m, g_pv / m
    return loss / m, None, None


class _StreamLoss(torch.autograd.Function):
    """:func:`_stream_loss` as an autograd node: the gradients are summed in the forward pass,
    chunk by chunk, and scaled by the incoming (E,) gradient in the backward pass."""

    @staticmethod
    def forward(ctx: Any, W_KQ: torch.Tensor, W_PV: torch.Tensor, x: torch.Tensor):
        loss, g_kq, g_pv = _stream_loss(W_KQ, W_PV, x, grads=True)
        ctx.save_for_backward(g_kq, g_pv)
        return loss

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        g_kq, g_pv = ctx.saved_tensors
        w = grad[:, None, None]
        return w * g_kq, w * g_pv, None


@register_model(
    "causal_linear_attention", config=CausalLinearAttentionConfig, accepts=(SequenceBatch,)
)
class CausalLinearAttention(EnsembleModel):
    """An ensemble of ``E`` one-layer complex causal linear attention models (module docstring)."""

    def __init__(
        self,
        d: int,
        config: CausalLinearAttentionConfig,
        seeds: Sequence[int] = (0,),
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(d, config, seeds, device, dtype)
        cd = complex_dtype(dtype)
        E = len(self.seeds)
        kw = dict(device=device, dtype=cd)
        self.W_KQ = nn.Parameter(torch.zeros(E, 2 * d, 2 * d, **kw))
        self.W_PV = nn.Parameter(torch.zeros(E, d, 2 * d, **kw))
        self.reset_parameters()

    @property
    def complex_dtype(self) -> torch.dtype:
        return self.W_KQ.dtype

    # ------------------------------------------------------------------ parameters
    def _project(self, W_KQ: torch.Tensor, W_PV: torch.Tensor):
        """Π of the module docstring (a linear map; identity for trainable='all')."""
        mode, d = self.config.trainable, self.d
        if mode == "all":
            return W_KQ, W_PV
        kq = torch.zeros_like(W_KQ[..., :d, :d])
        pv = torch.zeros_like(W_PV[..., :, d:])
        a_blk, b_blk = W_KQ[..., d:, :d], W_PV[..., :, :d]
        if mode == "scalars":
            eye = torch.eye(d, device=W_KQ.device, dtype=W_KQ.dtype)
            a_blk = _diag_mean(a_blk)[..., None, None] * eye
            b_blk = _diag_mean(b_blk)[..., None, None] * eye
        top = torch.cat([kq, kq], dim=-1)
        W_KQ = torch.cat([top, torch.cat([a_blk, kq], dim=-1)], dim=-2)
        W_PV = torch.cat([b_blk, pv], dim=-1)
        return W_KQ, W_PV

    @classmethod
    def activation_bytes(
        cls, d: int, config: CausalLinearAttentionConfig, tokens: int, itemsize: int
    ) -> int:
        """Per sequence (the tokens are counted with the data): the predictions and their
        gradients (two 2d vectors per position) and the final Gram sum ``C_T`` (4d²) of the
        evaluation; prefix Gram sums exist for one chunk at a time only (:meth:`state_bytes`)."""
        return (2 * tokens * 2 * d + (2 * d) ** 2) * itemsize

    @classmethod
    def state_bytes(cls, d: int, config: CausalLinearAttentionConfig, itemsize: int) -> int:
        """Per member, independent of the number of sequences: the prediction moments (complex128)
        and the working tensors of one chunk (a few times :data:`CHUNK_BYTES`)."""
        _, p, k = _moment_shape(d, config.trainable)
        return 16 * ((p * k) ** 2 + d * p * k) + 4 * CHUNK_BYTES

    def projected_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W_KQ, W_PV)`` as used by the forward: the trainable-set projection Π of the raw ones."""
        return self._project(self.W_KQ, self.W_PV)

    def effective_weights(self) -> dict[str, torch.Tensor]:
        """``W_KQ`` (E, 2d, 2d) and ``W_PV`` (E, d, 2d) as the forward uses them, detached."""
        kq, pv = self.projected_weights()
        return {"W_KQ": kq.detach(), "W_PV": pv.detach()}

    def residual_stream(self, batch: SequenceBatch) -> list[torch.Tensor]:
        """The tokens ``e_t = [x_t; x_{t−1}]`` (E, m, T, 2d) and the one layer's output ŷ_t
        (E, m, T, d) (the layer has no residual connection)."""
        state = self.prepare(batch)
        return [state.e, self.predict_prepared(state)]

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Diagonal (a0, b0) or Gaussian initialization, then the projection Π."""
        cfg, d = self.config, self.d
        if cfg.init == "diagonal":
            self.W_KQ.zero_()
            self.W_PV.zero_()
            eye = torch.eye(d, device=self.device, dtype=self.complex_dtype)
            self.W_KQ[:, d:, :d] = cfg.a0 * eye
            self.W_PV[:, :, :d] = cfg.b0 * eye
        else:
            real = self.W_KQ.real.dtype
            params = sorted(self.named_parameters())
            for e, seed in enumerate(self.seeds):
                gen = make_generator(self.device, seed, "init")
                for _, p in params:
                    shape = (*p.shape[1:], 2)
                    z = torch.randn(shape, generator=gen, device=self.device, dtype=real)
                    p[e].copy_(torch.view_as_complex(z * (cfg.init_std / math.sqrt(2.0))))
        kq, pv = self._project(self.W_KQ.clone(), self.W_PV.clone())
        self.W_KQ.copy_(kq)
        self.W_PV.copy_(pv)

    @torch.no_grad()
    def set_weights(
        self, *, W_KQ: torch.Tensor | None = None, W_PV: torch.Tensor | None = None
    ) -> None:
        """Load weights (broadcast to (E, …)); they must lie in the trainable set.

        Nothing changes if a check fails.
        """
        new = {"W_KQ": self.W_KQ, "W_PV": self.W_PV}
        for name, t in (("W_KQ", W_KQ), ("W_PV", W_PV)):
            if t is None:
                continue
            p = new[name]
            t = torch.as_tensor(t, device=p.device).to(p.dtype)
            try:
                new[name] = t.expand_as(p).clone()
            except RuntimeError:
                raise ValueError(
                    f"{name}: expected a shape broadcastable to {tuple(p.shape)}, "
                    f"got {tuple(t.shape)}"
                ) from None
        kq, pv = self._project(new["W_KQ"], new["W_PV"])
        for name, proj in (("W_KQ", kq), ("W_PV", pv)):
            if not torch.equal(new[name], proj):
                raise ValueError(
                    f"{name}: has entries outside the trainable set "
                    f"(trainable={self.config.trainable!r})"
                )
        self.W_KQ.copy_(new["W_KQ"])
        self.W_PV.copy_(new["W_PV"])

    @torch.no_grad()
    def block_scalars(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``a = mean diag W^{KQ}_{21}``, ``b = mean diag W^{PV}_{11}``, complex (E,) each."""
        kq, pv = self.projected_weights()
        d = self.d
        return _diag_mean(kq[:, d:, :d]), _diag_mean(pv[:, :, :d])

    def ab_complex(self) -> torch.Tensor:
        """The complex product a·b per member (E,)."""
        a, b = self.block_scalars()
        return a * b

    def ab(self) -> torch.Tensor:
        """Re(a·b) per member (E,), the quantity compared with the theory limit c*."""
        return self.ab_complex().real

    @torch.no_grad()
    def off_diagonal_drift(self) -> torch.Tensor:
        """Per member (E,) float64: ``‖W − Π_s(W)‖_F / ‖Π_s(W)‖_F`` over both matrices, with
        ``Π_s`` the projection onto the mesa-optimizer's form (``W^{KQ}_{21} = a·I``,
        ``W^{PV}_{11} = b·I`` with a, b the diagonal means, all else 0). 0 at a diagonal
        initialization; NaN where ``Π_s(W) = 0``."""
        kq, pv = (w.detach().to(torch.complex128) for w in self.projected_weights())
        d = self.d
        a, b = (x.to(torch.complex128) for x in self.block_scalars())
        eye = torch.eye(d, dtype=kq.dtype, device=kq.device)
        rkq, rpv = kq.clone(), pv.clone()
        rkq[:, d:, :d] -= a[:, None, None] * eye
        rpv[:, :, :d] -= b[:, None, None] * eye
        off = rkq.abs().square().sum((-1, -2)) + rpv.abs().square().sum((-1, -2))
        on = d * (a.abs().square() + b.abs().square())
        ratio = off.sqrt() / on.sqrt()
        return ratio.where(on > 0, torch.full_like(ratio, math.nan))

    # --------------------------------------------------------------------- forward
    def _check_x(self, x: torch.Tensor) -> torch.Tensor:
        E = self.ensemble_size
        if x.ndim != 4 or x.shape[0] != E or x.shape[-1] != self.d:
            raise ValueError(f"x: expected shape (E={E}, m, T, d={self.d}), got {tuple(x.shape)}")
        return x.to(device=self.device, dtype=self.complex_dtype)

    def prepare(self, data: torch.Tensor | object) -> SequenceState:
        """Parameter-free state of sequences x (E, m, T, d) (or a batch with ``.x``); reuse it
        for every step on the same data (the moments are built on it when they pay)."""
        x = data if torch.is_tensor(data) else data.x  # type: ignore[attr-defined]
        x = self._check_x(x)
        return SequenceState(x=x, e=tokens(x))

    def predict_prepared(self, state: SequenceState) -> torch.Tensor:
        """ŷ (E, m, T, d) from :meth:`prepare`'s state; ŷ_1 = 0 (chunked prefix Gram sums)."""
        W_KQ, W_PV = self.projected_weights()
        T = state.x.shape[-2]
        scale = _inv_t_minus_1(T, state.x.device, state.x.real.dtype)
        out = []
        for sl in _chunks(state.x.shape[1], _gram_bytes(state.x)):
            e = state.e[:, sl]
            k = torch.einsum("eij,emtj->emti", W_KQ, e)
            u = (_prefix_gram(e) @ k.unsqueeze(-1)).squeeze(-1)
            out.append(torch.einsum("eij,emtj->emti", W_PV, u) * scale)
        return torch.cat(out, dim=1)

    def final_prediction(self, state: SequenceState) -> torch.Tensor:
        """ŷ_T (E, m, d), the prediction of the unseen x_{T+1}, from ``C_T = E_Tᴴ`` sums only."""
        W_KQ, W_PV = self.projected_weights()
        e = state.e
        T = e.shape[-2]
        C = e.mT @ e.conj()  # Σ_t e_t e_tᴴ (E, m, 2d, 2d)
        k = torch.einsum("eij,emj->emi", W_KQ, e[..., -1, :])
        u = (C @ k.unsqueeze(-1)).squeeze(-1)
        return torch.einsum("eij,emj->emi", W_PV, u) / max(T - 1, 1)

    def predict_all(self, x: torch.Tensor) -> torch.Tensor:
        """Predictions ŷ_t of x_{t+1} for all t, (E, m, T, d) complex; ŷ_1 = 0 (undefined)."""
        return self.predict_prepared(self.prepare(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict_all(x)

    # ------------------------------------------------------------------------ loss
    def moment_threshold(self) -> int:
        """Planned gradient steps on one state from which its moments are built (:meth:`plan`):
        about the number of streaming epochs that cost as much as the build (so the choice
        never costs more than about twice the cheaper of the two; 1 for the restricted sets,
        whose moments are small).
        Build ≈ (p·k)²/2 GEMM multiply-adds per position against ≈ 25·(2d)² slower streaming
        ones per epoch, measured on CPU (d = 5, all: ≈ 40)."""
        _, p, k = _moment_shape(self.d, self.config.trainable)
        return max(1, math.ceil((p * k) ** 2 / (250 * (2 * self.d) ** 2)))

    def plan(self, state: SequenceState, steps: int) -> None:
        """Use the moments on ``state`` (built at its first gradient step) when the trainer will
        take at least :meth:`moment_threshold` gradient steps on it; otherwise stream. Decided
        from the planned count, not from the steps taken so far, so a resumed run computes its
        losses exactly as the uninterrupted one."""
        state.use_moments = steps >= self.moment_threshold()

    @torch.no_grad()
    def build_moments(self, state: SequenceState) -> PredictionMoments:
        """Sum the prediction moments of ``state`` (once; cached on it), chunk by chunk."""
        if state.moments is None:
            x = state.x
            E, m, T, d = x.shape
            a, p, k = _moment_shape(d, self.config.trainable)
            if self.config.trainable == "all":  # F[p, (q, r)] = C_t[p, q] · s_t e_t[r]
                sums = GramTokenMoments(E, d, 2 * d, x.device)
                s = _inv_t_minus_1(T, x.device, torch.float64)[1 : T - 1]
                for sl in _chunks(m, E * T * 4 * (2 * d) ** 2 * 16):
                    xc = x[:, sl].to(torch.complex128)
                    e = tokens(xc)
                    C = _prefix_gram(e)[:, :, 1 : T - 1].flatten(1, 2)
                    e = (e[:, :, 1 : T - 1] * s).flatten(1, 2)
                    sums.add(C, e, xc[:, :, 2:].flatten(1, 2))
                state.moments = sums.finish()
            else:
                mom = empty_moments(E, a, p, k, x.device)
                per_seq = E * T * (p * k + (2 * d) ** 2) * 16 * 2
                for sl in _chunks(m, per_seq):
                    F, y = _moment_features(x[:, sl], self.config.trainable)
                    accumulate_moments(mom, F, y)
                mirror_moments(mom)
                state.moments = mom
        return state.moments

    def _moment_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(P, κ)`` of the moment form for the trainable set (module docstring)."""
        W_KQ, W_PV = self.projected_weights()
        d, mode = self.d, self.config.trainable
        if mode == "all":
            return W_PV, W_KQ.flatten(1)
        if mode == "diagonal_blocks":
            return W_PV[..., :d], W_KQ[..., d:, :d].flatten(1)
        return W_PV[..., :d], _diag_mean(W_KQ[..., d:, :d]).unsqueeze(-1)

    def loss_prepared(self, state: SequenceState, batch: object = None) -> torch.Tensor:
        """(1/m) Σ_seq Σ_{t=2}^{T−1} ½‖ŷ_t − x_{t+1}‖² per member, real (E,) (the trainer's
        objective hook; ``batch`` is not needed: the targets are the sequences themselves).

        From the moments once built (see :meth:`moment_threshold`), else streamed chunk by chunk;
        both are exact (module docstring)."""
        _, m, T, _ = state.x.shape
        if T < 3:
            raise ValueError(f"T: the loss needs T >= 3 (t = 2..T−1), got {T}")
        rd = state.x.real.dtype
        grads = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        if grads and state.use_moments:
            self.build_moments(state)
        if state.moments is not None:
            P, kappa = self._moment_weights()
            return (moment_loss(P, kappa, state.moments) / m).to(rd)
        W_KQ, W_PV = self.projected_weights()
        if grads:
            return _StreamLoss.apply(W_KQ, W_PV, state.x)
        return _stream_loss(W_KQ, W_PV, state.x, grads=False)[0]

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """The paper's loss per member (E,) on sequences x (E, m, T, d)."""
        return self.loss_prepared(self.prepare(x))

    @torch.no_grad()
    def eval_metrics(self, state: SequenceState, batch: object) -> dict[str, list[float]]:
        """Per-seed diagnostics logged by the trainer at every evaluation: ``ab`` (real part of
        the product of the diagonal-block means), ``final_ratio`` (mean over sequences and
        coordinates with x_{T+1, j} ≠ 0 of Re(ŷ_T,j / x_{T+1, j}); theory: c*·|x_1j|²) and
        ``final_mse`` (mean ‖ŷ_T − x_{T+1}‖²) and ``off_diagonal`` (:meth:`off_diagonal_drift`)."""
        y = self.final_prediction(state)  # ŷ_T (E, m, d)
        truth = batch.next_state().to(y.dtype)  # type: ignore[attr-defined]
        ok = truth.abs() > 1e-12
        ratio = torch.where(ok, (y / torch.where(ok, truth, 1)).real, 0)
        mean_ratio = ratio.sum((-1, -2)) / ok.sum((-1, -2)).clamp_min(1)
        mse = (y - truth).abs().square().sum(-1).mean(-1)
        return {
            "ab": self.ab().tolist(),
            "off_diagonal": self.off_diagonal_drift().tolist(),
            "final_ratio": mean_ratio.tolist(),
            "final_mse": mse.tolist(),
        }


def _diag_mean(block: torch.Tensor) -> torch.Tensor:
    return torch.diagonal(block, dim1=-2, dim2=-1).mean(dim=-1)


def _moment_shape(d: int, mode: str) -> tuple[int, int, int]:
    """(a, p, k) of the moment form ``ŷ = P (F κ)`` for a trainable set (module docstring)."""
    if mode == "all":
        return d, 2 * d, 4 * d * d
    if mode == "diagonal_blocks":
        return d, d, d * d
    return d, d, 1


def _moment_features(x: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Features ``F_n`` (E, n, p, k) and targets ``x_{t+1}`` (E, n, d) of the loss positions
    t = 2..T−1 of sequences x (E, m, T, d), n = m·(T − 2), in complex128."""
    x = x.to(torch.complex128)
    E, m, T, d = x.shape
    e = tokens(x)
    C = _prefix_gram(e)[:, :, 1 : T - 1]
    s = _inv_t_minus_1(T, x.device, torch.float64)[1 : T - 1, :, None]
    e = e[:, :, 1 : T - 1]
    if mode == "all":  # F[p, (q, r)] = s C[p, q] e[r] (built by GramTokenMoments instead)
        F = (s * C).unsqueeze(-1) * e[..., None, None, :]
    else:
        B = s * C[..., :d, d:]  # s_t B_t, B_t = Σ_{i≤t} x_i x_{i−1}ᴴ
        xt = e[..., :d]
        if mode == "diagonal_blocks":  # F[p, (q, r)] = s B[p, q] x_t[r]
            F = B.unsqueeze(-1) * xt[..., None, None, :]
        else:  # F[p, 0] = s (B x_t)[p]
            F = (B @ xt.unsqueeze(-1)).unsqueeze(-1)
    n = m * (T - 2)
    return F.reshape(E, n, F.shape[-3], -1), x[:, :, 2:].reshape(E, n, d)
