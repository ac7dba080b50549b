"""Gaussian-process ICL prompts (Cheng, Chen & Sra 2024).

A prompt holds n context pairs ``(x_i, y_i)`` and a query ``x_q``. The inputs are uniform on the
unit sphere ``S^{d−1}`` (``inputs='sphere'``, default) or ``N(0, I/d)`` (``'gaussian'``). The labels
of the n+1 points are one joint draw ``y = f + ε``, ``f ~ N(0, Σ)``, ``ε ~ N(0, σ² I)``, where

    Σ = K⁺ + jitter · I,     K_ij = k(x_i, x_j) = Σ_t weight_t · k_t(x_i, x_j)

over the terms ``k_t`` of the configured kernel:

- ``linear``: ``⟨u, v⟩``;
- ``relu``: ``max(⟨u, v⟩, 0)``;
- ``exp``: ``exp(⟨u, v⟩ / bandwidth)``.

**Non-PSD kernels.** ``relu`` of an inner product is *not* a positive semi-definite kernel in
general (8 equally spaced unit vectors in a plane give a circulant matrix with eigenvalue
1 − √2 < 0; random prompts in d = 2 hit such configurations often), so ``K`` need not be a
covariance. iclab handles this explicitly: ``K⁺`` is the PSD projection of ``K``
(eigendecomposition ``K = V diag(λ) Vᵀ``, ``K⁺ = V diag(max(λ, 0)) Vᵀ``, the Frobenius-nearest
PSD matrix), computed per prompt over all n+1 points jointly (query last). For PSD kernels
``K⁺ = K`` up to round-off. The batch reports the raw smallest eigenvalue (``min_eigenvalue``)
and the clipped negative mass ``psd_violation = max(0, −λ_min(K))`` per prompt, so users can see
when (and by how much) the projection changed the kernel. ``kernel_matrix`` holds ``Σ``, the
covariance of ``f`` actually used; the labels' covariance is ``Σ + σ² I``. The Bayes-optimal
predictor for these data is :func:`iclab.theory.gaussian_process.functional_gd.gp_posterior_mean`, which uses the
same ``Σ``.

**Sampling.** The kernel and its factorization are computed in float64 and ``f`` is cast to the
working dtype. Where ``K⁺ = K`` (always for kernels that are PSD by construction — every term
``linear`` or ``exp`` — and, for a ``relu`` kernel, on the prompts whose raw ``K`` passes a
Cholesky positive-definiteness test), ``Σ = K + jitter·I`` and ``f = L z`` with ``L Lᵀ = Σ`` from
a batched ``torch.linalg.cholesky_ex``. Every other prompt — a ``relu`` prompt with
``λ_min(K) ≤ 0`` (about 55% at d = 5, n = 8), or one whose factorization fails, e.g. a
rank-deficient ``linear`` kernel with n+1 > d at jitter 0 — is selected by index and goes
through the eigendecomposition ``f = V diag(√(max(λ, 0) + jitter)) z`` of :func:`gp_covariance`,
so its ``Σ = K⁺ + jitter·I`` and ``f`` are exact as well. Both factor the same ``Σ`` (up to
round-off), so ``f ~ N(0, Σ)`` either way; the actual draws of a given ``z`` differ between the
two factorizations. ``min_eigenvalue`` and ``psd_violation`` are computed lazily, on first
access, from the batch's own points (``torch.linalg.eigvalsh`` of the raw ``K`` in float64,
returned in the batch's dtype; after :meth:`~PromptBatch.to` they are recomputed from the cast
points). Every tensor carries a leading ensemble dimension
``E`` then the batch dimension ``B``; member ``e`` draws from the stream
``(seeds[e], purpose, index)`` exactly as a single-seed run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import torch
from pydantic import BaseModel, Field, field_validator

from iclab.batches import PromptBatch
from iclab.kernels import (
    KernelSpec,
    KernelTerm,
    as_kernel_terms,
    gp_covariance,
    is_psd_kernel,
    kernel_function,
    raw_kernel64,
)
from iclab.registry import register_task
from iclab.seeding import make_generator
from iclab.tasks.ensemble_task import EnsembleTask
from iclab.validation import STRICT_CONFIG, FiniteFloat

__all__ = [
    "GaussianProcessBatch",
    "GaussianProcessConfig",
    "GaussianProcessTask",
    "KernelSpec",
    "KernelTerm",
    "as_kernel_terms",
    "gp_covariance",
    "kernel_function",
]


def _draw_f(
    x_all: torch.Tensor, z: torch.Tensor, kernel: KernelSpec, jitter: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``f ~ N(0, Σ)`` at the points ``x_all`` (…, N, d) from standard normals ``z`` (…, N).

    Returns ``(f, cov)`` in float64: ``f`` (…, N) and ``cov = Σ`` (…, N, N).
    """
    K = raw_kernel64(x_all, kernel)
    # For a kernel that is not PSD by construction (relu), a prompt whose raw K factors is
    # numerically positive definite, so K⁺ = K there too; only the others need the projection.
    not_pd = None if is_psd_kernel(kernel) else torch.linalg.cholesky_ex(K)[1] != 0
    cov = K
    cov.diagonal(dim1=-2, dim2=-1).add_(jitter)  # Σ = K + jitter·I where K⁺ = K
    L, info = torch.linalg.cholesky_ex(cov)
    f = (L @ z.unsqueeze(-1)).squeeze(-1)
    bad = info != 0 if not_pd is None else (info != 0) | not_pd
    failed = torch.nonzero(bad, as_tuple=True)  # indices of the prompts to project; one sync
    if failed[0].numel() > 0:  # the exact eigendecomposition path for just those prompts
        cov_f, lam_f, V_f, _ = gp_covariance(x_all[failed], kernel, jitter)
        cov[failed] = cov_f
        f[failed] = (V_f @ (lam_f.sqrt() * z[failed]).unsqueeze(-1)).squeeze(-1)
    return f, cov


