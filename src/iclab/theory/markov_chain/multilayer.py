"""What each layer of a multi-layer LSA does to the query's prediction (Ding et al. 2025).

Model: :class:`~iclab.models.LinearSelfAttention` with ``parametrization='label_row'`` and
``readout='positive'`` (Ding et al.): layer ℓ has the last row ``b_ℓ = (β_ℓ, γ_ℓ)`` of P
(β ∈ R^d, γ scalar) and the first d columns ``A_ℓ = [Ā_ℓ; α_ℓᵀ]`` of Q (Ā ∈ R^{d×d}, α ∈ R^d);
heads add. Only label slots move, and every token's slot moves by ``x_mᵀ v_ℓ`` with one vector
``v_ℓ = Σ_h A_ℓhᵀ G_ℓ b_ℓh``, where ``G_ℓ`` is the context Gram matrix ``(1/n) Σ_i z_i z_iᵀ`` of
the current tokens. Hence (derived here, checked against the model in the tests):

    slot of token m after ℓ layers = y_m + x_mᵀ w_ℓ    (the query: x_qᵀ w_ℓ = its prediction),
    w_0 = 0,   w_{ℓ+1} = w_ℓ + v_ℓ(w_ℓ),

with ``z_i(w) = [x_i; r_i(w)]``, ``r_i(w) = y_i + x_iᵀ w``. Write ``S = (1/n) Σ x_i x_iᵀ`` and
the *square loss* ``R(w) = (1/2n) Σ_i r_i(w)²``, so ``∇R(w) = S w + (1/n) Σ x_i y_i`` and
``(1/n) Σ r_i² = 2R(w)``. Expanding ``G(w) b`` gives, per head, the exact decomposition

    v(w) = −Γ ∇R(w)  +  c  +  2γ R(w) α,
    Γ = −(γ Āᵀ + α βᵀ),   c = Āᵀ S β.

- ``−Γ ∇R(w) + c`` is one *preconditioned gradient step* (preconditioner Γ, data-independent)
  on the square loss plus a linear term, ``J₁(w) = R(w) + pᵀw`` with ``Γ p = −c`` (p the
  minimum-norm least-squares solution, ``p = −Γ⁺c``, when Γ is singular; the step equals
  ``−Γ∇J₁`` exactly whenever c is in the range of Γ, and the residual is reported).
- ``2γ R(w) α`` is a step along the fixed direction α whose length is the square loss itself.
  It is *not* ``−Γ∇J`` for any J with the same Γ (the field ``R(w) α`` is curl-free only when
  ∇R ∥ α), but it is exactly the rank-one preconditioned gradient ``−Γ_α ∇J₂(w)`` with
  ``Γ_α = α αᵀ / ‖α‖²`` of the *cubic* ``J₂(w) = −(2γ/‖α‖²)·∫₀^{αᵀw} R(w − (αᵀw − τ) α/‖α‖²) dτ``
  (the antiderivative of R along α; :func:`cubic_objective`).

This is iclab's precise reading of the paper's statement that each layer is a preconditioned
gradient step on "the square loss plus linear terms" and on "a cubic penalty": the first holds
with one preconditioner per layer, the second only with its own rank-one preconditioner.
Sums over heads add the terms (Γ, c and γα sum).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from iclab.prompt_shapes import check_prompts

__all__ = [
    "LayerReading",
    "cubic_objective",
    "label_row_reading",
    "square_loss",
]

F64 = torch.float64


def square_loss(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``R(w) = (1/2n) Σ_i (y_i + x_iᵀ w)²``: w (…, d), x (…, n, d), y (…, n) -> (…)."""
    r = y + (x @ w.unsqueeze(-1)).squeeze(-1)
    return 0.5 * (r * r).mean(-1)


