"""Closed-form theory of one preconditioned-GD step (one sparse LSA layer).

Conventions (shared by every function here):

- Data: ``x ~ N(0, Σ)`` for context and query, one ``w ~ N(0, Σ_w)`` per prompt,
  ``y = wᵀx + ε`` with ``ε ~ N(0, σ²)``; ``n`` context pairs.
- ``A`` is the GD preconditioner in iclab's convention (see :mod:`iclab.models.lsa`): one layer
  of the sparse PGD form with the *negative* readout predicts ``ŷ = x_qᵀ A h`` with
  ``h = (1/n) Xᵀ y = (1/n) Σ_i x_i y_i``. ``A`` need not be symmetric.
- Loss is the mean squared error ``E[(ŷ − y_q)²]`` (no factor 1/2), over prompts and queries.
- Everything is computed in float64. Matrices may carry leading batch dimensions
  ``(…, d, d)``; ``A``, ``Σ`` and ``Σ_w`` broadcast against each other. ``n`` is an int and
  ``noise_std`` a float (or a tensor broadcasting against the batch shape).

Derivation. With ``S = (1/n) XᵀX`` and Gaussian x, ``E[S B S] = ((n+1)/n) ΣBΣ + (tr(BΣ)/n) Σ``
for symmetric ``B``, hence

    E[h hᵀ] = M := ((n+1)/n) Σ Σ_w Σ + ((tr(Σ_w Σ) + σ²)/n) Σ,      E[h wᵀ] = Σ Σ_w,

and, x_q being independent of h,

    f(A) = tr(A M Aᵀ Σ) − 2 tr(Σ A Σ Σ_w) + tr(Σ_w Σ) + σ².

``f`` is a convex quadratic in ``A``; its gradient ``2 Σ (A M − Σ_w Σ)`` vanishes at
``A* = Σ_w Σ M⁻¹``, where ``f* = tr(Σ_w Σ) + σ² − tr(Σ A* Σ Σ_w)``. For singular ``Σ`` the
minimizer is not unique (``A*`` is still one of them, when ``M`` is invertible).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = [
    "one_layer_population_loss",
    "one_layer_second_moment",
    "optimal_one_layer_loss",
    "preconditioner_optimum",
]

TensorLike = Any  # torch.Tensor, numpy array or nested sequence of floats


def _f64(t: TensorLike) -> torch.Tensor:
    """``t`` as a float64 tensor (keeps the autograd graph of float64/32 tensors)."""
    if isinstance(t, torch.Tensor):
        return t.to(torch.float64)
    return torch.as_tensor(t, dtype=torch.float64)


def _check_square(name: str, t: torch.Tensor) -> None:
    if t.dim() < 2 or t.shape[-1] != t.shape[-2]:
        raise ValueError(f"{name}: expected shape (..., d, d), got {tuple(t.shape)}")


def _trace(t: torch.Tensor) -> torch.Tensor:
    return t.diagonal(dim1=-2, dim2=-1).sum(-1)


def _prepare(
    covariance: TensorLike, weight_covariance: TensorLike, n: int, noise_std: TensorLike
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    cov = _f64(covariance)
    wcov = _f64(weight_covariance)
    _check_square("covariance", cov)
    _check_square("weight_covariance", wcov)
    if cov.shape[-1] != wcov.shape[-1]:
        raise ValueError(
            f"covariance and weight_covariance: dimensions differ ({cov.shape[-1]} vs "
            f"{wcov.shape[-1]})"
        )
    if int(n) != n or n < 1:
        raise ValueError(f"n: must be a positive integer, got {n}")
    sigma = _f64(noise_std)
    if (sigma < 0).any() or not torch.isfinite(sigma).all():
        raise ValueError(f"noise_std: must be finite and >= 0, got {noise_std}")
    return cov, wcov, sigma


def one_layer_second_moment(
    covariance: TensorLike, weight_covariance: TensorLike, n: int, noise_std: TensorLike = 0.0
) -> torch.Tensor:
    """``M = E[h hᵀ] = ((n+1)/n) Σ Σ_w Σ + ((tr(Σ_w Σ) + σ²)/n) Σ`` for ``h = (1/n) Xᵀ y``.

    Shapes ``(…, d, d)`` broadcast; returns float64 ``(…, d, d)``.
    """
    cov, wcov, sigma = _prepare(covariance, weight_covariance, n, noise_std)
    sws = cov @ wcov @ cov
    signal = _trace(wcov @ cov)  # tr(Σ_w Σ) = E[(wᵀx)²]
    scale = ((signal + sigma**2) / n)[..., None, None]
    return ((n + 1) / n) * sws + scale * cov


def one_layer_population_loss(
    A: TensorLike,
    covariance: TensorLike,
    weight_covariance: TensorLike,
    n: int,
    noise_std: TensorLike = 0.0,
) -> torch.Tensor:
    """Exact ``E[(x_qᵀ A h − y_q)²]`` with ``h = (1/n) Σ_i x_i y_i`` (one sparse LSA layer).

    ``f(A) = tr(A M Aᵀ Σ) − 2 tr(Σ A Σ Σ_w) + tr(Σ_w Σ) + σ²`` (see the module docstring).
    ``A``, ``covariance`` (Σ) and ``weight_covariance`` (Σ_w) have shapes ``(…, d, d)`` that
    broadcast. Returns a float64 tensor of the broadcast batch shape (0-dim when nothing is
    batched); differentiable in every tensor argument.
    """
    A = _f64(A)
    _check_square("A", A)
    cov, wcov, sigma = _prepare(covariance, weight_covariance, n, noise_std)
    if A.shape[-1] != cov.shape[-1]:
        raise ValueError(f"A: dimension {A.shape[-1]} differs from covariance's {cov.shape[-1]}")
    M = one_layer_second_moment(cov, wcov, n, sigma)
    quad = _trace(A @ M @ A.transpose(-1, -2) @ cov)
    cross = _trace(cov @ A @ cov @ wcov)
    return quad - 2.0 * cross + _trace(wcov @ cov) + sigma**2


def preconditioner_optimum(
    covariance: TensorLike, weight_covariance: TensorLike, n: int, noise_std: TensorLike = 0.0
) -> torch.Tensor:
    """The loss-minimizing preconditioner ``A* = Σ_w Σ M⁻¹`` (float64, ``(…, d, d)``).

    Computed with a linear solve, ``A*ᵀ = M⁻¹ Σ Σ_w`` (``M`` is symmetric). Special cases:
    ``Σ_w = I, σ = 0``: ``A* = ((n+1)/n Σ + tr(Σ)/n I)⁻¹``; ``Σ_w = Σ⁻¹``:
    ``A* = n/(n+d+1+σ²) Σ⁻¹``.
    """
    cov, wcov, sigma = _prepare(covariance, weight_covariance, n, noise_std)
    M = one_layer_second_moment(cov, wcov, n, sigma)
    rhs = cov @ wcov  # (Σ_w Σ)ᵀ
    M, rhs = torch.broadcast_tensors(M, rhs)
    return torch.linalg.solve(M, rhs).transpose(-1, -2)


def optimal_one_layer_loss(
    covariance: TensorLike, weight_covariance: TensorLike, n: int, noise_std: TensorLike = 0.0
) -> torch.Tensor:
    """``f* = tr(Σ_w Σ) + σ² − tr(Σ A* Σ Σ_w)``, the least one-layer mean squared error.

    At ``Σ = Σ_w = I``, ``σ = 0``: ``f* = d(d+1)/(n+d+1)``. Returns float64 of the batch shape.
    """
    cov, wcov, sigma = _prepare(covariance, weight_covariance, n, noise_std)
    A = preconditioner_optimum(cov, wcov, n, sigma)
    return _trace(wcov @ cov) + sigma**2 - _trace(cov @ A @ cov @ wcov)
