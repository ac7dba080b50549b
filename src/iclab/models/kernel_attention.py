"""Non-linear ("kernel") attention (Cheng, Chen & Sra 2024).

Tokens are rows ``z = [x; y]`` (as in :mod:`iclab.models.lsa`): ``(E, B, n+1, d+1)``, the query
last with label slot 0. One layer updates *every* token (the query included); only the n context
tokens are keys and values:

    z_m ← z_m + Σ_h Σ_{j≤n} a_h(m, j) · P_h z_j,      P_h = [[B_h, 0], [0, v_h]]

with scores ``s_h(m, j) = ⟨Q_h x_j, K_h x_m⟩`` (``Q_h``, ``K_h`` act on the x part only) and

- ``a_h(m, j) = h(s_h(m, j)) / n`` for activations ``linear`` (h(s) = s), ``relu`` (max(s, 0))
  and ``exp`` (exp(s));
- ``a_h(m, j) = softmax_j s_h(m, j)`` for ``softmax`` (normalized over the n keys, no 1/n).

In row form the x part moves by ``Σ_j a(m, j) B_h x_j`` and the label slot by
``Σ_j a(m, j) v_h y_j``. The prediction is ``sign · Z_L[query, label]`` with ``sign = −1`` for
``readout='negative'`` (Ahn et al.'s convention: the query slot holds minus the prediction, the
context slots hold residuals) and ``+1`` for ``'positive'``. Heads add.

**Fast path.** With ``train_value_block=False`` (B = 0) the covariates never move, so a layer only
changes the label slots: ``r ← r + Σ_h v_h n_h⁻¹ h(S_h) r`` on the context slots (and the same row
for the query), with ``S_h = X M_h X_ctxᵀ``, ``M_h = K_hᵀ Q_h`` and ``n_h = n`` (1 for softmax).
:meth:`KernelAttention.predict_tokens` evaluates exactly this: per layer and head one GEMM for
``X M_h``, one batched product for the (n+1)×n scores, the activation, and a mat-vec with the
label slots — no token matrix, no x-updates. A ``linear`` head never forms its scores:
``S r = X M (X_ctxᵀ r)`` costs O(n·d) instead of O(n²·d). :meth:`forward_tokens` keeps the
token-level layer loop (every residual stream, and the only path when B is trained); the two
agree to round-off (tested in float64). The label stream runs in
:mod:`iclab.models.kernel_label_stream`: prompts on the last axis, chunked, with a hand-derived
backward; :meth:`KernelAttention.loss_prepared` (the trainer's objective) computes the MSE and
its gradient in the same chunked pass — on a CPU by default the same pass compiled from C
(:mod:`iclab.models.compiled_label_stream`, about 4× faster; ``run.json`` records which ran).
``_label_stream_autograd`` is the same recursion in plain autograd, used when the tokens need
a gradient (input sensitivities).

Overflow: ``exp`` is evaluated in the working dtype with no rescaling; if any ``exp`` weight is
non-finite the forward raises ``FloatingPointError`` naming the largest logit (rescaling the
logits would change the function the model computes). ``softmax`` subtracts the per-row max
logit, which is exact.

Parameters carry leading dims ``(E, L, H, …)``: ``B`` (value x-block, d×d; a zero buffer when
``train_value_block=False``), ``v`` (label weight), ``Q``, ``K`` (d×d). Member ``e`` is
initialized from ``make_generator(device, seeds[e], "init")`` with N(0, init_std²) entries in the
sorted order of parameter names, as in :class:`~iclab.models.LinearSelfAttention`. A layer costs
O(n²·d) per prompt (the activation prevents the Gram-matrix shortcut of LSA).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import BaseModel, Field
from torch import nn

from iclab.batches import PromptBatch
from iclab.models import compiled_label_stream
from iclab.models.ensemble import TokenRowModel, init_ensemble_
from iclab.models.kernel_label_stream import label_stream, label_stream_mse
from iclab.registry import register_model
from iclab.validation import STRICT_CONFIG

__all__ = ["Activation", "KernelAttention", "KernelAttentionConfig"]

Activation = Literal["linear", "relu", "exp", "softmax"]
Readout = Literal["negative", "positive"]


class KernelAttentionConfig(BaseModel):
    """Non-linear attention model: one activation per head."""

    model_config = STRICT_CONFIG

    kind: Literal["kernel_attention"] = "kernel_attention"
    layers: int = Field(3, ge=1, description="number of attention layers L")
    heads: list[Activation] = Field(
        default_factory=lambda: ["exp"],
        min_length=1,
        description="activation of each head, e.g. ['exp', 'linear']; heads add",
    )
    readout: Readout = Field("negative", description="'negative' (Ahn) or 'positive' (Ding)")
    init_std: float = Field(1e-2, ge=0.0, description="std of the N(0, init_std²) initialization")
    train_value_block: bool = Field(
        False, description="train the x-block B of the value matrix (False: B = 0)"
    )


def _activate(activation: str, s: torch.Tensor, n: int) -> torch.Tensor:
    """Attention weights (…, m, n) from scores (…, m, n) for one head."""
    if activation == "softmax":
        return torch.softmax(s, dim=-1)
    w = _unnormalized(activation, s)
    if activation == "exp" and not torch.isfinite(w).all():
        raise _overflow_error(s)
    return w / n


def _unnormalized(activation: str, s: torch.Tensor) -> torch.Tensor:
    """``h(s)`` without the 1/n (and the softmax normalization) of :func:`_activate`."""
    if activation == "linear":
        return s
    if activation == "relu":
        return s.clamp_min(0)
    if activation == "exp":
        return torch.exp(s)
    return torch.softmax(s, dim=-1)


def _overflow_error(s: torch.Tensor) -> FloatingPointError:
    big = s.detach().abs().max().item() if s.numel() else float("nan")
    return FloatingPointError(
        f"kernel attention: exp of a logit overflowed in {s.dtype} (largest |logit| "
        f"{big:.4g}); use a wider dtype or smaller Q, K"
    )


@register_model("kernel_attention", config=KernelAttentionConfig, accepts=(PromptBatch,))
class KernelAttention(TokenRowModel):
    """An ensemble of ``E`` L-layer non-linear attention models; see the module docstring."""

    def __init__(
        self,
        d: int,
        config: KernelAttentionConfig,
        seeds: Sequence[int] = (0,),
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(d, config, seeds, device, dtype)
        self.sign = -1.0 if config.readout == "negative" else 1.0
        E, L, H = len(seeds), config.layers, len(config.heads)
        kw = dict(device=device, dtype=dtype)
        self.Q = nn.Parameter(torch.zeros(E, L, H, d, d, **kw))
        self.K = nn.Parameter(torch.zeros(E, L, H, d, d, **kw))
        self.v = nn.Parameter(torch.zeros(E, L, H, **kw))
        if config.train_value_block:
            self.B = nn.Parameter(torch.zeros(E, L, H, d, d, **kw))
        else:
            self.register_buffer("B", torch.zeros(E, L, H, d, d, **kw))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Member e's parameters are N(0, init_std²) draws from the stream (seeds[e], 'init')."""
        init_ensemble_(self, self.seeds, self.config.init_std)

    @torch.no_grad()
    def set_weights(
        self,
        *,
        B: torch.Tensor | None = None,
        v: torch.Tensor | None = None,
        Q: torch.Tensor | None = None,
        K: torch.Tensor | None = None,
    ) -> None:
        """Load parameters (broadcast to (E, L, H, …)); ``None`` leaves a parameter unchanged.

        A non-zero ``B`` needs ``train_value_block=True``.
        """
        if B is not None:
            B = torch.as_tensor(B, dtype=self.B.dtype, device=self.device)
            if not self.config.train_value_block and bool((B != 0).any()):
                raise ValueError("B: the value block is fixed at 0 (train_value_block=False)")
            self.B.copy_(B.expand_as(self.B))
        for name, t in (("v", v), ("Q", Q), ("K", K)):
            if t is not None:
                p = getattr(self, name)
                t = torch.as_tensor(t, dtype=p.dtype, device=p.device)
                try:
                    p.copy_(t.expand_as(p))
                except RuntimeError:
                    raise ValueError(
                        f"{name}: expected a shape broadcastable to {tuple(p.shape)}, "
                        f"got {tuple(t.shape)}"
                    ) from None

    def effective_weights(self) -> dict[str, torch.Tensor]:
        """``Q``, ``K`` (E, L, H, d, d), the value scalars ``v`` (E, L, H) and the value block
        ``B`` (E, L, H, d, d; 0 unless trained), detached."""
        return {
            "Q": self.Q.detach(),
            "K": self.K.detach(),
            "v": self.v.detach(),
            "B": self.B.detach(),
        }

    def residual_stream(self, batch: PromptBatch) -> list[torch.Tensor]:
        """``[Z_0, …, Z_L]`` of a prompt batch (:meth:`forward_tokens`)."""
        return self.forward_tokens(batch.tokens())

    # ----------------------------------------------------------------------------- forward
    def forward_tokens(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """Residual stream of every layer: ``[Z_0, …, Z_L]``, each (E, B, n+1, d+1)."""
        d = self.d
        n = tokens.shape[-2] - 1
        if tokens.shape[-1] != d + 1 or n < 1:
            raise ValueError(
                f"tokens: expected shape (E, B, n+1, {d + 1}) with n >= 1, got {tuple(tokens.shape)}"
            )
        Z = tokens
        out = [Z]
        for layer in range(self.config.layers):
            x_all, x_ctx, y_ctx = Z[..., :d], Z[..., :n, :d], Z[..., :n, d]
            upd_x = torch.zeros_like(x_all)
            upd_y = torch.zeros_like(Z[..., d])
            for h, act in enumerate(self.config.heads):
                Qh = self.Q[:, layer, h].unsqueeze(1)  # (E, 1, d, d)
                Kh = self.K[:, layer, h].unsqueeze(1)
                keys = x_ctx @ Qh.transpose(-1, -2)  # rows Q x_j: (E, B, n, d)
                queries = x_all @ Kh.transpose(-1, -2)  # rows K x_m: (E, B, n+1, d)
                a = _activate(act, queries @ keys.transpose(-1, -2), n)  # (E, B, n+1, n)
                v = self.v[:, layer, h, None, None]  # (E, 1, 1)
                upd_y = upd_y + v * (a @ y_ctx.unsqueeze(-1)).squeeze(-1)
                if self.config.train_value_block:  # otherwise B = 0 (set_weights enforces it)
                    Bh = self.B[:, layer, h].unsqueeze(1)
                    upd_x = upd_x + a @ (x_ctx @ Bh.transpose(-1, -2))
            Z = Z + torch.cat([upd_x, upd_y.unsqueeze(-1)], dim=-1)
            out.append(Z)
        return out

    def predict_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Predictions (E, B): ``sign · Z_L[..., query, label]``."""
        if self.config.train_value_block:
            return self.sign * self.forward_tokens(tokens)[-1][..., -1, self.d]
        return self.sign * self._label_stream(tokens)

    def loss_prepared(self, state: torch.Tensor, batch: PromptBatch) -> torch.Tensor:
        """Mean squared error per member (E,). With B = 0 the prediction, the loss and its
        gradient come from one chunked pass
        (:func:`~iclab.models.kernel_label_stream.label_stream_mse`)."""
        if self.config.train_value_block or state.requires_grad:
            return super().loss_prepared(state, batch)
        d, n = self._check_tokens(state)
        loss, overflow = label_stream_mse(
            state[..., :d], state[..., :n, d], state[..., n, d], batch.y_query,
            *self._stream_weights(n), self.config.heads, self.sign,
        )  # fmt: skip
        if bool(overflow):
            raise self._overflow_from(state)
        return loss

    def implementation(self) -> dict[str, str]:
        if self.config.train_value_block:
            return {"objective": "autograd"}
        compiled = compiled_label_stream.supports(
            torch.empty(0, device=self.device, dtype=self.Q.dtype)
        )
        return {"objective": "compiled C label stream" if compiled else "torch label stream"}

    def _stream_weights(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``M = Kᵀ Q`` (E, L, H, d, d), so that s(m, j) = x_mᵀ M x_j, and the per-head steps
        ``v / n`` (``v`` for softmax) (E, L, H), differentiable in the parameters."""
        norm = torch.tensor(
            [1.0 if a == "softmax" else float(n) for a in self.config.heads],
            dtype=self.v.dtype,
            device=self.v.device,
        )
        return self.K.transpose(-1, -2) @ self.Q, self.v / norm

    def _label_stream(self, tokens: torch.Tensor) -> torch.Tensor:
        """The query's label slot after L layers when B = 0 (module docstring, fast path):
        :func:`~iclab.models.kernel_label_stream.label_stream` (chunked, hand-derived
        backward), or :meth:`_label_stream_autograd` when the tokens need a gradient."""
        d, n = self._check_tokens(tokens)
        if tokens.requires_grad:
            return self._label_stream_autograd(tokens)
        q, overflow = label_stream(
            tokens[..., :d], tokens[..., :n, d], tokens[..., n, d], *self._stream_weights(n),
            self.config.heads,
        )  # fmt: skip
        if bool(overflow):
            raise self._overflow_from(tokens)
        return q

    def _check_tokens(self, tokens: torch.Tensor) -> tuple[int, int]:
        """(d, n) of a token batch (E, B, n+1, d+1) for this model; ValueError otherwise."""
        d = self.d
        E, _, N, width = tokens.shape
        if width != d + 1 or N < 2 or self.ensemble_size != E:
            raise ValueError(
                f"tokens: expected shape ({self.ensemble_size}, B, n+1, {d + 1}) with n >= 1, "
                f"got {tuple(tokens.shape)}"
            )
        return d, N - 1

    def _label_stream_autograd(self, tokens: torch.Tensor) -> torch.Tensor:
        """:meth:`_label_stream` in plain autograd (differentiable in the tokens too)."""
        d, n = self._check_tokens(tokens)
        E, B, N, _ = tokens.shape
        x = tokens[..., :d]  # (E, B, N, d)
        x_rows = x.reshape(E, B * N, d)
        x_ctx = x[:, :, :n]
        x_ctx_t = x_ctx.reshape(E * B, n, d).transpose(1, 2)  # (E·B, d, n)
        r = tokens[..., :n, d]  # (E, B, n) context label slots
        q = tokens[..., n, d]  # (E, B) query label slot
        M = self.K.transpose(-1, -2) @ self.Q  # (E, L, H, d, d): s(m, j) = x_mᵀ M x_j
        norm = [1.0 if a == "softmax" else float(n) for a in self.config.heads]
        overflow = torch.zeros((), dtype=torch.bool, device=tokens.device)
        for layer in range(self.config.layers):
            upd = torch.zeros_like(x[..., 0])  # (E, B, N)
            for h, act in enumerate(self.config.heads):
                Mh = M[:, layer, h]  # (E, d, d)
                if act == "linear":  # S r = X M (X_ctxᵀ r): never form the scores
                    w = (x_ctx * r.unsqueeze(-1)).sum(-2)  # (E, B, d)
                    u = (x * (w @ Mh.transpose(-1, -2)).unsqueeze(-2)).sum(-1)
                else:
                    S = torch.bmm((x_rows @ Mh).view(E * B, N, d), x_ctx_t)  # (E·B, N, n)
                    A = (S.exp_() if act == "exp" else _unnormalized(act, S)).view(E, B, N, n)
                    u = (A * r.unsqueeze(-2)).sum(-1)  # (E, B, N)
                    if act == "exp":
                        overflow = overflow | ~torch.isfinite(u).all()
                upd = upd + u * (self.v[:, layer, h] / norm[h])[:, None, None]
            r = r + upd[..., :n]
            q = q + upd[..., n]
        if bool(overflow):
            raise self._overflow_from(tokens)
        return q

    @torch.no_grad()
    def _overflow_from(self, tokens: torch.Tensor) -> FloatingPointError:
        """The overflow error, naming the largest exp logit (recomputed, error path only)."""
        d, n = self.d, tokens.shape[-2] - 1
        x = tokens[..., :d]
        M = self.K.transpose(-1, -2) @ self.Q
        big = [
            torch.einsum("ebmc,ecf,ebjf->ebmj", x, M[:, layer, h], x[:, :, :n])
            for layer in range(self.config.layers)
            for h, act in enumerate(self.config.heads)
            if act == "exp"
        ]
        return _overflow_error(torch.stack([s.abs().max() for s in big]))
