"""A GPT-2-style transformer reading a prompt as interleaved x and y tokens, predicting at every x.

This is the architecture of the function-class studies of in-context learning: the N = n + 1
points of a prompt (the n context pairs, then the query) become the 2N tokens

    x_1, ỹ_1, x_2, ỹ_2, …, x_N, ỹ_N        with ỹ_i = (y_i, 0, …, 0) ∈ R^d,

i.e. each label is padded with zeros to the width of x. The network is

    h_0 = T W_in + b_in + P[:2N]                     (linear read-in, learned positions)
    h ← h + Attn(LN(h)),  h ← h + MLP(LN(h))         (pre-LayerNorm causal blocks, L of them)
    ŷ_i = LN_f(h_{x_i}) · w_out + b_out              (read-out at every x token)

with causal attention: the token x_i sees x_1, ỹ_1, …, ỹ_{i−1} and itself, never its own label,
so ``ŷ_i`` is the model's in-context prediction of y_i from the i − 1 pairs before it. One forward
gives the prediction at every prefix length: ``ŷ_1`` (no context), …, ``ŷ_N`` (the query, from
all n pairs). The training objective is the squared error averaged over all N positions (every
prefix length is trained at once); :meth:`InterleavedTransformer.predict_prepared` returns the
query's prediction, so everything that reads a model's query prediction works unchanged.

The blocks, LayerNorm, GELU MLP, initialization (sorted-name order from the member's ``init``
stream, residual projections scaled by 1/√(2L)), dropout sites and ensemble layout are those of
:class:`~iclab.models.softmax_transformer.SoftmaxTransformer`; this model differs in its tokens
(interleaved, width d), its learned positional embedding (``positions`` rows, so prompts of up to
``positions / 2`` points), its causal mask and its read-out at every x token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from pydantic import Field

from iclab.batches import PromptBatch
from iclab.models.ensemble import model_dimensions
from iclab.models.softmax_transformer import (
    SoftmaxTransformer,
    SoftmaxTransformerConfig,
    _layer_norm,
    _linear,
)
from iclab.registry import register_model

__all__ = [
    "InterleavedTransformer",
    "InterleavedTransformerConfig",
    "interleave",
    "prompt_interleaved",
]


class InterleavedTransformerConfig(SoftmaxTransformerConfig):
    """GPT-2-style transformer on interleaved x/y tokens with learned positions, causal.

    ``size``, ``layers``, ``heads``, ``width``, ``mlp_ratio``, ``dropout`` and ``init_std`` as for
    the softmax transformer; ``positions`` bounds the prompt length (2 tokens per point).
    """

    kind: Literal["interleaved_transformer"] = "interleaved_transformer"  # type: ignore[assignment]
    causal: Literal[True] = Field(True, description="always True: the causal mask of a GPT-2")
    positions: int = Field(
        202,
        ge=2,
        description="rows of the learned positional embedding: prompts of at most positions/2 "
        "points (context + query)",
    )

    @property
    def max_points(self) -> int:
        return self.positions // 2


def interleave(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Tokens (E, B, 2N, d): ``x_1, (y_1, 0…0), x_2, …`` from x (E, B, N, d) and y (E, B, N)."""
    ytok = torch.zeros_like(x)
    ytok[..., 0] = y
    return torch.stack([x, ytok], dim=-2).flatten(-3, -2)


def prompt_interleaved(x: torch.Tensor, y: torch.Tensor, x_query: torch.Tensor) -> torch.Tensor:
    """Tokens (E, B, 2(n+1), d) of prompts x (E, B, n, d), y (E, B, n), x_query (E, B, d): the
    query is the last point, its label slot 0 (it comes after the query and is never seen)."""
    xs = torch.cat([x, x_query.unsqueeze(-2)], dim=-2)
    ys = torch.cat([y, y.new_zeros(*y.shape[:-1], 1)], dim=-1)
    return interleave(xs, ys)


