"""What every ICL task shares: a batch of prompts with ground truth, and a seeded sampler."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch


class PromptBatch:
    """Mixin for frozen dataclass batches with fields ``x`` (E, B, n, d), ``y`` (E, B, n),
    ``x_query`` (E, B, d) and ``y_query`` (E, B), plus any ground truth."""

    x: torch.Tensor
    y: torch.Tensor
    x_query: torch.Tensor
    y_query: torch.Tensor

    @property
    def n(self) -> int:
        return self.x.shape[-2]

    @property
    def d(self) -> int:
        return self.x.shape[-1]

    def tokens(self) -> torch.Tensor:
        """Token matrix with one *row* per token: (E, B, n+1, d+1); the query's label slot is 0.

        This is the transpose of the papers' column convention Z0 ∈ R^{(d+1)×(n+1)}.
        """
        ctx = torch.cat([self.x, self.y.unsqueeze(-1)], dim=-1)
        q = torch.cat([self.x_query, torch.zeros_like(self.y_query).unsqueeze(-1)], dim=-1)
        return torch.cat([ctx, q.unsqueeze(-2)], dim=-2)

    def to(self, dtype: torch.dtype) -> Any:
        """The same batch with every tensor field cast to ``dtype``."""
        cast = {
            f.name: getattr(self, f.name).to(dtype)
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
            if torch.is_tensor(getattr(self, f.name))
        }
        return dataclasses.replace(self, **cast)  # type: ignore[type-var]


class EnsembleTask:
    """Base of the task samplers: a config, one seed per ensemble member, a device and dtype."""

    def __init__(
        self,
        config: Any,
        seeds: Sequence[int],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if len(seeds) < 1:
            raise ValueError("seeds: at least one seed is required")
        self.config = config
        self.seeds = list(seeds)
        self.device = torch.device(device)
        self.dtype = dtype

    @property
    def ensemble_size(self) -> int:
        return len(self.seeds)
