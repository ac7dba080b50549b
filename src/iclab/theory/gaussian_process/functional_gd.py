"""Kernel attention as functional gradient descent, and the GP Bayes predictor (Cheng, Chen & Sra 2024).

Conventions follow :mod:`iclab.models.kernel_attention` (row tokens, query last, label slot 0)
and :mod:`iclab.algorithms.kernel_methods` (functional GD with attention weights ``W``).

**Construction** (:func:`functional_gd_weights`). One head with activation ``h``, value x-block
``B = 0``, ``Q = K = I`` has attention weights ``W(x_m, x_j) = h(⟨x_j, x_m⟩) / n`` (``softmax``:
normalized over the keys), covariates never move, and a layer with label weight ``v_ℓ`` maps the
label slots as ``y_m ← y_m + v_ℓ Σ_j W(x_m, x_j) y_j``. Starting from context slots ``r = y`` and
query slot 0:

- ``readout='negative'``: ``v_ℓ = −η_ℓ``. The context slots follow ``r ← r − η_ℓ W_ctx r``
  (functional-GD residuals) and the query slot accumulates ``−η_ℓ w_qᵀ r = −(f_ℓ − f_{ℓ−1})(x_q)``,
  so it holds ``−f_ℓ(x_q)`` and the prediction ``−slot = f_L(x_q)``: exactly L steps of
  :func:`~iclab.algorithms.kernel_methods.functional_gd`.
- ``readout='positive'``: ``v_1 = +η_1`` gives one step exactly (``L = 1``). For ``L ≥ 2`` the
  context slots become ``Π (I + v_ℓ W) y`` while functional GD needs ``Π (I − η_ℓ W) y`` in the
  later steps; matching ``Σ_ℓ v_ℓ Π_{k<ℓ}(1 + v_k t) = Σ_ℓ η_ℓ Π_{k<ℓ}(1 − η_k t)`` as polynomials
  in ``t`` forces ``Π(1 + v t) = 2 − Π(1 − η t)``, whose roots are not real in general (the
  same obstruction as :mod:`iclab.theory.linear_regression.constructions`), so it raises ``ValueError``.

**Bayes predictor.** For the data of :class:`~iclab.tasks.gaussian_process.GaussianProcessTask`
(``f ~ N(0, Σ)`` on the n+1 points with ``Σ = K⁺ + jitter·I``, ``y = f + ε``,
``ε ~ N(0, σ²I)``) the posterior mean of ``y_q`` is ``Σ_qcᵀ (Σ_cc + σ²I)⁻¹ y`` and its mean
squared error is ``Σ_qq − Σ_qcᵀ (Σ_cc + σ²I)⁻¹ Σ_qc + σ²`` (:func:`gp_posterior_mean`,
:func:`gp_expected_loss`). ``Σ`` is built by
:func:`~iclab.tasks.gaussian_process.gp_covariance` over all n+1 points jointly, so for a non-PSD
kernel (relu) the projection is the one the sampler used. For a PSD kernel and jitter 0 this is
the textbook ``k_qᵀ (K + σ²I)⁻¹ y``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from iclab.kernels import KernelSpec, gp_covariance, kernel_function
from iclab.prompt_shapes import check_prompts

__all__ = ["functional_gd_weights", "gp_expected_loss", "gp_posterior_mean", "kernel_ridge"]

_ACTIVATIONS = ("linear", "relu", "exp", "softmax")


def functional_gd_weights(
    activation: str,
    layers: int,
    step_sizes: torch.Tensor | Sequence[float] | float,
    d: int,
    readout: Literal["negative", "positive"] = "negative",
) -> dict[str, torch.Tensor]:
    """Weights making a one-head :class:`~iclab.models.KernelAttention` run L functional-GD steps.

    Returns float64 ``{"B", "v", "Q", "K"}`` on the device of ``step_sizes``, shaped
    ``(E, L, 1, d, d)``, ``(E, L, 1)``, ``(E, L, 1, d, d)``, ``(E, L, 1, d, d)`` (``E = 1`` for
    steps of shape (L,)); load with ``model.set_weights(**weights)`` into a model with
    ``heads=[activation]``. The model then
    predicts ``functional_gd(x, y, x_query, kernel, step_sizes).prediction`` where ``kernel`` is
    ``activation`` (``'softmax'``: the normalized exp kernel). Module docstring: sign of ``v``.
    """
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation: must be one of {_ACTIVATIONS}, got {activation!r}")
    if readout not in ("negative", "positive"):
        raise ValueError(f"readout: must be 'negative' or 'positive', got {readout!r}")
    if layers < 1:
        raise ValueError(f"layers: must be >= 1, got {layers}")
    if d < 1:
        raise ValueError(f"d: must be >= 1, got {d}")
    eta = torch.as_tensor(step_sizes, dtype=torch.float64)
    if eta.dim() == 0:
        eta = eta.expand(layers)
    if eta.dim() == 1:
        eta = eta.unsqueeze(0)
    if eta.dim() != 2 or eta.shape[1] != layers:
        raise ValueError(
            f"step_sizes: expected a scalar, shape ({layers},) or (E, {layers}), "
            f"got {tuple(torch.as_tensor(step_sizes).shape)}"
        )
    if readout == "positive" and layers > 1:
        raise ValueError(
            "readout='positive': exact functional GD is only constructible for L = 1 "
            "(see iclab.theory.gaussian_process.functional_gd)"
        )
    E = eta.shape[0]
    s = -1.0 if readout == "negative" else 1.0
    kw = dict(dtype=torch.float64, device=eta.device)
    eye = torch.eye(d, **kw).expand(E, layers, 1, d, d).clone()
    return {
        "B": torch.zeros(E, layers, 1, d, d, **kw),
        "v": (s * eta).unsqueeze(-1).clone(),
        "Q": eye,
        "K": eye.clone(),
    }


def _solve_psd(A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Solve A X = b for symmetric PSD A (…, n, n), b (…, n, k); pseudo-inverse where singular."""
    L, info = torch.linalg.cholesky_ex(A)
    x = torch.cholesky_solve(b, L)
    bad = info != 0
    if bool(bad.any()):
        x = torch.where(bad[..., None, None], torch.linalg.pinv(A, hermitian=True) @ b, x)
    return x


