"""Shape conventions of batched prompts, shared by the theory and the algorithms.

Every algorithm takes prompts with a leading ensemble dimension, ``x`` (E, B, n, d), ``y``
(E, B, n), ``x_query`` (E, B, d), and per-ensemble parameters whose ensemble axis is E or 1.
These helpers validate those shapes, broadcast the ensemble axis, shape step sizes, and apply
tiny batched matrices without a per-prompt loop; new algorithms should use them too.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["as_step_sizes", "check_prompts", "ensemble_compatible", "matvec"]


def check_prompts(x: torch.Tensor, y: torch.Tensor, x_query: torch.Tensor) -> tuple[int, int]:
    """Validate prompt shapes; return ``(n, d)``."""
    if x.dim() != 4:
        raise ValueError(f"x: expected shape (E, B, n, d), got {tuple(x.shape)}")
    E, B, n, d = x.shape
    if y.shape != (E, B, n):
        raise ValueError(f"y: expected shape {(E, B, n)} to match x, got {tuple(y.shape)}")
    if x_query.shape != (E, B, d):
        raise ValueError(
            f"x_query: expected shape {(E, B, d)} to match x, got {tuple(x_query.shape)}"
        )
    if not x.is_floating_point():
        raise TypeError(f"x: expected a floating-point tensor, got {x.dtype}")
    if y.dtype != x.dtype or x_query.dtype != x.dtype:
        raise TypeError("x, y, x_query: must share one dtype")
    return n, d


def ensemble_compatible(param_size: int, data_size: int) -> bool:
    """A parameter's ensemble axis broadcasts against the data's: equal, or either one is 1."""
    return param_size == data_size or param_size == 1 or data_size == 1


def matvec(m: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Batched ``m @ v`` for tiny matrices: (…, d, d) × (…, d) -> (…, d), broadcasting."""
    return (m * v.unsqueeze(-2)).sum(-1)


def as_step_sizes(
    step_sizes: torch.Tensor | Sequence[float] | float, ref: torch.Tensor, layers: int | None = None
) -> torch.Tensor:
    """Step sizes as an (E or 1, L) tensor on ``ref``'s device and dtype."""
    t = torch.as_tensor(step_sizes, dtype=ref.dtype, device=ref.device)
    if t.dim() == 0:
        t = t.reshape(1)
    if t.dim() == 1:
        t = t.unsqueeze(0)
    if t.dim() != 2 or not ensemble_compatible(t.shape[0], ref.shape[0]) or t.shape[1] < 1:
        raise ValueError(
            f"step_sizes: expected shape (L,) or ({ref.shape[0]}, L) with L >= 1, "
            f"got {tuple(torch.as_tensor(step_sizes).shape)}"
        )
    if layers is not None and t.shape[1] != layers:
        raise ValueError(f"step_sizes: expected L = {layers} steps, got {t.shape[1]}")
    return t
