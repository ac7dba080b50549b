"""Closed-form prefix baselines: minimum-norm least squares and averaging (one GD step from 0)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from iclab.algorithms.least_squares import ols
from iclab.algorithms.prefix_baselines.sequence_shapes import (
    check_positions,
    check_sequences,
    new_predictions,
)

__all__ = ["prefix_averaging", "prefix_least_squares"]


def prefix_least_squares(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    positions: Sequence[int] | None = None,
    rcond: float | None = None,
) -> torch.Tensor:
    """Minimum-norm least squares ``ŵ_i = X_i⁺ y_i`` on each prefix, prediction ``x_iᵀŵ_i``.

    ``X_i`` (i, d) holds ``x_0, …, x_{i−1}``. For ``i ≥ d`` and full column rank this is the
    ordinary least-squares fit; for ``i < d`` (or any rank-deficient prefix) it is the interpolant
    of minimal Euclidean norm, as ``numpy.linalg.lstsq(X_i, y_i, rcond=None)``. Computed with one
    batched thin SVD per prefix length (:func:`iclab.algorithms.least_squares.ols`): singular
    values ``s ≤ rcond·s_max`` count as exact zeros, default ``rcond = max(i, d)·eps`` of the
    dtype (numpy's default), so rank deficiency is handled exactly up to that cut-off.

    Args:
        x: (E, B, N, d) covariates.
        y: (E, B, N) labels.
        positions: prefix lengths to evaluate (default all ``0, …, N−1``).
        rcond: relative singular-value cut-off, the same for every prefix (default per prefix).

    Returns:
        (E, B, N) prefix predictions (NaN at positions not evaluated).
    """
    N, _ = check_sequences(x, y)
    pos = check_positions(positions, N)
    out = new_predictions(x, pos)
    for i in pos:
        if i > 0:
            out[..., i] = ols(x[..., :i, :], y[..., :i], x[..., i, :], rcond=rcond).prediction
    return out


def prefix_averaging(
    x: torch.Tensor, y: torch.Tensor, *, positions: Sequence[int] | None = None
) -> torch.Tensor:
    """Averaging ``ŵ_i = (1/i) Σ_{j<i} y_j x_j`` (one GD step from 0), prediction ``x_iᵀŵ_i``.

    ``ŵ_i`` is ``−∇`` of the loss ``(1/(2i))‖y_i − X_i w‖²`` at ``w = 0``, i.e. one gradient step
    of size 1 from 0; an unbiased estimate of ``w`` for isotropic covariates. All prefixes come
    from one exclusive cumulative sum: O(N·d) per sequence.

    Args:
        x: (E, B, N, d) covariates.
        y: (E, B, N) labels.
        positions: prefix lengths to evaluate (default all).

    Returns:
        (E, B, N) prefix predictions (NaN at positions not evaluated).
    """
    N, _ = check_sequences(x, y)
    pos = check_positions(positions, N)
    total = torch.cumsum(y.unsqueeze(-1) * x, dim=-2)  # (E, B, N, d), inclusive
    before = torch.cat([torch.zeros_like(total[..., :1, :]), total[..., :-1, :]], dim=-2)
    count = torch.arange(N, dtype=x.dtype, device=x.device).clamp_min(1)
    pred = (before * x).sum(-1) / count  # 0 at i = 0: the empty sum
    out = new_predictions(x, pos)
    idx = torch.tensor(pos, device=x.device)
    out[..., idx] = pred[..., idx]
    return out