@register_model(
    "interleaved_transformer", config=InterleavedTransformerConfig, accepts=(PromptBatch,)
)
class InterleavedTransformer(SoftmaxTransformer):
    """An ensemble of ``E`` interleaved-token GPT-2 transformers; see the module docstring."""

    def __init__(
        self,
        d: int,
        config: InterleavedTransformerConfig,
        seeds: Sequence[int] = (0,),
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(d, config, seeds, device, dtype)
        E, W = len(self.seeds), config.width
        kw = dict(device=device, dtype=dtype)
        del self.query_embed  # no query marker: the query is the last x token
        self.embed_weight = torch.nn.Parameter(torch.zeros(E, d, W, **kw))
        self.position_embed = torch.nn.Parameter(torch.zeros(E, config.positions, W, **kw))
        self.reset_parameters()

    @classmethod
    def check_task(cls, config: Any, task: Any) -> None:
        points = getattr(task, "n", None)
        if isinstance(points, int) and 2 * (points + 1) > config.positions:
            raise ValueError(
                f"model.positions: prompts of task.n={points} context points and a query need "
                f"{2 * (points + 1)} positions, got {config.positions}"
            )

    @classmethod
    def activation_bytes(cls, d: int, config: Any, tokens: int, itemsize: int) -> int:
        """As the softmax transformer's, with two tokens per point and every block in full."""
        layers, heads, width, mlp = model_dimensions(d, config)
        t = 2 * tokens
        return layers * t * (4 * width + mlp + 2 * heads * t) * itemsize

    # ------------------------------------------------------------------------- forward
    def prepare(self, batch: Any) -> torch.Tensor:
        """Interleaved tokens (E, B, 2N, d) of a prompt batch, the query as the N-th point."""
        return prompt_interleaved(batch.x, batch.y, batch.x_query)

    def predict_all(self, tokens: torch.Tensor) -> torch.Tensor:
        """Predictions (E, B, N) at every x token of interleaved tokens (E, B, 2N, d)."""
        E, N2 = self.ensemble_size, tokens.shape[-2]
        if tokens.dim() != 4 or tokens.shape[0] != E or tokens.shape[-1] != self.d or N2 % 2:
            raise ValueError(
                f"tokens: expected shape ({E}, B, 2N, {self.d}), got {tuple(tokens.shape)}"
            )
        if self.config.positions < N2:
            raise ValueError(
                f"model.positions: a prompt of {N2 // 2} points needs {N2} positions, the model "
                f"has {self.config.positions}"
            )
        h = self._stream(tokens)[-1][:, :, 0::2]  # the x tokens
        h = _layer_norm(h, self.ln_f_weight, self.ln_f_bias)
        return _linear(h, self.head_weight, self.head_bias).squeeze(-1)

    def predict_prepared(self, state: torch.Tensor) -> torch.Tensor:
        """The query's prediction (E, B): the last x token's."""
        return self.predict_all(state)[..., -1]

    def loss_prepared(self, state: torch.Tensor, batch: Any) -> torch.Tensor:
        """Squared error averaged over every position and prompt, per member (E,)."""
        target = torch.cat([batch.y, batch.y_query.unsqueeze(-1)], dim=-1)
        return (self.predict_all(state) - target).square().mean((-1, -2))

    def predict_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        raise TypeError("InterleavedTransformer reads interleaved tokens: use predict_all")

    def forward(self, x: torch.Tensor, y: torch.Tensor, x_query: torch.Tensor) -> torch.Tensor:
        """Predictions (E, B, n+1) at every prefix: position i from the pairs before it."""
        return self.predict_all(prompt_interleaved(x, y, x_query))

    def residual_stream(self, batch: PromptBatch) -> list[torch.Tensor]:
        """Residual stream after the embedding and every block: L+1 tensors (E, B, 2N, W)."""
        return self._stream(self.prepare(batch))

    def _stream(self, tokens: torch.Tensor, record: list[torch.Tensor] | None = None) -> list:
        N2 = tokens.shape[-2]
        idx = torch.arange(N2, device=tokens.device)
        mask = idx[None, :] <= idx[:, None]
        drop = self._dropper()
        h = _linear(tokens, self.embed_weight, self.embed_bias)
        h = drop(h + self.position_embed[:, None, :N2])
        out = [h]
        for layer in range(self.config.layers):
            h = self._block(h, layer, mask, False, drop, record)
            out.append(h)
        return out

    def attention_maps(
        self, x: torch.Tensor, y: torch.Tensor, x_query: torch.Tensor
    ) -> list[torch.Tensor]:
        """Attention weights of every block: L tensors (E, B, heads, 2N, 2N) (0 where masked)."""
        maps: list[torch.Tensor] = []
        self._stream(prompt_interleaved(x, y, x_query), record=maps)
        return maps

    def hidden_states(
        self, x: torch.Tensor, y: torch.Tensor, x_query: torch.Tensor
    ) -> list[torch.Tensor]:
        """Residual stream: L+1 tensors (E, B, 2N, W) (as :meth:`residual_stream`)."""
        return self._stream(prompt_interleaved(x, y, x_query))
