"""A small GPT-2-style softmax transformer on continuous tokens, experiment (d) of Ding et al.

Tokens are rows (as in :mod:`iclab.models.lsa`): the n context rows ``[x_i; y_i]`` and the query
row ``[x_q; 0]``, ``(E, B, n+1, d+1)``. The network:

    h_0 = Z W_emb + b_emb + 1[query] · e_q          (linear map R^{d+1} → width, is-query embedding)
    h ← h + Attn(LN(h))                              (pre-LayerNorm blocks, L of them)
    h ← h + W_2 GELU(W_1 LN(h) + b_1) + b_2
    ŷ = LN_f(h_query) · w_head + b_head              (scalar prediction from the query row)

``Attn`` is multi-head softmax attention, ``softmax(q kᵀ / √(width/heads) + mask) v`` per head,
heads concatenated and projected (``W_o``). GELU is GPT-2's tanh approximation; LayerNorm has
eps 1e-5 and a learned scale and shift. There are no positional embeddings: with the default mask
the context is a set, and the prediction is invariant to the order of the context examples.

**Attention mask** (``True`` = may attend; :meth:`SoftmaxTransformer.attention_mask`):

- ``causal=False`` (default): every context row attends to all n context rows (itself included),
  the query attends to the n context rows and itself. The query is never a key or value for a
  context row (as in LSA, where the query is never a key), so the context rows' states never
  depend on the query, and one set of context states serves any query.
- ``causal=True``: the standard causal mask, row m attends to rows j ≤ m.

Either way the query (the last row) sees everything; only its final state feeds the head, so the
last block is evaluated for the query row only (keys and values still come from every row).

**Ensemble.** Every parameter has a leading ensemble dimension E (one independent model per seed)
and at least three dims, so per-matrix gradient clipping never mixes members. Per-block
parameters are ``(E, L, …)``; matrices act on rows (``x @ W`` with ``W`` (E, L, in, out)) and are
applied with one batched GEMM over the ensemble (``baddbmm`` on ``(E, B·rows, in)``), attention with
batched matmuls over (E, B, heads) — no Python loop over seeds.

**Initialization** (GPT-2): member e draws from ``make_generator(device, seeds[e], "init")``, the
random parameters in sorted name order: weights (and the is-query embedding) N(0, init_std²), the
residual output projections (``attn_out_weight``, ``mlp_out_weight``) scaled by 1/√(2L); biases
0, LayerNorm scales 1. Member e of an ensemble equals a single model built with seed ``seeds[e]``.

**Dropout** (``dropout > 0``, GPT-2's sites: embedding, attention weights, both residual
branches) is active only in training mode *with autograd enabled*: the trainer evaluates under
``no_grad`` without calling ``eval()``, so test losses are dropout-free. Masks are drawn per
member from ``make_generator(device, seeds[e], "dropout", k)`` with k a step counter kept in the
buffer ``dropout_step`` (saved in checkpoints, so a resumed run draws the same masks), which
preserves "member e = the single model with its seed".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field, model_validator
from torch import nn

from iclab.batches import PromptBatch
from iclab.models.ensemble import TokenRowModel
from iclab.registry import register_model
from iclab.seeding import make_generator
from iclab.validation import STRICT_CONFIG

__all__ = ["SIZE_PRESETS", "SoftmaxTransformer", "SoftmaxTransformerConfig"]

Size = Literal["tiny", "small", "standard", "custom"]

#: (layers, heads, width) of each named size ("small GPT-2-style" sizes for CPU training).
SIZE_PRESETS: dict[str, tuple[int, int, int]] = {
    "tiny": (2, 2, 32),
    "small": (4, 4, 64),
    "standard": (6, 4, 128),
}

_LN_EPS = 1e-5


class SoftmaxTransformerConfig(BaseModel):
    """GPT-2-style softmax transformer: pre-LayerNorm blocks, GELU MLP, query-token readout.

    ``size`` picks (layers, heads, width) from :data:`SIZE_PRESETS`; with a named size those three
    fields are filled in (an explicit value must agree with the preset), with ``size='custom'``
    all three are required. ``mlp_ratio``, ``dropout``, ``init_std`` and ``causal`` apply to
    every size.
    """

    model_config = STRICT_CONFIG

    kind: Literal["softmax_transformer"] = "softmax_transformer"
    size: Size = Field(
        "small",
        description="'tiny' (2 layers, 2 heads, width 32), 'small' (4, 4, 64), "
        "'standard' (6, 4, 128) or 'custom' (set layers, heads, width)",
    )
    layers: int | None = Field(None, ge=1, description="transformer blocks L (size='custom')")
    heads: int | None = Field(None, ge=1, description="attention heads per block (size='custom')")
    width: int | None = Field(
        None, ge=1, description="residual width, divisible by heads (size='custom')"
    )
    mlp_ratio: int = Field(4, ge=1, description="MLP hidden width = mlp_ratio · width")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout probability (GPT-2 sites)")
    init_std: float = Field(0.02, ge=0.0, description="std of the N(0, init_std²) weights")
    causal: bool = Field(
        False,
        description="False: context rows attend to the context, the query to everything; "
        "True: standard causal mask",
    )

    @model_validator(mode="before")
    @classmethod
    def _fill_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        size = data.get("size", cls.model_fields["size"].default)
        if not isinstance(size, str) or size not in SIZE_PRESETS:
            return data  # 'custom', or an invalid size that the Literal check reports
        data = dict(data)
        for field, value in zip(("layers", "heads", "width"), SIZE_PRESETS[size], strict=True):
            given = data.get(field)
            if given is None:
                data[field] = value
            elif given != value:
                raise ValueError(
                    f"{field}: size={size!r} fixes {field}={value} (got {given!r}); "
                    f"use size='custom' to choose layers, heads and width"
                )
        return data

    @model_validator(mode="after")
    def _check(self) -> SoftmaxTransformerConfig:
        for field in ("layers", "heads", "width"):
            if getattr(self, field) is None:
                raise ValueError(f"{field}: required with size='custom'")
        if self.width % self.heads != 0:
            raise ValueError(
                f"width: must be divisible by heads (width={self.width}, heads={self.heads})"
            )
        return self

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def mlp_width(self) -> int:
        return self.mlp_ratio * self.width


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``x @ weight + bias`` per member: x (E, …, i), weight (E, i, o), bias (E, 1, o)."""
    E = x.shape[0]
    out = torch.baddbmm(bias, x.reshape(E, -1, x.shape[-1]), weight)
    return out.view(*x.shape[:-1], weight.shape[-1])


