"""Shared validation and output layout of the prefix baselines (see the package docstring)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["check_counts", "check_positions", "check_sequences", "new_predictions"]


def check_sequences(x: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
    """Validate a batch of sequences ``x`` (E, B, N, d), ``y`` (E, B, N); return ``(N, d)``."""
    if x.dim() != 4:
        raise ValueError(f"x: expected shape (E, B, N, d), got {tuple(x.shape)}")
    E, B, N, d = x.shape
    if y.shape != (E, B, N):
        raise ValueError(f"y: expected shape {(E, B, N)} to match x, got {tuple(y.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x: expected a floating-point tensor, got {x.dtype}")
    if y.dtype != x.dtype:
        raise TypeError("x, y: must share one dtype")
    if N < 1 or d < 1:
        raise ValueError(f"x: need N >= 1 and d >= 1, got N = {N}, d = {d}")
    return N, d


def check_positions(positions: Sequence[int] | None, N: int) -> list[int]:
    """The prefix lengths to evaluate, sorted and unique; all of ``0, …, N−1`` for None."""
    if positions is None:
        return list(range(N))
    out = []
    for p in positions:
        if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p < N:
            raise ValueError(f"positions: expected integers in [0, {N - 1}], got {p!r}")
        out.append(p)
    if not out:
        raise ValueError("positions: expected at least one position")
    return sorted(set(out))


def new_predictions(x: torch.Tensor, positions: list[int]) -> torch.Tensor:
    """An (E, B, N) output on ``x``'s device and dtype: NaN where not evaluated, 0 at position 0."""
    out = torch.full(x.shape[:3], float("nan"), dtype=x.dtype, device=x.device)
    if positions and positions[0] == 0:
        out[..., 0] = 0
    return out


def check_counts(**counts: object) -> None:
    """Each keyword must be an integer ≥ 1 (not a bool); the error names the first that is not."""
    for name, v in counts.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: expected an integer >= 1, got {v!r}")