def _joint(
    x: torch.Tensor, x_query: torch.Tensor, kernel: KernelSpec, noise_std: float, jitter: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if noise_std < 0 or jitter < 0:
        raise ValueError("noise_std, jitter: must be >= 0")
    cov, *_ = gp_covariance(torch.cat([x, x_query.unsqueeze(-2)], dim=-2), kernel, jitter)
    n = x.shape[-2]
    A = cov[..., :n, :n] + noise_std**2 * torch.eye(n, dtype=cov.dtype, device=cov.device)
    return A, cov[..., :n, n], cov[..., n, n]


def gp_posterior_mean(
    x: torch.Tensor,
    y: torch.Tensor,
    x_query: torch.Tensor,
    kernel: KernelSpec,
    noise_std: float = 0.0,
    jitter: float = 1e-6,
) -> torch.Tensor:
    """Bayes-optimal prediction ``Σ_qcᵀ (Σ_cc + σ²I)⁻¹ y`` (E, B), computed in float64.

    Shapes: x (E, B, n, d), y (E, B, n), x_query (E, B, d); ``kernel``, ``noise_std`` and
    ``jitter`` as in :class:`~iclab.tasks.gaussian_process.GaussianProcessConfig`. Returned in
    x's dtype.
    """
    check_prompts(x, y, x_query)
    A, kq, _ = _joint(x, x_query, kernel, noise_std, jitter)
    alpha = _solve_psd(A, y.to(torch.float64).unsqueeze(-1)).squeeze(-1)
    return (kq * alpha).sum(-1).to(x.dtype)


def gp_expected_loss(
    x: torch.Tensor,
    x_query: torch.Tensor,
    kernel: KernelSpec,
    noise_std: float = 0.0,
    jitter: float = 1e-6,
) -> torch.Tensor:
    """Per-prompt Bayes risk ``E[(y_q − mean)² | x, x_q] = Σ_qq − Σ_qcᵀ(Σ_cc+σ²I)⁻¹Σ_qc + σ²``.

    Shapes: x (E, B, n, d), x_query (E, B, d) -> (E, B) float64. Average over prompts for the
    expected loss of :func:`gp_posterior_mean`.
    """
    if x.dim() != 4 or x_query.shape != x.shape[:2] + x.shape[-1:]:
        raise ValueError(
            f"x, x_query: expected (E, B, n, d) and (E, B, d), got {tuple(x.shape)}, "
            f"{tuple(x_query.shape)}"
        )
    A, kq, kqq = _joint(x, x_query, kernel, noise_std, jitter)
    sol = _solve_psd(A, kq.unsqueeze(-1)).squeeze(-1)
    return (kqq - (kq * sol).sum(-1) + noise_std**2).clamp_min(0)


def kernel_ridge(
    x: torch.Tensor, y: torch.Tensor, x_query: torch.Tensor, kernel: KernelSpec, lam: float
) -> torch.Tensor:
    """Kernel ridge regression ``k_qᵀ (K + nλ I)⁻¹ y`` (E, B) with the raw kernel ``K``.

    Minimizer of ``(1/n) Σ_j (f(x_j) − y_j)² + λ‖f‖²_H``; ``lam`` ≥ 0 (``λ = σ²/n`` gives the GP
    posterior mean for a PSD kernel with jitter 0). Computed in float64 with ``linalg.solve``
    (the raw relu kernel may be indefinite: no projection here). Returned in x's dtype.
    """
    n, _ = check_prompts(x, y, x_query)
    if not lam >= 0:
        raise ValueError(f"lam: must be >= 0, got {lam}")
    x64, xq = x.to(torch.float64), x_query.to(torch.float64)
    K = kernel_function(x64, x64, kernel)
    kq = kernel_function(xq.unsqueeze(-2), x64, kernel).squeeze(-2)
    A = K + n * lam * torch.eye(n, dtype=K.dtype, device=K.device)
    alpha = torch.linalg.solve(A, y.to(torch.float64).unsqueeze(-1)).squeeze(-1)
    return (kq * alpha).sum(-1).to(x.dtype)
