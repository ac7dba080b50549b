"""Batched (preconditioned) gradient descent and GD++ as in-context learners.

Prompts follow iclab's row convention with a leading ensemble dimension: ``x`` (E, B, n, d),
``y`` (E, B, n), ``x_query`` (E, B, d). Both learners work on the in-context least-squares risk

    R(w) = (1/2n) ‖Xw − y‖²,   ∇R(w) = S w − b,   S = (1/n) XᵀX,   b = (1/n) Xᵀ y,

so after forming the per-prompt sufficient statistics ``(S, b)`` once (O(n·d²) per prompt) every
step costs O(d²) per prompt, whatever ``n``. Loops run over steps only, never over prompts, and
everything stays on the inputs' device and dtype (step sizes and matrices are moved there).

Parameters with an ensemble dimension (step sizes (E, L), preconditioners (E, d, d) …) may have
leading size ``E`` or 1; they broadcast against the data.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from iclab.algorithms.least_squares import Prediction
from iclab.prompt_shapes import (
    as_step_sizes,
    check_prompts,
    ensemble_compatible,
    matvec,
)

__all__ = ["gd_plus_plus", "preconditioned_gd", "sufficient_statistics"]


def sufficient_statistics(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``S = (1/n) XᵀX`` (E, B, d, d) and ``b = (1/n) Xᵀ y`` (E, B, d) of each prompt."""
    n = x.shape[-2]
    S = torch.einsum("ebni,ebnj->ebij", x, x) / n
    b = torch.einsum("ebni,ebn->ebi", x, y) / n
    return S, b


def _stack(weights: list[torch.Tensor]) -> torch.Tensor:
    """Stack per-step weights (E, B, d) into (E, B, L+1, d), broadcasting the ensemble axis."""
    return torch.stack(torch.broadcast_tensors(*weights), dim=-2)


def _layer_matrices(
    name: str, m: torch.Tensor, ref: torch.Tensor, d: int, layers: int, *, allow_shared: bool
) -> torch.Tensor:
    """Per-layer matrices as (E or 1, L or 1, d, d) on ``ref``'s device and dtype.

    Accepted: (d, d) and (E, d, d) (same matrix every layer) when ``allow_shared``; (L, d, d)
    when not (then a 3-d tensor means per-layer); (E, L, d, d) always.
    """
    m = torch.as_tensor(m, dtype=ref.dtype, device=ref.device)
    E = ref.shape[0]
    if allow_shared and m.dim() == 2:
        m = m[None, None]
    elif allow_shared and m.dim() == 3:
        m = m[:, None]
    elif not allow_shared and m.dim() == 3:
        m = m[None]
    if (
        m.dim() != 4
        or m.shape[-2:] != (d, d)
        or not ensemble_compatible(m.shape[0], E)
        or m.shape[1] not in ((1, layers) if allow_shared else (layers,))
    ):
        expected = (
            "(d, d), (E, d, d) or (E, L, d, d)" if allow_shared else "(L, d, d) or (E, L, d, d)"
        )
        raise ValueError(
            f"{name}: expected {expected} with E = {E}, L = {layers}, d = {d}; "
            f"got {tuple(torch.as_tensor(m).shape)}"
        )
    return m


