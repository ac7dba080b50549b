"""Batched functional gradient descent in an RKHS as an in-context learner (Cheng, Chen & Sra 2024).

Prompts follow iclab's row convention with a leading ensemble dimension: ``x`` (E, B, n, d),
``y`` (E, B, n), ``x_query`` (E, B, d). For a kernel ``k``, functional GD from ``f_0 = 0`` on
``R(f) = (1/2n) Σ_j (f(x_j) − y_j)²`` takes, for ℓ = 1..L,

    f_ℓ(x) = f_{ℓ−1}(x) + η_ℓ Σ_j W(x, x_j) r_j,     r ← r − η_ℓ W_ctx r     (r_0 = y)

with attention weights ``W(x, x_j) = k(x_j, x) / n`` (so ``W_ctx = K / n``), the residuals
``r_j = y_j − f(x_j)``, and the prediction ``f_L(x_q)``. The special kernel ``'softmax'`` is the
*normalized* exp kernel ``W(x, x_j) = exp(⟨x_j, x⟩) / Σ_i exp(⟨x_i, x⟩)`` (no 1/n; rows of
``W_ctx`` sum to 1): this is the algorithm a softmax attention head with ``Q = K = I`` runs
(:mod:`iclab.models.kernel_attention`); it is not a GD step of a fixed RKHS, just the same
residual recursion with a row-stochastic ``W``.

Because every step is a polynomial in ``W_ctx``, the prediction is
``w_qᵀ q(W_ctx) y`` with ``q(t) = (1 − Π_ℓ (1 − η_ℓ t)) / t`` (``w_q`` the query's weights), the
same polynomial as linear GD; :func:`tune_functional_gd_steps` reuses the exact Krylov-feature
reduction of :func:`iclab.algorithms.step_size_tuning.tune_gd_step_sizes`. Loops run over steps
only, never over prompts (O(n²) per step and prompt).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from iclab.algorithms.step_size_tuning import multistart_lbfgs, residual_polynomial
from iclab.kernels import KernelSpec, KernelTerm, as_kernel_terms, kernel_function
from iclab.prompt_shapes import as_step_sizes, check_prompts, matvec

__all__ = [
    "FunctionalGDResult",
    "TunedFunctionalSteps",
    "attention_kernel_weights",
    "functional_gd",
    "tune_functional_gd_steps",
]

AttentionKernel = KernelSpec  # a KernelSpec, or the name 'softmax'


def _normalize_kernel(kernel: AttentionKernel) -> str | list[KernelTerm]:
    if isinstance(kernel, str) and kernel == "softmax":
        return "softmax"
    return as_kernel_terms(kernel)


def attention_kernel_weights(
    keys: torch.Tensor, queries: torch.Tensor, kernel: AttentionKernel
) -> torch.Tensor:
    """``W[m, j]``: weight of key ``j`` for query ``m``; keys (…, n, d), queries (…, m, d) -> (…, m, n).

    ``k(x_j, x_m) / n`` for a kernel spec; ``softmax_j ⟨x_j, x_m⟩`` for ``'softmax'``.
    """
    k = _normalize_kernel(kernel)
    if k == "softmax":
        return torch.softmax(queries @ keys.transpose(-1, -2), dim=-1)
    return kernel_function(queries, keys, k) / keys.shape[-2]


@dataclass(frozen=True)
class FunctionalGDResult:
    """Output of :func:`functional_gd`.

    Attributes:
        prediction: (E, B) ``f_L(x_q)``.
        residuals: (E, B, n) ``y_j − f_L(x_j)``.
        trajectory: (E, B, L+1) ``f_ℓ(x_q)`` for ℓ = 0..L, or None.
    """

    prediction: torch.Tensor
    residuals: torch.Tensor
    trajectory: torch.Tensor | None


def functional_gd(
    x: torch.Tensor,
    y: torch.Tensor,
    x_query: torch.Tensor,
    kernel: AttentionKernel,
    step_sizes: torch.Tensor | Sequence[float] | float,
    return_trajectory: bool = False,
) -> FunctionalGDResult:
    """L steps of functional GD (module docstring) with steps (L,) or (E, L), batched.

    ``kernel``: a name ('linear', 'relu', 'exp'), a list of kernel terms (as in
    :class:`~iclab.tasks.gaussian_process.GaussianProcessConfig`), or ``'softmax'``.
    """
    check_prompts(x, y, x_query)
    steps = as_step_sizes(step_sizes, x)  # (E|1, L)
    W = attention_kernel_weights(x, torch.cat([x, x_query.unsqueeze(-2)], dim=-2), kernel)
    W_ctx, w_q = W[..., :-1, :], W[..., -1, :]
    r = y
    f = torch.zeros_like(y[..., 0])
    traj = [f] if return_trajectory else None
    for layer in range(steps.shape[1]):
        eta = steps[:, layer, None]  # (E|1, 1)
        f = f + eta * (w_q * r).sum(-1)
        r = r - eta.unsqueeze(-1) * matvec(W_ctx, r)
        if traj is not None:
            traj.append(f)
    return FunctionalGDResult(
        prediction=f,
        residuals=r,
        trajectory=torch.stack(torch.broadcast_tensors(*traj), -1) if traj is not None else None,
    )


@dataclass(frozen=True)
class TunedFunctionalSteps:
    """Result of :func:`tune_functional_gd_steps`.

    Attributes:
        step_sizes: float64 tuned steps, (E, L) if tuned per ensemble member, else (L,).
        loss: (E,) float64 mean squared query error on the tuning prompts.
        kernel: the attention kernel the steps were tuned for.
        initial_loss: (E,) loss of the best initial guess, before L-BFGS.
    """

    step_sizes: torch.Tensor
    loss: torch.Tensor
    kernel: str | list[KernelTerm]
    initial_loss: torch.Tensor

    @property
    def layers(self) -> int:
        return self.step_sizes.shape[-1]

    def predict(
        self, x: torch.Tensor, y: torch.Tensor, x_query: torch.Tensor
    ) -> FunctionalGDResult:
        """Run :func:`functional_gd` with the tuned steps on new prompts (in their dtype)."""
        return functional_gd(x, y, x_query, self.kernel, self.step_sizes.to(x.device, x.dtype))


def tune_functional_gd_steps(
    x: torch.Tensor,
    y: torch.Tensor,
    x_query: torch.Tensor,
    y_query: torch.Tensor,
    kernel: AttentionKernel,
    layers: int,
    per_ensemble: bool = True,
    init: torch.Tensor | Sequence[float] | None = None,
    max_iter: int = 100,
    local: bool = False,
) -> TunedFunctionalSteps:
    """Step sizes of L-step functional GD minimizing the mean squared query error (float64).

    Same method as :func:`~iclab.algorithms.step_size_tuning.tune_gd_step_sizes`: the loss is
    reduced exactly to the QR factor of the per-prompt Krylov features
    ``m_k = w_qᵀ W_ctx^k y`` (k < L) and ``y_q``; L-BFGS (strong Wolfe) runs from several
    deterministic guesses built from the spectrum of ``W_ctx`` (Chebyshev steps on
    ``[10⁻² λ̄, λ̄]`` and ``[10⁻⁴ λ̄, λ̄]``, spread steps ``c·(0.75…1.25)/λ̄``, ``λ̄`` the mean
    largest eigenvalue), plus ``init``; the best is kept (per member if ``per_ensemble``).
    Tune on held-out prompts; the tuning loss is optimistically biased by O(L/B).

    ``local=True`` runs L-BFGS from ``init`` only (per member, shape (E, L) or (L,)): the local
    minimum of the step-size landscape nearest to given steps (e.g. a trained model's).
    """
    check_prompts(x, y, x_query)
    if y_query.shape != x_query.shape[:-1]:
        raise ValueError(
            f"y_query: expected shape {tuple(x_query.shape[:-1])}, got {tuple(y_query.shape)}"
        )
    if layers < 1:
        raise ValueError(f"layers: must be >= 1, got {layers}")
    k = _normalize_kernel(kernel)
    f64 = torch.float64
    x, y, x_query, y_query = (t.to(f64) for t in (x, y, x_query, y_query))
    E, B = x.shape[:2]
    W = attention_kernel_weights(x, torch.cat([x, x_query.unsqueeze(-2)], dim=-2), k)
    W_ctx, w_q = W[..., :-1, :], W[..., -1, :]

    # initial guesses from the spectrum of W_ctx
    eig = torch.linalg.eigvals(W_ctx).real  # (E, B, n)
    hi = eig.amax(-1).mean(-1).clamp_min(torch.finfo(f64).tiny)  # (E,)
    kk = torch.arange(layers, dtype=f64, device=x.device)
    cos = torch.cos((2 * kk + 1) * math.pi / (2 * layers))
    guesses = []
    for ratio in (1e-2, 1e-4):
        lo = ratio * hi
        roots = (hi + lo).unsqueeze(-1) / 2 + (hi - lo).unsqueeze(-1) / 2 * cos
        guesses.append(1 / roots)
    spread = torch.linspace(0.75, 1.25, layers, dtype=f64, device=x.device) if layers > 1 else 1
    base = (1 / hi).unsqueeze(-1).expand(E, layers)
    guesses += [base * spread, 0.3 * base * spread]
    if init is not None:
        guesses.append(as_step_sizes(init, x, layers).expand(E, layers))
    if local:
        if init is None:
            raise ValueError("local: needs init (the steps to start from)")
        guesses = guesses[-1:]
    guesses = [g.expand(E, layers).clone() for g in guesses]

    # exact reduction: prediction = Σ_k α_k(η) m_k, loss = ‖R [α; −1]‖² / B
    features, v = [], y
    for _ in range(layers):
        features.append((w_q * v).sum(-1))
        v = matvec(W_ctx, v)
    R = torch.linalg.qr(torch.stack([*features, y_query], dim=-1), mode="r").R

    def objective(steps: torch.Tensor) -> torch.Tensor:
        z = torch.cat([residual_polynomial(steps), -torch.ones_like(steps[:, :1])], dim=-1)
        r = matvec(R, z)
        return ((r * r).sum(-1) / B).expand(E)

    def member_losses(steps: torch.Tensor) -> torch.Tensor:
        pred = functional_gd(x, y, x_query, k, steps).prediction
        return ((pred - y_query) ** 2).mean(-1).expand(E)

    best_steps, best_loss, best_initial = multistart_lbfgs(
        objective,
        member_losses,
        guesses,
        E,
        layers,
        per_ensemble,
        max_iter,
        "tune_functional_gd_steps",
    )
    return TunedFunctionalSteps(
        step_sizes=best_steps if per_ensemble else best_steps[0],
        loss=best_loss,
        kernel=k,
        initial_loss=best_initial,
    )
