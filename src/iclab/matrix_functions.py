"""Functions of symmetric matrices, batched over leading dimensions."""

from __future__ import annotations

import torch


def psd_sqrt(m: torch.Tensor) -> torch.Tensor:
    """The symmetric square root of positive semi-definite matrices (…, d, d).

    From ``torch.linalg.eigh`` (which reads the lower triangle); eigenvalues below 0 (round-off)
    are clamped to 0.
    """
    lam, v = torch.linalg.eigh(m)
    return (v * lam.clamp_min(0).sqrt().unsqueeze(-2)) @ v.transpose(-1, -2)
