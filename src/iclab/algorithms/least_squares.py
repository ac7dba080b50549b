"""Closed-form in-context learners: (min-norm) least squares, ridge and the Bayes posterior mean.

All functions take a batch of prompts with a leading ensemble dimension ``E`` and batch dimension
``B`` (iclab's row convention: one example per row):

- ``x``: (E, B, n, d) context covariates, ``y``: (E, B, n) context labels,
- ``x_query``: (E, B, d) query covariates,

and return a :class:`Prediction` holding the query prediction (E, B) and the fitted linear
weights (E, B, d), with ``prediction = x_queryᵀ weights``. Per-ensemble parameters (a ridge
``lam`` of shape (E,), a weight covariance of shape (E, d, d), …) may also have a leading size of
1 or be shared; they broadcast against the data's ``E`` (and data with ``E = 1`` broadcasts
against per-ensemble parameters, giving one output per parameter member). Everything is
computed on the device and in the dtype of the inputs; there are no per-prompt Python loops.

Every solver goes through one batched thin SVD ``X = U diag(s) Vᵀ`` of the design matrix, which is
correct for any shape and rank on CPU and CUDA alike (``torch.linalg.lstsq``'s CUDA driver only
handles full-rank tall problems, so it is not used). Singular values ``s ≤ rcond · s_max`` are
treated as exact zeros, as in ``numpy.linalg.lstsq`` (default ``rcond = max(n, d) · eps``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from iclab.matrix_functions import psd_sqrt
from iclab.prompt_shapes import check_prompts, ensemble_compatible

__all__ = ["Prediction", "bayes_posterior_mean", "ols", "ridge"]


@dataclass(frozen=True)
class Prediction:
    """Output of a batched in-context learner.

    Attributes:
        prediction: (E, B) predictions for the query points.
        weights: (E, B, d) the linear predictor the learner ended with, ``prediction = x_qᵀ w``
            (for GD++ these are the weights in the *original* covariate coordinates).
        trajectory: for iterative learners called with ``return_trajectory=True``, the weights
            after each step, (E, B, L+1, d) with ``trajectory[..., 0, :] = w0``; otherwise None.
            Per-step query predictions are ``(trajectory * x_query.unsqueeze(-2)).sum(-1)``.
    """

    prediction: torch.Tensor
    weights: torch.Tensor
    trajectory: torch.Tensor | None = None


# ------------------------------------------------------------------------------ shared helpers
def _per_ensemble(
    name: str, value: float | torch.Tensor, ref: torch.Tensor, *, nonnegative: bool = True
) -> torch.Tensor:
    """A scalar or (E,)-tensor parameter on ``ref``'s device/dtype, shape () or (E, 1, 1)."""
    t = torch.as_tensor(value, dtype=ref.dtype, device=ref.device)
    if t.dim() == 1:
        if not ensemble_compatible(t.shape[0], ref.shape[0]):
            raise ValueError(
                f"{name}: expected a scalar or shape ({ref.shape[0]},), got {tuple(t.shape)}"
            )
        t = t[:, None, None]  # (E, 1, 1): broadcasts against (E, B, k)
    elif t.dim() != 0:
        raise ValueError(f"{name}: expected a scalar or a per-ensemble (E,) tensor")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name}: must be finite")
    if nonnegative and (t < 0).any():
        raise ValueError(f"{name}: must be >= 0")
    return t


def _ensemble_matrix(name: str, m: torch.Tensor, ref: torch.Tensor, d: int) -> torch.Tensor:
    """A (d, d) or (E, d, d) matrix as (E or 1, 1, d, d) on ``ref``'s device/dtype."""
    m = torch.as_tensor(m, dtype=ref.dtype, device=ref.device)
    if m.dim() == 2:
        m = m.unsqueeze(0)
    if m.dim() != 3 or m.shape[-2:] != (d, d) or not ensemble_compatible(m.shape[0], ref.shape[0]):
        raise ValueError(
            f"{name}: expected shape ({d}, {d}) or ({ref.shape[0]}, {d}, {d}), got {tuple(m.shape)}"
        )
    return m.unsqueeze(1)


def _default_rcond(n: int, d: int, dtype: torch.dtype) -> float:
    return max(n, d) * torch.finfo(dtype).eps


def _spectral_solve(
    x: torch.Tensor, y: torch.Tensor, lam: torch.Tensor | float, rcond: float
) -> torch.Tensor:
    """Batched ``w = V diag(f(s)) Uᵀ y``, ``f(s) = s / (s² + lam)`` for ``s > rcond·s_max``, else 0.

    ``lam = 0`` gives the min-norm least-squares solution ``X⁺ y``; ``lam > 0`` gives ridge
    ``(XᵀX + lam I)⁻¹ Xᵀ y``. x: (…, n, d), y: (…, n), lam broadcastable to (…, 1).
    """
    u, s, vh = torch.linalg.svd(x, full_matrices=False)  # (…, n, k), (…, k), (…, k, d)
    tol = rcond * s[..., :1]  # singular values come sorted in descending order
    keep = s > tol
    s_safe = torch.where(keep, s, torch.ones_like(s))
    coef = torch.where(keep, s_safe / (s_safe * s_safe + lam), torch.zeros_like(s))
    uty = (u * y.unsqueeze(-1)).sum(-2)  # (…, k)
    return ((coef * uty).unsqueeze(-1) * vh).sum(-2)  # (…, d)


def _predict(weights: torch.Tensor, x_query: torch.Tensor) -> Prediction:
    return Prediction(prediction=(weights * x_query).sum(-1), weights=weights)


