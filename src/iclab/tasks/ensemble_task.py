"""The base of every task sampler: a config, one seed per ensemble member, a device and dtype."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


class EnsembleTask:
    """Base of the task samplers.

    A subclass implements ``sample(batch_size, purpose, index=0)``: ``batch_size`` prompts (or
    sequences) per member, drawn from the generator keyed ``(seed, purpose, index)`` of each
    member's seed (:func:`iclab.seeding.make_generator`), so that the same keys give the same
    batch and member ``e`` sees what a single run with ``seeds[e]`` sees.
    """

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

    def sample(self, batch_size: int, purpose: str, index: int = 0) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement sample()")
