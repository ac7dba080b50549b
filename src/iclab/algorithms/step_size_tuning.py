"""Tuning the step sizes of L-step (preconditioned) GD on a batch of held-out prompts.

The usual pattern (Ahn et al.'s loss-vs-L and loss-vs-n experiments) is to tune on one batch and evaluate on another:

    tuned = tune_gd_step_sizes(held.x, held.y, held.x_query, held.y_query, layers=3)
    test_pred = tuned.predict(test.x, test.y, test.x_query)

Tuning minimizes the empirical mean squared query error over the ``L`` step sizes in float64 with
L-BFGS (strong-Wolfe line search) from a few deterministic initial guesses and keeps the best.
The loss is a polynomial of degree 2L in the step sizes and, for a preconditioner shared by all
steps, symmetric under permuting them; a constant initial guess would keep L-BFGS on the
"all steps equal" subspace, so every guess has distinct steps.

Cost: the loss is reduced exactly, once, to a small triangular factor (see the comments in
:func:`tune_gd_step_sizes`): (L+1)×(L+1) for a preconditioner shared by all steps, 2^L × 2^L for
per-step preconditioners (L ≤ 8; beyond, every evaluation runs the L steps on all prompts, at
O(L·B·d²)). After that an L-BFGS evaluation costs O(L²) (or O(4^L)), independent of B. The
reported losses are recomputed directly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from iclab.algorithms.gradient_descent import (
    _gd_from_statistics,
    _layer_matrices,
    preconditioned_gd,
    sufficient_statistics,
)
from iclab.algorithms.least_squares import Prediction
from iclab.prompt_shapes import as_step_sizes, check_prompts, matvec

__all__ = ["TunedSteps", "multistart_lbfgs", "residual_polynomial", "tune_gd_step_sizes"]

# Per-step preconditioners: up to this many steps the loss is reduced exactly to 2^L features.
_MAX_MULTIAFFINE_LAYERS = 8


@dataclass(frozen=True)
class TunedSteps:
    """Result of :func:`tune_gd_step_sizes`.

    Attributes:
        step_sizes: float64 tuned steps, (E, L) if tuned per ensemble member, else (L,).
        loss: (E,) float64 mean squared query error of each member on the tuning prompts.
        preconditioner: the preconditioner the steps were tuned for (float64), or None.
        initial_loss: (E,) loss of the best initial guess, before L-BFGS (for diagnostics).
    """

    step_sizes: torch.Tensor
    loss: torch.Tensor
    preconditioner: torch.Tensor | None
    initial_loss: torch.Tensor

    @property
    def layers(self) -> int:
        return self.step_sizes.shape[-1]

    def predict(self, x: torch.Tensor, y: torch.Tensor, x_query: torch.Tensor) -> Prediction:
        """Run :func:`preconditioned_gd` with the tuned steps on new prompts (in their dtype)."""
        pre = None if self.preconditioner is None else self.preconditioner.to(x.device, x.dtype)
        return preconditioned_gd(x, y, x_query, self.step_sizes.to(x.device, x.dtype), pre)


def _initial_guesses(
    S: torch.Tensor, gamma: torch.Tensor | None, layers: int, n: int, E_out: int
) -> list[torch.Tensor]:
    """Deterministic starting steps, each (E_out, L), from the spectrum of the mean Hessian ΓS̄.

    With ``[a, b]`` an estimate of the range of the eigenvalues of the per-prompt preconditioned
    Hessian ``ΓS`` (those of ``Γ E[S]`` widened by the Marchenko–Pastur factors
    ``(1 ∓ √(d/n))²``): the Chebyshev steps ``1/λ_k`` at the roots ``λ_k`` of the degree-L
    Chebyshev polynomial on ``[a, b]``, and spread steps ``c·(0.75 … 1.25)/λ_max`` for
    ``c ∈ {1, 0.3}``.
    """
    d = S.shape[-1]
    mean_S = S.mean(1)  # (E, d, d)
    H = mean_S.unsqueeze(1) if gamma is None else gamma @ mean_S.unsqueeze(1)  # (E', L|1, d, d)
    eig = torch.linalg.eigvals(H).real  # (E', L|1, d)
    lam_max = eig.amax(-1).clamp_min(torch.finfo(S.dtype).tiny)
    lam_min = eig.amin(-1).clamp_min(0)
    r = math.sqrt(min(d / n, 1.0))
    hi = lam_max * (1 + r) ** 2
    lo = torch.maximum(lam_min * (1 - r) ** 2, 1e-3 * hi)
    k = torch.arange(layers, dtype=S.dtype, device=S.device)
    roots = (hi + lo).unsqueeze(-1) / 2 + (hi - lo).unsqueeze(-1) / 2 * torch.cos(
        (2 * k + 1) * math.pi / (2 * layers)
    )  # (E', L|1, L): the L roots for each layer's spectrum
    # one spectrum: its L roots; per-layer spectra: layer ℓ takes root ℓ of its own spectrum
    cheb = 1 / (roots[:, 0] if roots.shape[1] == 1 else torch.diagonal(roots, dim1=1, dim2=2))
    spread = torch.linspace(0.75, 1.25, layers, dtype=S.dtype, device=S.device) if layers > 1 else 1
    base = (1 / lam_max).expand(-1, layers)  # (E', L)
    guesses = [cheb, base * spread, 0.3 * base * spread]
    return [g.expand(E_out, layers).clone() for g in guesses]


def residual_polynomial(steps: torch.Tensor) -> torch.Tensor:
    """Coefficients α (E, L) of ``q(t) = (1 − Π_ℓ (1 − η_ℓ t)) / t = Σ_k α_k t^k``."""
    coeffs = [torch.ones_like(steps[:, 0])]  # Π (1 − η t), lowest degree first
    for layer in range(steps.shape[1]):
        eta = steps[:, layer]
        coeffs = (
            [coeffs[0]]
            + [coeffs[k] - eta * coeffs[k - 1] for k in range(1, len(coeffs))]
            + [-eta * coeffs[-1]]
        )
    return -torch.stack(coeffs[1:], dim=-1)


def tune_gd_step_sizes(
    x: torch.Tensor,
    y: torch.Tensor,
    x_query: torch.Tensor,
    y_query: torch.Tensor,
    layers: int,
    preconditioner: torch.Tensor | None = None,
    per_ensemble: bool = True,
    init: torch.Tensor | Sequence[float] | None = None,
    max_iter: int = 100,
) -> TunedSteps:
    """Step sizes of L-step (preconditioned) GD minimizing the mean squared query error.

    Minimizes ``mean_b (x_qᵀ w_L − y_q)²`` over ``η ∈ R^L`` where ``w_L`` is
    :func:`~iclab.algorithms.preconditioned_gd` from ``w0 = 0`` on each prompt. Runs L-BFGS
    (strong-Wolfe line search, float64) from each deterministic initial guess (see
    :func:`_initial_guesses`, plus ``init`` if given) and keeps the best result. With
    ``per_ensemble=True`` each ensemble member gets its own steps: the objective is the sum of the
    members' losses (each divided by its loss at the initial guess, for scale-free tolerances), so
    gradients separate, and the best guess is picked per member. With ``per_ensemble=False`` one
    set of steps minimizes the average loss over members.

    Tune on held-out prompts and evaluate on separate test prompts (:meth:`TunedSteps.predict`):
    the loss on the tuning prompts is optimistically biased (by O(L/B)).

    Args:
        x, y, x_query, y_query: tuning prompts, (E, B, n, d), (E, B, n), (E, B, d), (E, B).
        layers: number of GD steps ``L``.
        preconditioner: as for :func:`preconditioned_gd`: None, (d, d), (E, d, d), (E, L, d, d).
        per_ensemble: tune each member separately (True) or share one set of steps (False).
        init: an extra initial guess, (L,) or (E, L).
        max_iter: L-BFGS iterations per initial guess.

    Returns:
        :class:`TunedSteps`.
    """
    n, d = check_prompts(x, y, x_query)
    if y_query.shape != x_query.shape[:-1]:
        raise ValueError(
            f"y_query: expected shape {tuple(x_query.shape[:-1])}, got {tuple(y_query.shape)}"
        )
    if layers < 1:
        raise ValueError(f"layers: must be >= 1, got {layers}")
    f64 = torch.float64
    x, y, x_query, y_query = (t.to(f64) for t in (x, y, x_query, y_query))
    gamma = (
        None
        if preconditioner is None
        else _layer_matrices("preconditioner", preconditioner, x, d, layers, allow_shared=True)
    )
    S, b = sufficient_statistics(x, y)
    E_out = max(x.shape[0], 1 if gamma is None else gamma.shape[0])
    guesses = _initial_guesses(S, gamma, layers, n, E_out)
    if init is not None:
        guesses.append(as_step_sizes(init, x_query.expand(E_out, -1, -1), layers).expand(E_out, -1))

    # Precondition the statistics once when Γ is shared by all steps: Γ∇R = (ΓS) w − Γb.
    if gamma is not None and gamma.shape[1] == 1:
        G = gamma[:, 0].unsqueeze(1)
        S, b, gamma_loop = G @ S, matvec(G, b), None
    else:
        gamma_loop = gamma
    w0 = torch.zeros_like(b)
    B = x.shape[1]

    def member_losses(steps: torch.Tensor) -> torch.Tensor:
        """Direct evaluation: run the L steps on every prompt."""
        w, _ = _gd_from_statistics(S, b, steps, gamma_loop, w0)
        err = (w * x_query).sum(-1) - y_query
        return (err * err).mean(-1).expand(E_out)  # (E_out,)

    # Exact reduction of the loss to a small triangular factor: the prediction is linear in a
    # few per-prompt features m (B × k) with coefficients that are polynomials in η, so
    # loss = ‖[m, y_q] [coef(η); −1]‖² / B = ‖R [coef(η); −1]‖² / B with R from a QR
    # factorization of [m, y_q] (exact and stable, O(k²) per evaluation, independent of B).
    if gamma_loop is None:
        # Shared Γ: w_L = q(H) c with H = ΓS, c = Γb, q(t) = (1 − Π_ℓ(1 − η_ℓ t)) / t; the
        # features are the Krylov moments m_k = x_qᵀ H^k c, k < L.
        features, v = [], b
        for _ in range(layers):
            features.append((v * x_query).sum(-1))
            v = matvec(S, v)
        coefficients = residual_polynomial
    elif layers <= _MAX_MULTIAFFINE_LAYERS:
        # Per-step Γ_ℓ: w_L is multi-affine in η, w_L = Σ_T (Π_{ℓ∈T} η_ℓ) v_T over non-empty
        # subsets T = {t_1 < … < t_k} of the steps, v_T = (−H_{t_k}) ⋯ (−H_{t_2}) c_{t_1} with
        # H_ℓ = Γ_ℓ S, c_ℓ = Γ_ℓ b; the features are m_T = x_qᵀ v_T (2^L − 1 of them).
        H = [gamma_loop[:, k].unsqueeze(1) @ S for k in range(layers)]
        c = [matvec(gamma_loop[:, k].unsqueeze(1), b) for k in range(layers)]
        vs: list[torch.Tensor] = [b]  # index = subset bitmask; entry 0 unused
        for mask in range(1, 2**layers):
            top = mask.bit_length() - 1
            rest = mask ^ (1 << top)
            vs.append(c[top] if rest == 0 else -matvec(H[top], vs[rest]))
        features = [(v * x_query).sum(-1) for v in vs[1:]]
        bits = torch.tensor(
            [[(mask >> k) & 1 for k in range(layers)] for mask in range(1, 2**layers)],
            dtype=torch.bool,
            device=x.device,
        )

        def coefficients(steps: torch.Tensor) -> torch.Tensor:
            return torch.where(bits, steps.unsqueeze(-2), 1.0).prod(-1)  # (E', 2^L − 1)

    else:
        features = []
    if features:
        K = torch.stack(torch.broadcast_tensors(*features, y_query), dim=-1)  # (E', B, k+1)
        R = torch.linalg.qr(K, mode="r").R  # (E', min(B, k+1), k+1)

        def objective(steps: torch.Tensor) -> torch.Tensor:
            z = torch.cat([coefficients(steps), -torch.ones_like(steps[:, :1])], dim=-1)
            r = matvec(R, z)
            return ((r * r).sum(-1) / B).expand(E_out)

    else:
        objective = member_losses

    best_steps, best_loss, best_initial = multistart_lbfgs(
        objective,
        member_losses,
        guesses,
        E_out,
        layers,
        per_ensemble,
        max_iter,
        "tune_gd_step_sizes",
    )
    return TunedSteps(
        step_sizes=best_steps if per_ensemble else best_steps[0],
        loss=best_loss,
        preconditioner=None if preconditioner is None else torch.as_tensor(preconditioner).to(f64),
        initial_loss=best_initial,
    )


def multistart_lbfgs(
    objective: Callable[[torch.Tensor], torch.Tensor],
    member_losses: Callable[[torch.Tensor], torch.Tensor],
    guesses: Iterable[torch.Tensor],
    members: int,
    layers: int,
    per_ensemble: bool,
    max_iter: int,
    name: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Minimize ``objective`` (per-member losses of (E, L) steps) by L-BFGS from each guess.

    Keeps, per member (or jointly when not ``per_ensemble``), the guess whose result has the lowest
    ``member_losses``. Returns ``(steps (E, L), loss (E,), initial loss (E,))``; float64.
    """
    f64 = torch.float64
    guesses = list(guesses)
    device = guesses[0].device
    best_steps = torch.full((members, layers), math.nan, dtype=f64, device=device)
    best_loss = torch.full((members,), math.inf, dtype=f64, device=device)
    best_initial = torch.full((members,), math.inf, dtype=f64, device=device)
    for guess in guesses:
        start = guess if per_ensemble else guess.mean(0, keepdim=True)
        with torch.no_grad():
            initial = objective(start)
        if not torch.isfinite(initial).all():
            continue
        scale = initial.clamp_min(torch.finfo(f64).tiny)
        if not per_ensemble:
            scale = scale.mean()
        param = start.clone().requires_grad_(True)
        opt = torch.optim.LBFGS(
            [param],
            lr=1.0,
            max_iter=max_iter,
            history_size=20,
            tolerance_grad=1e-11,
            tolerance_change=1e-15,
            line_search_fn="strong_wolfe",
        )

        def closure(
            param: torch.Tensor = param, opt: torch.optim.LBFGS = opt, scale: torch.Tensor = scale
        ) -> torch.Tensor:
            opt.zero_grad()
            loss = (objective(param) / scale).sum()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            final = member_losses(param).nan_to_num(nan=math.inf)
            steps = param.detach().expand(members, layers)
            if per_ensemble:
                better = final < best_loss
            else:
                better = (final.mean() < best_loss.mean()).expand(members)
            best_steps = torch.where(better.unsqueeze(-1), steps, best_steps)
            best_loss = torch.where(better, final, best_loss)
            best_initial = torch.where(better, initial, best_initial)
    if not torch.isfinite(best_loss).all():
        raise RuntimeError(f"{name}: every initial guess diverged (non-finite loss)")
    return best_steps, best_loss, best_initial
