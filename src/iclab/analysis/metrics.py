"""Scalar summaries of learned matrices and losses."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def distance_to_identity(m: torch.Tensor) -> torch.Tensor:
    """``‖M − (tr M / d) I‖_F / ‖M‖_F`` over the last two dims: 0 iff M is a multiple of I."""
    d = m.shape[-1]
    eye = torch.eye(d, dtype=m.dtype, device=m.device)
    scale = torch.diagonal(m, dim1=-2, dim2=-1).sum(-1)[..., None, None] / d
    return torch.linalg.matrix_norm(m - scale * eye) / torch.linalg.matrix_norm(m)


def relative_error(m: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``‖M − R‖_F / ‖R‖_F`` over the last two dims."""
    return torch.linalg.matrix_norm(m - reference) / torch.linalg.matrix_norm(reference)


def _sym_sqrt(s: torch.Tensor) -> torch.Tensor:
    lam, v = torch.linalg.eigh(s)
    return (v * lam.clamp_min(0).sqrt().unsqueeze(-2)) @ v.transpose(-1, -2)


def whiten(a: torch.Tensor, covariance: torch.Tensor) -> torch.Tensor:
    """``Σ^{1/2} A Σ^{1/2}``: a preconditioner seen in whitened coordinates (Σ⁻¹ ↦ I)."""
    r = _sym_sqrt(covariance.to(a.dtype))
    return r @ a @ r


def mean_std(values: Sequence[float] | torch.Tensor) -> tuple[float, float]:
    """Mean and sample standard deviation over seeds (std 0 for one seed)."""
    t = torch.as_tensor(values, dtype=torch.float64).flatten()
    mean = t.mean().item()
    std = t.std(unbiased=True).item() if t.numel() > 1 else 0.0
    return mean, (std if math.isfinite(std) else 0.0)
