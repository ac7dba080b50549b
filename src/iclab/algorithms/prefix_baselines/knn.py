"""k-nearest-neighbour regression on every prefix."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from iclab.algorithms.prefix_baselines.sequence_shapes import (
    check_counts,
    check_positions,
    check_sequences,
    new_predictions,
)

__all__ = ["prefix_knn"]


def prefix_knn(
    x: torch.Tensor, y: torch.Tensor, *, k: int = 3, positions: Sequence[int] | None = None
) -> torch.Tensor:
    """Mean label of the ``k`` prefix points nearest to ``x_i`` (Euclidean distance).

    Matches ``KNeighborsRegressor(n_neighbors=min(k, i))`` (uniform weights) fitted on the prefix
    ``x_0, …, x_{i−1}``: with fewer than ``k`` points (``i < k``) all ``i`` labels are averaged.
    **Distance ties** at the ``k``-th neighbour are broken by context order (the earlier example
    counts as nearer; a stable sort), as :func:`iclab.algorithms.k_nearest_neighbors` does.
    scikit-learn leaves that case to its tree / ``argpartition`` order, so the two can differ only
    when the ``k``-th and ``(k+1)``-th distances are exactly equal, which has probability zero for
    continuous covariates. Squared distances are ``Σ_m (x_jm − x_im)²`` computed directly, so equal
    difference vectors give exactly equal distances. One batched sort per prefix length.

    Args:
        x: (E, B, N, d) covariates.
        y: (E, B, N) labels.
        k: number of neighbours, ``≥ 1``.
        positions: prefix lengths to evaluate (default all).

    Returns:
        (E, B, N) prefix predictions (NaN at positions not evaluated).
    """
    N, _ = check_sequences(x, y)
    check_counts(k=k)
    pos = check_positions(positions, N)
    out = new_predictions(x, pos)
    for i in pos:
        if i == 0:
            continue
        diff = x[..., :i, :] - x[..., i : i + 1, :]
        dist2 = (diff * diff).sum(-1)  # (E, B, i)
        nearest = torch.sort(dist2, dim=-1, stable=True).indices[..., : min(k, i)]
        out[..., i] = y[..., :i].gather(-1, nearest).mean(-1)
    return out
