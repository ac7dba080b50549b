"""Scalar summaries of learned matrices and losses."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from iclab.matrix_functions import psd_sqrt


def distance_to_identity(m: torch.Tensor) -> torch.Tensor:
    """``‖M − (tr M / d) I‖_F / ‖M‖_F`` over the last two dims: 0 iff M is a multiple of I."""
    d = m.shape[-1]
    eye = torch.eye(d, dtype=m.dtype, device=m.device)
    scale = torch.diagonal(m, dim1=-2, dim2=-1).sum(-1)[..., None, None] / d
    return torch.linalg.matrix_norm(m - scale * eye) / torch.linalg.matrix_norm(m)


def relative_error(m: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``‖M − R‖_F / ‖R‖_F`` over the last two dims."""
    return torch.linalg.matrix_norm(m - reference) / torch.linalg.matrix_norm(reference)


def whiten(a: torch.Tensor, covariance: torch.Tensor) -> torch.Tensor:
    """``Σ^{1/2} A Σ^{1/2}``: a preconditioner seen in whitened coordinates (Σ⁻¹ ↦ I)."""
    r = psd_sqrt(covariance.to(a.device, a.dtype))
    return r @ a @ r


def mean_std(values: Sequence[float] | torch.Tensor) -> tuple[float, float]:
    """Mean and sample standard deviation over seeds (std 0 for one seed)."""
    t = torch.as_tensor(values, dtype=torch.float64).flatten()
    mean = t.mean().item()
    std = t.std(unbiased=True).item() if t.numel() > 1 else 0.0
    return mean, (std if math.isfinite(std) else 0.0)


def bootstrap_ci(
    values: Sequence[float] | torch.Tensor,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Percentile-bootstrap confidence interval of the mean over the last dimension.

    ``values`` is a 1-D sequence/tensor of N observations, or a tensor (…, N) whose leading
    dimensions are independent series over the same N units (e.g. several methods scored on the
    same test prompts). Draws ``resamples`` index vectors of N indices with replacement from a
    CPU ``torch.Generator`` seeded with ``seed`` (so the result is deterministic given the seed,
    on any device) and computes each resample's mean through a count matrix (resamples × N), so
    memory is O(resamples · N) whatever the number of series. Every series is resampled with the
    *same* indices: a paired bootstrap, so ``bootstrap_ci(a − b)`` and the intervals of ``a`` and
    ``b`` come from the same resamples.

    Returns ``(mean, lo, hi)`` as float64 tensors of shape (…) (0-dim for 1-D input; use
    ``float()``): the sample mean and the ``(1 − level)/2`` and ``(1 + level)/2`` quantiles
    (linear interpolation) of the resampled means. NaNs propagate (filter them first).
    """
    t = torch.as_tensor(values, dtype=torch.float64)
    if t.dim() == 0 or t.shape[-1] == 0:
        raise ValueError("values: need at least one observation along the last dimension")
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise ValueError(f"resamples: expected an integer >= 1, got {resamples!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level: must be in (0, 1), got {level}")
    n = t.shape[-1]
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(n, (resamples, n), generator=gen)
    counts = torch.zeros(resamples, n, dtype=torch.float64)
    counts.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64))
    means = t @ counts.to(t.device).T / n  # (…, resamples)
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64, device=t.device)
    lo, hi = torch.quantile(means, q, dim=-1)
    return t.mean(-1), lo, hi
