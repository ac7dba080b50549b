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