# ------------------------------------------------------------------------------ public API
def ols(
    x: torch.Tensor, y: torch.Tensor, x_query: torch.Tensor, rcond: float | None = None
) -> Prediction:
    """Minimum-norm least squares ``w = X⁺ y`` per prompt.

    For ``n ≥ d`` and full-rank ``X`` this is the ordinary least-squares fit
    ``(XᵀX)⁻¹ Xᵀ y``; for ``n < d`` (or rank-deficient ``X``) it is the interpolant of minimal
    Euclidean norm. ``rcond`` (default ``max(n, d)·eps``) is the relative cut-off below which
    singular values of ``X`` count as zero.

    Args:
        x: (E, B, n, d) context covariates.
        y: (E, B, n) context labels.
        x_query: (E, B, d) query covariates.
        rcond: relative singular-value cut-off.

    Returns:
        :class:`Prediction` with prediction (E, B) and weights (E, B, d).
    """
    n, d = check_prompts(x, y, x_query)
    rcond = _default_rcond(n, d, x.dtype) if rcond is None else rcond
    return _predict(_spectral_solve(x, y, 0.0, rcond), x_query)


def ridge(
    x: torch.Tensor,
    y: torch.Tensor,
    x_query: torch.Tensor,
    lam: float | torch.Tensor,
    rcond: float | None = None,
) -> Prediction:
    """Ridge regression ``w = (XᵀX + lam·I)⁻¹ Xᵀ y`` per prompt (unnormalized Gram ``XᵀX``).

    ``lam ≥ 0`` is a scalar or a per-ensemble (E,) tensor; ``lam = 0`` gives :func:`ols` (the
    min-norm solution). With a prior ``w ~ N(0, I)`` and noise ``N(0, σ²)``, ``lam = σ²`` is the
    Bayes posterior mean.

    Args:
        x: (E, B, n, d) context covariates.
        y: (E, B, n) context labels.
        x_query: (E, B, d) query covariates.
        lam: regularization strength, scalar or (E,).
        rcond: relative singular-value cut-off (only matters where ``lam = 0``).

    Returns:
        :class:`Prediction` with prediction (E, B) and weights (E, B, d).
    """
    n, d = check_prompts(x, y, x_query)
    lam_t = _per_ensemble("lam", lam, x)
    rcond = _default_rcond(n, d, x.dtype) if rcond is None else rcond
    return _predict(_spectral_solve(x, y, lam_t, rcond), x_query)


def bayes_posterior_mean(
    x: torch.Tensor,
    y: torch.Tensor,
    x_query: torch.Tensor,
    weight_covariance: torch.Tensor,
    noise_std: float | torch.Tensor,
    rcond: float | None = None,
) -> Prediction:
    """Posterior mean of ``w`` for the prior ``w ~ N(0, Σ_w)`` and labels ``y = Xw + N(0, σ² I)``.

    For ``σ > 0`` and invertible ``Σ_w`` this is ``(XᵀX + σ² Σ_w⁻¹)⁻¹ Xᵀ y
    = Σ_w Xᵀ (X Σ_w Xᵀ + σ² I)⁻¹ y``, which also minimizes the expected squared error of the query
    prediction (it is the Bayes-optimal predictor for Gaussian data). For ``σ = 0`` it returns the
    limit ``σ → 0``: the interpolant of minimal ``Σ_w⁻¹``-norm (equal to OLS when ``n ≥ d`` and
    ``X`` has full column rank).

    Computation: write ``w = R v`` with ``R = Σ_w^{1/2}`` (symmetric PSD square root), so that
    ``v ~ N(0, I)`` and ``y = (XR) v + ε``; the posterior mean of ``v`` is ridge regression on the
    design ``XR`` with ``lam = σ²`` (min-norm least squares for ``σ = 0``), and ``w = R v``.

    Singular ``Σ_w``: the prior is the degenerate Gaussian on ``range(Σ_w)``, and this formula is
    its exact posterior mean (it lies in ``range(Σ_w)``; directions with zero prior variance are
    never used). For ``σ = 0`` with labels that no ``w`` in ``range(Σ_w)`` explains exactly
    (impossible under the prior), the result is the ``σ → 0`` limit: the least-squares fit within
    ``range(Σ_w)`` of minimal ``Σ_w⁺``-norm. Negative eigenvalues of ``Σ_w`` from round-off are
    clamped to 0.

    Args:
        x: (E, B, n, d) context covariates.
        y: (E, B, n) context labels.
        x_query: (E, B, d) query covariates.
        weight_covariance: prior covariance ``Σ_w`` (symmetric PSD), (d, d) or per-ensemble
            (E, d, d).
        noise_std: label-noise ``σ ≥ 0``, scalar or (E,).
        rcond: relative singular-value cut-off for ``XR`` (default ``max(n, d)·eps``).

    Returns:
        :class:`Prediction` with prediction (E, B) and weights (E, B, d).
    """
    n, d = check_prompts(x, y, x_query)
    sigma = _per_ensemble("noise_std", noise_std, x)
    wcov = _ensemble_matrix("weight_covariance", weight_covariance, x, d)  # (E|1,1,d,d)
    root = psd_sqrt((wcov + wcov.transpose(-1, -2)) / 2)  # symmetrized against round-off
    rcond = _default_rcond(n, d, x.dtype) if rcond is None else rcond
    v = _spectral_solve(x @ root, y, sigma * sigma, rcond)  # (E, B, d)
    w = (root * v.unsqueeze(-2)).sum(-1)  # R v, batched mat-vec
    return _predict(w, x_query)
