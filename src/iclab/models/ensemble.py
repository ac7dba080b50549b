"""Initialization shared by every ensemble model (parameters with a leading seed dimension)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from iclab.seeding import make_generator


def checked_seeds(d: int, seeds: Sequence[int]) -> list[int]:
    """Validate an ensemble model's input dimension and seeds; the seeds as a list."""
    if d < 1:
        raise ValueError(f"d: must be >= 1, got {d}")
    if len(seeds) < 1:
        raise ValueError("seeds: at least one seed is required")
    return list(seeds)


@torch.no_grad()
def init_ensemble_(module: nn.Module, seeds: Sequence[int], std: float) -> None:
    """Fill member ``e`` of every parameter with N(0, std²) draws from the stream
    ``(seeds[e], "init")``, parameters in name order, so member e of an ensemble equals a
    single model built with seed ``seeds[e]``."""
    params = sorted(module.named_parameters())
    for e, seed in enumerate(seeds):
        gen = make_generator(params[0][1].device, seed, "init")
        for _, p in params:
            p[e].copy_(
                torch.randn(p.shape[1:], generator=gen, device=p.device, dtype=p.dtype) * std
            )


class TokenRowModel:
    """Mixin for models that read a prompt as token rows ``[x_i, y_i]`` plus ``[x_q, 0]``.

    Provides :meth:`tokens` and the trainer hooks (:meth:`prepare`, :meth:`predict_prepared`)
    and ``forward`` on top of the subclass's ``predict_tokens(tokens) -> (E, B)``.
    """

    @staticmethod
    def tokens(x: torch.Tensor, y: torch.Tensor, x_query: torch.Tensor) -> torch.Tensor:
        """Token rows (E, B, n+1, d+1) from x (E, B, n, d), y (E, B, n), x_query (E, B, d)."""
        ctx = torch.cat([x, y.unsqueeze(-1)], dim=-1)
        q = torch.cat([x_query, torch.zeros_like(x_query[..., :1])], dim=-1)
        return torch.cat([ctx, q.unsqueeze(-2)], dim=-2)

    def prepare(self, batch: object) -> torch.Tensor:
        """Trainer hook: the state of a task batch (with .x, .y, .x_query) is its token matrix."""
        return self.tokens(batch.x, batch.y, batch.x_query)  # type: ignore[attr-defined]

    def predict_prepared(self, state: torch.Tensor) -> torch.Tensor:
        """Trainer hook: predictions (E, B) from :meth:`prepare`'s tokens."""
        return self.predict_tokens(state)  # type: ignore[attr-defined]

    def forward(self, x: torch.Tensor, y: torch.Tensor, x_query: torch.Tensor) -> torch.Tensor:
        """Predictions (E, B) for prompts x (E, B, n, d), y (E, B, n), x_query (E, B, d)."""
        return self.predict_tokens(self.tokens(x, y, x_query))  # type: ignore[attr-defined]
