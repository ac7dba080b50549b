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

**Computation (exact, O(T·d²) per sequence, no T×T matrix).** ``C_t = E_t E_tᴴ = Σ_{i≤t} e_i e_iᴴ``
does not depend on the parameters, so :meth:`~CausalLinearAttention.prepare` forms it once per
data set as a cumulative sum of outer products, ``(E, m, T, 2d, 2d)`` (4d² complex numbers per
position: 800 MB in complex64 for m = 10 000, T = 100, d = 5), and every forward/backward reuses
it: ``k_t = W^{KQ} e_t``, ``u_t = C_t k_t`` (one batched 2d×2d mat-vec per position),
``ŷ_t = W^{PV} u_t / (t−1)``; the backward needs only ``C_tᴴ`` times the gradient of ``u_t``
(``C_t`` carries no gradient). Per step that is O(T·d²) time and O(T·d) extra memory per sequence.
Alternatives considered: prefix sums of ``(W^{PV} e_i) e_iᴴ`` (2d² per position) depend on the
parameters, so they must be rebuilt (outer products + cumsum under autograd) every step, which
costs more per step than a mat-vec against a fixed ``C_t``; the block form
``C_t = [[A_t, B_t], [B_tᴴ, A_{t−1}]]`` (``A_t = Σ x_i x_iᴴ``, ``B_t = Σ x_i x_{i−1}ᴴ``) halves
the memory but needs four d×d mat-vecs and measured ~1.4–2× slower on CPU; a chunked
(intra-chunk scores + chunk-boundary states) form was not faster either. :func:`naive_predict_all`
forms ``E_t E_tᴴ`` from the tokens for every t (O(T²·d²)); it is the reference in the tests.

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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel, Field
from torch import nn

from iclab.batches import SequenceBatch
from iclab.device import complex_dtype
from iclab.models.ensemble import EnsembleModel
from iclab.registry import register_model
from iclab.seeding import make_generator
from iclab.validation import STRICT_CONFIG, FiniteFloat

__all__ = [
    "CausalLinearAttention",
    "CausalLinearAttentionConfig",
    "PrefixGramState",
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


@dataclass(frozen=True)
class PrefixGramState:
    """Parameter-free state of a data set: tokens, prefix Gram matrices and the sequences."""

    e: torch.Tensor  # (E, m, T, 2d) tokens e_t = [x_t; x_{t-1}]
    C: torch.Tensor  # (E, m, T, 2d, 2d) C_t = Σ_{i≤t} e_i e_iᴴ
    x: torch.Tensor  # (E, m, T, d) the sequences (targets x_{t+1})


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
        """Per sequence: the prefix Gram sums (counted with the data) and a few 2d vectors per
        position; no T × T matrix is ever formed."""
        return 6 * tokens * 2 * d * itemsize

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

    def prepare(self, data: torch.Tensor | object) -> PrefixGramState:
        """Parameter-free state of sequences x (E, m, T, d) (or a batch with ``.x``).

        Forms ``C_t = Σ_{i≤t} e_i e_iᴴ`` once; reuse it for every step on the same data.
        """
        x = data if torch.is_tensor(data) else data.x  # type: ignore[attr-defined]
        x = self._check_x(x)
        e = tokens(x)
        C = e.unsqueeze(-1) * e.conj().unsqueeze(-2)  # (E, m, T, 2d, 2d)
        C = C.cumsum_(dim=-3) if not C.requires_grad else C.cumsum(dim=-3)
        return PrefixGramState(e=e, C=C, x=x)

    def predict_prepared(self, state: PrefixGramState) -> torch.Tensor:
        """ŷ (E, m, T, d) from :meth:`prepare`'s state; ŷ_1 = 0."""
        W_KQ, W_PV = self.projected_weights()
        k = torch.einsum("eij,emtj->emti", W_KQ, state.e)
        u = (state.C @ k.unsqueeze(-1)).squeeze(-1)
        y = torch.einsum("eij,emtj->emti", W_PV, u)
        T = state.e.shape[-2]
        return y * _inv_t_minus_1(T, y.device, y.real.dtype)

    def predict_all(self, x: torch.Tensor) -> torch.Tensor:
        """Predictions ŷ_t of x_{t+1} for all t, (E, m, T, d) complex; ŷ_1 = 0 (undefined)."""
        return self.predict_prepared(self.prepare(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict_all(x)

    def loss_prepared(self, state: PrefixGramState, batch: object = None) -> torch.Tensor:
        """(1/m) Σ_seq Σ_{t=2}^{T−1} ½‖ŷ_t − x_{t+1}‖² per member, real (E,) (the trainer's
        objective hook; ``batch`` is not needed: the targets are the sequences themselves)."""
        T = state.x.shape[-2]
        if T < 3:
            raise ValueError(f"T: the loss needs T >= 3 (t = 2..T−1), got {T}")
        y = self.predict_prepared(state)
        r = y[..., 1 : T - 1, :] - state.x[..., 2:, :]
        return 0.5 * (r.real.square() + r.imag.square()).sum(dim=(-1, -2)).mean(dim=-1)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """The paper's loss per member (E,) on sequences x (E, m, T, d)."""
        return self.loss_prepared(self.prepare(x))

    @torch.no_grad()
    def eval_metrics(self, state: PrefixGramState, batch: object) -> dict[str, list[float]]:
        """Per-seed diagnostics logged by the trainer at every evaluation: ``ab`` (real part of
        the product of the diagonal-block means), ``final_ratio`` (mean over sequences and
        coordinates with x_{T+1, j} ≠ 0 of Re(ŷ_T,j / x_{T+1, j}); theory: c*·|x_1j|²) and
        ``final_mse`` (mean ‖ŷ_T − x_{T+1}‖²) and ``off_diagonal`` (:meth:`off_diagonal_drift`)."""
        y = self.predict_prepared(state)[..., -1, :]  # ŷ_T (E, m, d)
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