def _layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the last dim with per-member scale/shift (E, width) or (E, 1, width)."""
    shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)
    y = F.layer_norm(x, x.shape[-1:], eps=_LN_EPS)
    return y * weight.reshape(shape) + bias.reshape(shape)


@register_model("softmax_transformer", config=SoftmaxTransformerConfig, accepts=(PromptBatch,))
class SoftmaxTransformer(TokenRowModel):
    """An ensemble of ``E`` GPT-2-style softmax transformers; see the module docstring."""

    bf16_autocast = True

    def __init__(
        self,
        d: int,
        config: SoftmaxTransformerConfig,
        seeds: Sequence[int] = (0,),
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(d, config, seeds, device, dtype)
        E, L, W, M = len(seeds), config.layers, config.width, config.mlp_width
        kw = dict(device=device, dtype=dtype)

        def param(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.zeros(E, *shape, **kw))

        self.embed_weight = param(d + 1, W)
        self.embed_bias = param(1, W)
        self.query_embed = param(1, W)
        self.ln1_weight, self.ln1_bias = param(L, W), param(L, W)
        self.attn_q_weight, self.attn_q_bias = param(L, W, W), param(L, W)
        self.attn_k_weight, self.attn_k_bias = param(L, W, W), param(L, W)
        self.attn_v_weight, self.attn_v_bias = param(L, W, W), param(L, W)
        self.attn_out_weight, self.attn_out_bias = param(L, W, W), param(L, W)
        self.ln2_weight, self.ln2_bias = param(L, W), param(L, W)
        self.mlp_in_weight, self.mlp_in_bias = param(L, W, M), param(L, M)
        self.mlp_out_weight, self.mlp_out_bias = param(L, M, W), param(L, W)
        self.ln_f_weight, self.ln_f_bias = param(1, W), param(1, W)
        self.head_weight, self.head_bias = param(W, 1), param(1, 1)
        if config.dropout > 0:
            self.register_buffer("dropout_step", torch.zeros((), dtype=torch.long, device=device))
        self.reset_parameters()

    # ----------------------------------------------------------------------------- parameters
    def _init_scale(self, name: str) -> float | None:
        """Std multiplier of a random parameter; None for biases (0) and LayerNorm scales (1)."""
        if name.startswith("ln") or name.endswith("_bias"):
            return None
        if name in ("attn_out_weight", "mlp_out_weight"):
            return 1.0 / math.sqrt(2 * self.config.layers)
        return 1.0

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """GPT-2 initialization; member e's draws come from the stream (seeds[e], 'init')."""
        params = sorted(self.named_parameters())
        std = self.config.init_std
        for name, p in params:
            if name.startswith("ln") and name.endswith("_weight"):
                p.fill_(1.0)
            elif self._init_scale(name) is None:
                p.zero_()
        random = [(p, std * s) for name, p in params if (s := self._init_scale(name)) is not None]
        for e, seed in enumerate(self.seeds):
            gen = make_generator(self.device, seed, "init")
            for p, s in random:
                p[e].copy_(torch.randn(p.shape[1:], generator=gen, device=p.device, dtype=p.dtype))
                p[e].mul_(s)

    def parameter_count(self) -> int:
        """Trainable parameters of one ensemble member."""
        return sum(p[0].numel() for p in self.parameters())

    # ----------------------------------------------------------------------------- forward
    def attention_mask(self, n: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Boolean (n+1, n+1) mask, ``[m, j]`` True if row m may attend to row j."""
        device = self.device if device is None else device
        idx = torch.arange(n + 1, device=device)
        if self.config.causal:
            return idx[None, :] <= idx[:, None]
        return (idx[None, :] < n) | (idx[:, None] == n)

    def predict_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Predictions (E, B) from token rows (E, B, n+1, d+1)."""
        h = self._trunk(tokens, query_only_last=True)[-1][..., -1, :]  # (E, B, W)
        h = _layer_norm(h, self.ln_f_weight, self.ln_f_bias)
        return torch.baddbmm(self.head_bias, h, self.head_weight).squeeze(-1)

    def hidden_states(
        self, x: torch.Tensor, y: torch.Tensor, x_query: torch.Tensor
    ) -> list[torch.Tensor]:
        """Residual stream after the embedding and after every block: L+1 tensors (E, B, n+1, W)."""
        return self._trunk(self.tokens(x, y, x_query), query_only_last=False)

    def residual_stream(self, batch: PromptBatch) -> list[torch.Tensor]:
        """Residual stream of a prompt batch: L+1 tensors (E, B, n+1, W) (:meth:`hidden_states`)."""
        return self.hidden_states(batch.x, batch.y, batch.x_query)

    def attention_maps(
        self, x: torch.Tensor, y: torch.Tensor, x_query: torch.Tensor
    ) -> list[torch.Tensor]:
        """Softmax attention weights of every block: L tensors (E, B, heads, n+1, n+1).

        Entry ``[…, h, m, j]`` is the weight row m gives row j in head h (0 where masked; the
        query is the last row). Dropout is never applied to the returned weights.
        """
        maps: list[torch.Tensor] = []
        self._trunk(self.tokens(x, y, x_query), query_only_last=False, record=maps)
        return maps

    def _check_tokens(self, tokens: torch.Tensor) -> None:
        if (
            tokens.dim() != 4
            or tokens.shape[0] != self.ensemble_size
            or tokens.shape[-1] != self.d + 1
            or tokens.shape[-2] < 2
        ):
            raise ValueError(
                f"tokens: expected shape ({self.ensemble_size}, B, n+1, {self.d + 1}) with "
                f"n >= 1, got {tuple(tokens.shape)}"
            )

    def _trunk(
        self,
        tokens: torch.Tensor,
        query_only_last: bool,
        record: list[torch.Tensor] | None = None,
    ) -> list[torch.Tensor]:
        """Residual streams ``[h_0, …, h_L]``; with ``query_only_last`` h_L holds the query row."""
        self._check_tokens(tokens)
        N = tokens.shape[-2]
        mask = self.attention_mask(N - 1, tokens.device)
        drop = self._dropper()
        is_query = torch.zeros(N, 1, device=tokens.device, dtype=tokens.dtype)
        is_query[-1] = 1.0
        h = _linear(tokens, self.embed_weight, self.embed_bias)
        h = drop(h + is_query * self.query_embed.unsqueeze(1))
        out = [h]
        L = self.config.layers
        for layer in range(L):
            last = query_only_last and layer == L - 1
            h = self._block(h, layer, mask, last, drop, record)
            out.append(h)
        return out

    def _block(
        self,
        h: torch.Tensor,
        layer: int,
        mask: torch.Tensor,
        query_only: bool,
        drop: Callable[[torch.Tensor], torch.Tensor],
        record: list[torch.Tensor] | None,
    ) -> torch.Tensor:
        """One pre-LN block on h (E, B, N, W); with ``query_only`` it returns the query row only."""
        E, B, _, W = h.shape
        H, hd = self.config.heads, self.config.head_dim

        def lin(x: torch.Tensor, name: str) -> torch.Tensor:
            weight = getattr(self, f"{name}_weight")[:, layer]
            bias = getattr(self, f"{name}_bias")[:, layer].unsqueeze(1)
            return _linear(x, weight, bias)

        a = _layer_norm(h, self.ln1_weight[:, layer], self.ln1_bias[:, layer])
        if query_only:
            h, mask = h[:, :, -1:], mask[-1:]
        R = h.shape[2]  # rows updated by this block

        def split(t: torch.Tensor) -> torch.Tensor:  # (E, B, rows, W) -> (E, B, H, rows, hd)
            return t.view(E, B, -1, H, hd).transpose(2, 3)

        q = split(lin(a[:, :, -R:], "attn_q"))
        k, v = split(lin(a, "attn_k")), split(lin(a, "attn_v"))
        scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(hd))  # (E, B, H, R, N)
        weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
        if record is not None:
            record.append(weights)
        o = (drop(weights) @ v).transpose(2, 3).reshape(E, B, R, W)
        h = h + drop(lin(o, "attn_out"))
        m = _layer_norm(h, self.ln2_weight[:, layer], self.ln2_bias[:, layer])
        m = F.gelu(lin(m, "mlp_in"), approximate="tanh")
        return h + drop(lin(m, "mlp_out"))

    def _dropper(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The dropout of this forward pass (identity unless training with autograd on)."""
        p = self.config.dropout
        if p == 0 or not (self.training and torch.is_grad_enabled()):
            return lambda t: t
        step = int(self.dropout_step.item())
        self.dropout_step.add_(1)
        gens = [make_generator(self.device, seed, "dropout", step) for seed in self.seeds]

        def drop(t: torch.Tensor) -> torch.Tensor:
            u = torch.stack(
                [torch.rand(t.shape[1:], generator=g, device=t.device, dtype=t.dtype) for g in gens]
            )
            return t * (u >= p).to(t.dtype) * (1.0 / (1.0 - p))

        return drop