class GaussianProcessConfig(BaseModel):
    """Gaussian-process regression task (see the module docstring)."""

    model_config = STRICT_CONFIG

    kind: Literal["gaussian_process"] = "gaussian_process"
    d: int = Field(5, ge=1, description="input dimension")
    n: int = Field(8, ge=1, description="number of context examples per prompt")
    inputs: Literal["sphere", "gaussian"] = Field(
        "sphere", description="'sphere' (uniform on S^{d−1}) or 'gaussian' (N(0, I/d))"
    )
    kernel: list[KernelTerm] = Field(
        default_factory=lambda: [KernelTerm(name="exp")],
        description="kernel terms (summed); a single name such as 'exp' is accepted",
    )
    jitter: FiniteFloat = Field(1e-6, ge=0.0, description="added to the diagonal of the covariance")
    noise_std: FiniteFloat = Field(0.0, ge=0.0, description="label noise σ")

    @field_validator("kernel", mode="before")
    @classmethod
    def _kernel_names(cls, v: object) -> object:
        if isinstance(v, (str, dict, KernelTerm)):
            v = [v]
        if isinstance(v, (list, tuple)):
            if len(v) == 0:
                raise ValueError("needs at least one term")
            return [{"name": t} if isinstance(t, str) else t for t in v]
        return v


@dataclass(frozen=True)
class GaussianProcessBatch(PromptBatch):
    """A batch of GP prompts with their ground truth. Shapes: E ensemble, B prompts, n, d.

    ``min_eigenvalue`` and ``psd_violation`` (E, B) are lazy: computed on first access from the
    batch's points (or pre-filled by the sampler when it already has them) and then cached.
    """

    x: torch.Tensor  # (E, B, n, d)
    y: torch.Tensor  # (E, B, n)
    x_query: torch.Tensor  # (E, B, d)
    y_query: torch.Tensor  # (E, B)
    kernel_matrix: torch.Tensor  # (E, B, n+1, n+1): Σ = K⁺ + jitter·I, query last
    config: GaussianProcessConfig

    @property
    def noise_std(self) -> float:
        return self.config.noise_std

    @cached_property
    def min_eigenvalue(self) -> torch.Tensor:
        """(E, B): λ_min of the raw kernel matrix K of all n+1 points, in the batch's dtype."""
        x_all = torch.cat([self.x, self.x_query.unsqueeze(-2)], dim=-2)
        lam = torch.linalg.eigvalsh(raw_kernel64(x_all, self.config.kernel))
        return lam[..., 0].to(self.x.dtype)

    @cached_property
    def psd_violation(self) -> torch.Tensor:
        """(E, B): max(0, −λ_min(K)), the negative mass clipped by the PSD projection."""
        return (-self.min_eigenvalue).clamp_min(0)


@register_task("gaussian_process", config=GaussianProcessConfig, batch=GaussianProcessBatch)
class GaussianProcessTask(EnsembleTask):
    """Samples :class:`GaussianProcessBatch` es for an ensemble of seeds on any device."""

    def __init__(
        self,
        config: GaussianProcessConfig,
        seeds: Sequence[int],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(config, seeds, device, dtype)

    def sample(self, batch_size: int, purpose: str, index: int = 0) -> GaussianProcessBatch:
        """Draw ``batch_size`` prompts per member from the stream ``(seed, purpose, index)``."""
        if batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
        cfg = self.config
        n, d = cfg.n, cfg.d
        parts = []
        for s in self.seeds:
            g = make_generator(self.device, s, purpose, index)
            kw = dict(generator=g, device=self.device, dtype=self.dtype)
            parts.append(
                (
                    torch.randn(batch_size, n + 1, d, **kw),
                    torch.randn(batch_size, n + 1, **kw),
                    torch.randn(batch_size, n + 1, **kw),
                )
            )
        raw_x = torch.stack([p[0] for p in parts])  # (E, B, n+1, d)
        raw_z = torch.stack([p[1] for p in parts]).to(torch.float64)  # (E, B, n+1)
        raw_e = torch.stack([p[2] for p in parts])  # (E, B, n+1)
        if cfg.inputs == "sphere":
            xs = raw_x / raw_x.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(self.dtype).tiny)
        else:
            xs = raw_x / math.sqrt(d)
        f, cov = _draw_f(xs, raw_z, cfg.kernel, cfg.jitter)
        ys = f.to(self.dtype) + cfg.noise_std * raw_e
        batch = GaussianProcessBatch(
            x=xs[:, :, :n],
            y=ys[:, :, :n],
            x_query=xs[:, :, n],
            y_query=ys[:, :, n],
            kernel_matrix=cov.to(self.dtype),
            config=cfg,
        )
        return batch
