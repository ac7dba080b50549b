"""Kernels on inner products, the vocabulary shared by the Gaussian-process task, its theory
(functional gradient descent, the GP posterior) and the kernel baselines.

A kernel is a sum of terms ``weight · k(⟨u, v⟩)`` with ``k`` one of ``linear`` (``⟨u, v⟩``),
``relu`` (``max(⟨u, v⟩, 0)``, not positive semi-definite in general) and ``exp``
(``exp(⟨u, v⟩ / bandwidth)``). :func:`gp_covariance` gives the covariance a GP with that kernel
actually uses: the PSD projection ``K⁺`` of the kernel matrix plus a jitter.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import BaseModel, Field

from iclab.validation import STRICT_CONFIG, FiniteFloat

__all__ = [
    "KernelName",
    "KernelSpec",
    "KernelTerm",
    "as_kernel_terms",
    "gp_covariance",
    "is_psd_kernel",
    "kernel_function",
    "raw_kernel64",
]

KernelName = Literal["linear", "relu", "exp"]


class KernelTerm(BaseModel):
    """One term ``weight · k(u, v)`` of a kernel; ``bandwidth`` is used by ``exp`` only."""

    model_config = STRICT_CONFIG

    name: KernelName = Field(description="'linear', 'relu' or 'exp'")
    weight: FiniteFloat = Field(1.0, gt=0.0, description="positive weight of the term")
    bandwidth: FiniteFloat = Field(1.0, gt=0.0, description="h in exp(⟨u,v⟩/h)")


KernelSpec = str | KernelTerm | dict | Sequence[KernelTerm | dict | str]


def as_kernel_terms(kernel: KernelSpec) -> list[KernelTerm]:
    """Normalize a kernel spec (a name, a term, a dict, or a list of those) to a list of terms."""
    if isinstance(kernel, (str, KernelTerm, dict)):
        kernel = [kernel]
    terms = []
    for t in kernel:
        if isinstance(t, KernelTerm):
            terms.append(t)
        elif isinstance(t, str):
            terms.append(KernelTerm(name=t))  # type: ignore[arg-type]
        elif isinstance(t, dict):
            terms.append(KernelTerm(**t))
        else:
            raise ValueError(f"kernel: expected a name, a dict or a KernelTerm, got {t!r}")
    if not terms:
        raise ValueError("kernel: needs at least one term")
    return terms


def kernel_function(u: torch.Tensor, w: torch.Tensor, kernel: KernelSpec) -> torch.Tensor:
    """Kernel matrix ``k(u_i, w_j)``: u (…, m, d), w (…, k, d) -> (…, m, k), in u's dtype."""
    terms = as_kernel_terms(kernel)
    g = u @ w.transpose(-1, -2)
    out: torch.Tensor | None = None
    for t in terms:
        # unit weights / bandwidths skip a multiply / divide (bit-identical: both are exact)
        if t.name == "linear":
            k = g
        elif t.name == "relu":
            k = g.clamp_min(0)
        else:
            k = torch.exp(g if t.bandwidth == 1.0 else g / t.bandwidth)
        if t.weight != 1.0:
            k = t.weight * k
        out = k if out is None else out + k
    assert out is not None  # as_kernel_terms guarantees at least one term
    return out


def is_psd_kernel(kernel: KernelSpec) -> bool:
    """Whether the kernel is PSD by construction (every term is ``linear`` or ``exp``)."""
    return all(t.name in ("linear", "exp") for t in as_kernel_terms(kernel))


def raw_kernel64(x_all: torch.Tensor, kernel: KernelSpec) -> torch.Tensor:
    """The raw (unprojected) kernel matrix of ``x_all`` (…, N, d) in float64, symmetrized."""
    x64 = x_all.to(torch.float64)
    K = kernel_function(x64, x64, kernel)
    return (K + K.transpose(-1, -2)).mul_(0.5)  # = (K + Kᵀ) / 2, one temporary fewer


def gp_covariance(
    x_all: torch.Tensor, kernel: KernelSpec, jitter: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The covariance actually used for the points ``x_all`` (…, N, d), in float64.

    Returns ``(cov, eigenvalues, eigenvectors, min_eigenvalue)``: ``cov = K⁺ + jitter·I``
    (…, N, N), the eigenvalues ``max(λ, 0) + jitter`` (…, N) and eigenvectors (…, N, N) of
    ``cov``, and the raw smallest eigenvalue ``λ_min(K)`` (…) before clipping.
    """
    K = raw_kernel64(x_all, kernel)
    lam, V = torch.linalg.eigh(K)
    lam_c = lam.clamp_min(0) + jitter
    cov = (V * lam_c.unsqueeze(-2)) @ V.transpose(-1, -2)
    cov = (cov + cov.transpose(-1, -2)) / 2
    return cov, lam_c, V, lam[..., 0]