def cubic_objective(
    w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, direction: torch.Tensor
) -> torch.Tensor:
    """``J₂(w) = −2 ∫₀^{uᵀw} R(w₀ + τ u/‖u‖²) dτ`` with ``w₀ = w − (uᵀw) u/‖u‖²`` (u = direction),
    so that ``−(u uᵀ/‖u‖²) ∇J₂(w) = 2 R(w) u``. The integrand is quadratic in τ: Simpson's rule
    is exact. Shapes: w (…, d), x (…, n, d), y (…, n), direction (…, d) -> (…)."""
    u2 = (direction * direction).sum(-1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
    t = (direction * w).sum(-1, keepdim=True)
    base = w - t * direction / u2

    def R_at(tau: torch.Tensor) -> torch.Tensor:
        return square_loss(base + tau * direction / u2, x, y)

    return -2 * t.squeeze(-1) / 6 * (R_at(0 * t) + 4 * R_at(t / 2) + R_at(t))


@dataclass(frozen=True)
class LayerReading:
    """The derivation evaluated on prompts (float64), L layers, E members, B prompts.

    ``w`` (E, B, L+1, d): the weight trajectory; ``prediction`` (E, B, L+1) = x_qᵀ w_ℓ.
    ``gradient_term``, ``linear_term``, ``cubic_term`` (E, B, L, d): −Γ_ℓ∇R(w_ℓ), c_ℓ and
    2R(w_ℓ)·Σ_h γ_h α_h — they add up to ``w_{ℓ+1} − w_ℓ`` exactly. ``preconditioner``
    (E, L, d, d): Γ_ℓ. ``square_loss`` (E, B, L+1): R(w_ℓ). ``objective_1`` and ``objective_2``
    (E, B, L, 2): layer ℓ's own J₁ (square loss plus linear term) and cubic J₂ evaluated before
    and after its step, at w_ℓ and w_{ℓ+1}. ``linear_residual`` (E, B, L): ‖Γp + c‖ / ‖c‖, 0 when
    c is in the range of Γ (then the first two terms are exactly −Γ∇J₁).
    """

    w: torch.Tensor
    prediction: torch.Tensor
    gradient_term: torch.Tensor
    linear_term: torch.Tensor
    cubic_term: torch.Tensor
    preconditioner: torch.Tensor
    square_loss: torch.Tensor
    objective_1: torch.Tensor
    objective_2: torch.Tensor
    linear_residual: torch.Tensor


def label_row_reading(
    b: torch.Tensor, A: torch.Tensor, x: torch.Tensor, y: torch.Tensor, x_query: torch.Tensor
) -> LayerReading:
    """Evaluate the derivation of the module docstring for every layer.

    ``b`` (E, L, H, d+1) and ``A`` (E, L, H, d+1, d) are a label_row model's ``value_row`` and
    ``query_columns``; prompts x (E, B, n, d), y (E, B, n), x_query (E, B, d). Computed in float64.
    """
    check_prompts(x, y, x_query)
    b, A, x, y, xq = (t.detach().to(F64) for t in (b, A, x, y, x_query))
    E, L, H, D = b.shape
    d = D - 1
    if A.shape != (E, L, H, D, d) or x.shape[0] != E or x.shape[-1] != d:
        raise ValueError(
            f"b, A, x: expected (E, L, H, d+1), (E, L, H, d+1, d), (E, B, n, d); got "
            f"{tuple(b.shape)}, {tuple(A.shape)}, {tuple(x.shape)}"
        )
    beta, gamma = b[..., :d], b[..., d]  # (E, L, H, d), (E, L, H)
    Abar, alpha = A[..., :d, :], A[..., d, :]  # (E, L, H, d, d), (E, L, H, d)
    S = x.transpose(-1, -2) @ x / x.shape[-2]  # (E, B, d, d)
    sy = (x * y.unsqueeze(-1)).mean(-2)  # (E, B, d)
    # per layer (summed over heads): Γ (E, L, d, d), c (E, B, L, d), γα (E, L, d)
    Gamma = -(gamma[..., None, None] * Abar.transpose(-1, -2)
              + alpha.unsqueeze(-1) * beta.unsqueeze(-2)).sum(2)  # fmt: skip
    c = torch.einsum("elhij,ebik,elhk->eblj", Abar, S, beta)
    ga = (gamma.unsqueeze(-1) * alpha).sum(2)  # (E, L, d)
    w = torch.zeros_like(xq)
    ws, grads, cubics, Rs, J1s, J2s, resid = [w], [], [], [], [], [], []
    for layer in range(L):
        G_l = Gamma[:, layer].unsqueeze(1)  # (E, 1, d, d)
        grad_R = (S @ w.unsqueeze(-1)).squeeze(-1) + sy
        R = square_loss(w, x, y)
        g_term = -(G_l @ grad_R.unsqueeze(-1)).squeeze(-1)
        c_l = c[:, :, layer]
        u = ga[:, layer].unsqueeze(1)  # (E, 1, d)
        cub = 2 * R.unsqueeze(-1) * u
        # p with Γ p = −c: the minimum-norm least-squares solution, through the SVD
        # pseudo-inverse so that a singular Γ gives the same p on every device (lstsq's CUDA
        # driver, gels, assumes full rank); and how well it reproduces c
        p = -(torch.linalg.pinv(G_l) @ c_l.unsqueeze(-1)).squeeze(-1)
        fit = -(G_l @ p.unsqueeze(-1)).squeeze(-1)
        resid.append((fit - c_l).norm(dim=-1) / c_l.norm(dim=-1).clamp_min(1e-300))
        w_next = w + g_term + c_l + cub
        J1s.append(torch.stack([square_loss(v, x, y) + (p * v).sum(-1) for v in (w, w_next)], -1))
        J2s.append(torch.stack([cubic_objective(v, x, y, u.expand_as(v)) for v in (w, w_next)], -1))
        grads.append(g_term)
        cubics.append(cub)
        Rs.append(R)
        w = w_next
        ws.append(w)
    Rs.append(square_loss(w, x, y))
    W = torch.stack(ws, dim=-2)  # (E, B, L+1, d)
    return LayerReading(
        w=W,
        prediction=(W * xq.unsqueeze(-2)).sum(-1),
        gradient_term=torch.stack(grads, dim=-2),
        linear_term=c,
        cubic_term=torch.stack(cubics, dim=-2),
        preconditioner=Gamma,
        square_loss=torch.stack(Rs, dim=-1),
        objective_1=torch.stack(J1s, dim=-2),
        objective_2=torch.stack(J2s, dim=-2),
        linear_residual=torch.stack(resid, dim=-1),
    )