def _initial_weights(w0: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    E, B, _, d = x.shape
    if w0 is None:
        return x.new_zeros(E, B, d)
    w0 = torch.as_tensor(w0, dtype=x.dtype, device=x.device)
    try:
        return w0.expand(E, B, d)
    except RuntimeError:
        raise ValueError(
            f"w0: expected a shape broadcastable to {(E, B, d)}, got {tuple(w0.shape)}"
        ) from None


def _gd_from_statistics(
    S: torch.Tensor,
    b: torch.Tensor,
    steps: torch.Tensor,
    gamma: torch.Tensor | None,
    w0: torch.Tensor,
    return_trajectory: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Core PGD loop on statistics. S (E,B,d,d), b (E,B,d), steps (E|1, L), gamma None or
    (E|1, L|1, d, d), w0 (E,B,d). Returns the final weights and optionally the trajectory."""
    L = steps.shape[1]
    eta = steps.unsqueeze(-1).unsqueeze(-1)  # (E|1, L, 1, 1)
    shared = gamma is not None and gamma.shape[1] == 1
    if shared:  # precondition the statistics once: Γ∇R(w) = (ΓS) w − Γ b
        G = gamma[:, 0].unsqueeze(1)  # (E|1, 1, d, d)
        S, b = G @ S, matvec(G, b)
    w = w0
    trajectory = [w] if return_trajectory else None
    for layer in range(L):
        grad = matvec(S, w) - b
        if gamma is not None and not shared:
            grad = matvec(gamma[:, layer].unsqueeze(1), grad)
        w = w - eta[:, layer] * grad
        if trajectory is not None:
            trajectory.append(w)
    return w, (_stack(trajectory) if trajectory is not None else None)


def preconditioned_gd(
    x: torch.Tensor,
    y: torch.Tensor,
    x_query: torch.Tensor,
    step_sizes: torch.Tensor | Sequence[float],
    preconditioner: torch.Tensor | None = None,
    w0: torch.Tensor | None = None,
    return_trajectory: bool = False,
) -> Prediction:
    """L steps of preconditioned gradient descent on ``R(w) = (1/2n)‖Xw − y‖²`` per prompt.

    ``w_{ℓ+1} = w_ℓ − η_ℓ Γ_ℓ ∇R(w_ℓ)``, ``ℓ = 0 … L−1``, prediction ``x_qᵀ w_L``. With
    ``Γ_ℓ = A_ℓ`` and ``η_ℓ = 1`` this is exactly an L-layer sparse-PGD linear self-attention
    (PGD form with B = 0); with ``Γ = None`` it is plain GD.

    Args:
        x: (E, B, n, d) context covariates.
        y: (E, B, n) context labels.
        x_query: (E, B, d) query covariates.
        step_sizes: ``η``, shape (L,) shared by all members or (E, L) per member.
        preconditioner: None (``Γ = I``), (d, d), per-member (E, d, d), or per-member and per-step
            (E, L, d, d) (use a leading 1 to share per-step matrices across members). ``Γ`` need
            not be symmetric.
        w0: initial weights, broadcastable to (E, B, d); default 0.
        return_trajectory: also return the weights after every step, (E, B, L+1, d).

    Returns:
        :class:`Prediction` with prediction (E, B), final weights (E, B, d) and optional trajectory.
    """
    _, d = check_prompts(x, y, x_query)
    steps = as_step_sizes(step_sizes, x)
    L = steps.shape[1]
    gamma = (
        None
        if preconditioner is None
        else _layer_matrices("preconditioner", preconditioner, x, d, L, allow_shared=True)
    )
    S, b = sufficient_statistics(x, y)
    w, traj = _gd_from_statistics(S, b, steps, gamma, _initial_weights(w0, x), return_trajectory)
    return Prediction(prediction=(w * x_query).sum(-1), weights=w, trajectory=traj)


def gd_plus_plus(
    x: torch.Tensor,
    y: torch.Tensor,
    x_query: torch.Tensor,
    preconditioners: torch.Tensor,
    covariate_maps: torch.Tensor | None = None,
    return_trajectory: bool = False,
) -> Prediction:
    """GD++ (von Oswald et al. 2023): the L-layer PGD-form LSA written as an algorithm.

    Layer ``ℓ`` with preconditioner ``A_ℓ`` and covariate map ``B_ℓ`` acts on the current
    covariates ``x_i^{(ℓ)}`` (context and query), the context residuals ``r_i`` (initially
    ``y_i``) and the accumulated prediction ``ŷ`` (initially 0):

        S_ℓ = (1/n) Σ_i x_i^{(ℓ)} x_i^{(ℓ)ᵀ},   Δ_ℓ = A_ℓ (1/n) Σ_i x_i^{(ℓ)} r_i
        r_i ← r_i − x_i^{(ℓ)ᵀ} Δ_ℓ,           ŷ ← ŷ + x_q^{(ℓ)ᵀ} Δ_ℓ
        x ← (I − B_ℓ S_ℓ A_ℓᵀ) x            (all covariates, context and query, with the old S_ℓ)

    The prediction is ``ŷ`` after L layers. This equals
    :class:`iclab.models.LinearSelfAttention` with parametrization ``'pgd'``, readout
    ``'negative'`` and ``set_pgd(A, B)`` (whose row-convention ``Q = [[−Aᵀ, 0], [0, 0]]`` puts
    ``Aᵀ`` in the covariate map), and for ``B = 0`` it is :func:`preconditioned_gd` with
    preconditioners ``A_ℓ`` and unit steps.

    Equivalently, with ``T_ℓ = Π_{k<ℓ} (I − B_k S_k A_kᵀ)`` (so ``x^{(ℓ)} = T_ℓ x``), the
    residuals are ``r_i = y_i − x_iᵀ w_ℓ`` for weights in the *original* coordinates following
    preconditioned GD with a data-dependent preconditioner,
    ``w_{ℓ+1} = w_ℓ − T_ℓᵀ A_ℓ T_ℓ ∇R(w_ℓ)``; this is how it is computed (from ``S``, ``b`` and
    ``T`` only, O(d³) per prompt and layer), and ``w_L`` is returned as the weights, so that the
    prediction is ``x_qᵀ w_L``.

    Args:
        x: (E, B, n, d) context covariates.
        y: (E, B, n) context labels.
        x_query: (E, B, d) query covariates.
        preconditioners: ``A``, (L, d, d) shared by all members or (E, L, d, d).
        covariate_maps: ``B``, same shapes as ``preconditioners``; None means ``B = 0``.
        return_trajectory: also return ``w_0 … w_L`` (original coordinates), (E, B, L+1, d).

    Returns:
        :class:`Prediction` with prediction (E, B), weights ``w_L`` (E, B, d), optional trajectory.
    """
    _, d = check_prompts(x, y, x_query)
    A = torch.as_tensor(preconditioners)
    if A.dim() not in (3, 4):
        raise ValueError(
            f"preconditioners: expected (L, d, d) or (E, L, d, d), got {tuple(A.shape)}"
        )
    L = A.shape[-3]
    A = _layer_matrices("preconditioners", A, x, d, L, allow_shared=False)
    Bm = (
        None
        if covariate_maps is None
        else _layer_matrices("covariate_maps", covariate_maps, x, d, L, allow_shared=False)
    )
    S0, b0 = sufficient_statistics(x, y)
    E, B = x.shape[:2]
    w = x.new_zeros(E, B, d)
    trajectory = [w] if return_trajectory else None
    T: torch.Tensor | None = None  # None stands for the identity
    for layer in range(L):
        A_l = A[:, layer].unsqueeze(1)  # (E|1, 1, d, d)
        grad = matvec(S0, w) - b0  # ∇R(w) in original coordinates
        if T is None:
            w = w - matvec(A_l, grad)
        else:
            w = w - matvec(T.transpose(-1, -2), matvec(A_l, matvec(T, grad)))
        if trajectory is not None:
            trajectory.append(w)
        if Bm is not None and layer < L - 1:
            S_l = S0 if T is None else T @ S0 @ T.transpose(-1, -2)
            M = Bm[:, layer].unsqueeze(1) @ S_l @ A_l.transpose(-1, -2)
            T = torch.eye(d, dtype=x.dtype, device=x.device) - M if T is None else T - M @ T
    return Prediction(
        prediction=(w * x_query).sum(-1),
        weights=w,
        trajectory=_stack(trajectory) if trajectory is not None else None,
    )
