"""Levenberg–Marquardt iterations on the squared query error of an ensemble model.

For a model whose loss is ``mean_b (ŷ_b(θ) − y_b)²`` and whose per-member parameter count P is
small, one iteration solves the damped Gauss–Newton system per member,

    (JᵀJ/B + λ·s·I) δ = Jᵀr/B,    θ ← θ − δ,

with ``J`` (B × P) the per-prompt gradients of the prediction, ``r = ŷ − y`` the residuals and
``s`` the mean diagonal of ``JᵀJ/B`` (so λ is scale-free). A member's step is accepted only when
it does not raise that member's loss on the same batch (beyond float rounding); otherwise λ
grows tenfold and the step is solved again (at most ``MAX_TRIES`` times per iteration, after
which the member keeps its parameters and its λ); an accepted step divides λ by 3.
After the fixed-batch iterations, :func:`averaging_step` takes Gauss–Newton steps on *fresh*
batches with step sizes η_j = 1/2, 1/3, …: on batch j, ``θ ← θ − η_j (H_j + λ·s·I)⁻¹ g_j(θ)``
with ``g_j(θ) ≈ H_j (θ − θ̂_j)``, θ̂_j the batch's own optimum, so the iterate is (to first
order) the running mean of the batches' optima and its sampling error keeps falling with the
prompts seen, instead of stopping at the fixed batch's (whose optimum over-fits rare,
heavy-tailed prompts). Each step uses its own batch's Gauss–Newton matrix: a batch with an
extreme prompt has a large gradient *and* a large curvature, so the step stays bounded (one
fixed preconditioner for all batches diverged on such a batch in our runs).

Importance-weighted batches (``weights`` w_b ≥ 0 per prompt, e.g. the likelihood ratios of a
tilted sampler): every function takes an optional (E, B) float64 ``weights``, the loss becomes
``mean_b w_b (ŷ_b − y_b)²`` and the system ``(JᵀWJ/B + λ·s·I) δ = JᵀWr/B``, W = diag(w);
``weights=None`` is the unweighted computation above, bit for bit.

Gauss–Newton steps are invariant to invertible linear reparametrizations of θ (up to the
damping), so a rotated input covariance, which makes first-order methods crawl along
directions of tiny curvature, costs them nothing. Members are independent: each has its own
system, its own λ and its own acceptance. Everything is deterministic given (θ, λ, batch), so a
run resumed from a checkpoint that stores λ repeats the uninterrupted iterations exactly.
"""

from __future__ import annotations

from typing import Any

import torch

MAX_TRIES = 8
ROUNDING = 1e-6  # relative loss increase treated as no change (float32 predictions)


def _mean_square(r: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """mean_b r_b² or, with weights, mean_b w_b r_b² (E,), float64."""
    return r.pow(2).mean(-1) if weights is None else (weights * r.pow(2)).mean(-1)


def _loss(
    model: Any, state: Any, target: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    return _mean_square((model.predict_prepared(state) - target).double(), weights)


def _gauss_newton(
    model: Any, state: Any, target: torch.Tensor, weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(JᵀWJ/B (E, P, P), JᵀWr/B (E, P), per-member loss (E,), mean diagonal of JᵀWJ/B (E,)),
    W = diag(weights) (the identity when None)."""
    J = model.prediction_jacobian(state).double()  # (E, B, P)
    with torch.no_grad():
        B = J.shape[1]
        r = (model.predict_prepared(state) - target).double()
        loss = _mean_square(r, weights)
        if weights is not None:
            # √w on both factors keeps JᵀWJ symmetric positive semi-definite; in place: the
            # Jacobian is a fresh tensor of this call (and the largest one of polishing)
            root = weights.to(J.dtype).sqrt()
            J.mul_(root.unsqueeze(-1))
            r = r * root
        H = J.transpose(1, 2) @ J / B
        g = (J.transpose(1, 2) @ r.unsqueeze(-1)).squeeze(-1) / B
        scale = H.diagonal(dim1=1, dim2=2).mean(-1).clamp(min=torch.finfo(H.dtype).tiny)
        finite = H.isfinite().flatten(1).all(1) & g.isfinite().all(1)  # (E,)
        if not bool(finite.all()):
            # e.g. a float32 overflow on one extreme prompt: the system cannot be solved, and
            # retrying with more damping would silently make no progress
            bad = (~finite).nonzero().flatten().tolist()
            raise FloatingPointError(
                f"the Gauss–Newton system is not finite for ensemble member(s) {bad} "
                "(a prompt's prediction or gradient overflowed)"
            )
        return H, g, loss, scale


def _solve(
    H: torch.Tensor, g: torch.Tensor, lam: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """(H + λ·s·I)⁻¹ g per member by Cholesky: the damped system is positive definite. (Batched
    ``torch.linalg.solve`` — LU — raised oneMKL DLASWP errors and hung with 2 threads on
    (3, 200, 200) float64 systems, the size of an L = 4 model; Cholesky is also the cheaper
    factorization.) A member whose factorization fails gets a NaN step, which the caller
    rejects like any step that raises the loss."""
    eye = torch.eye(H.shape[-1], dtype=H.dtype, device=H.device)
    system = H + (lam * scale)[:, None, None] * eye
    factor, info = torch.linalg.cholesky_ex(system)
    step = torch.cholesky_solve(g.unsqueeze(-1), factor).squeeze(-1)  # (E, P)
    return torch.where((info == 0)[:, None], step, torch.full_like(step, float("nan")))


@torch.no_grad()
def _set(params: list[torch.nn.Parameter], base: list[torch.Tensor], step: torch.Tensor) -> None:
    """params ← base − step, ``step`` (E, P) flattened in the parameters' order."""
    offset = 0
    for p, p0 in zip(params, base):
        size = p0[0].numel()
        p.copy_(p0 - step[:, offset : offset + size].reshape(p0.shape).to(p0.dtype))
        offset += size


def averaging_step(
    model: Any,
    state: Any,
    target: torch.Tensor,
    damping: torch.Tensor,
    eta: float,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """θ ← θ − η (JᵀWJ/B + λ·s·I)⁻¹ JᵀWr/B on a fresh batch, in place, per member; no acceptance
    test (a test on the same batch would bias the average). ``weights``: the batch's per-prompt
    weights (E, B) float64, or None for all ones. Returns each member's (weighted) loss on the
    batch before the step (E,)."""
    params = [p for _, p in model.named_parameters()]
    H, g, f0, scale = _gauss_newton(model, state, target, weights)
    base = [p.detach().clone() for p in params]
    _set(params, base, eta * _solve(H, g, damping, scale))
    return f0


def lm_iteration(
    model: Any,
    state: Any,
    target: torch.Tensor,
    damping: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One iteration in place on ``model``'s parameters. ``damping``: (E,) float64;
    ``weights``: the batch's per-prompt weights (E, B) float64, or None for all ones.

    Returns (the new damping (E,), each member's (weighted) loss on the batch after the
    iteration (E,)).
    """
    params = [p for _, p in model.named_parameters()]
    H, g, f0, scale = _gauss_newton(model, state, target, weights)
    with torch.no_grad():
        old = [p.detach().clone() for p in params]
        lam = damping.clone()
        accepted = torch.zeros_like(f0, dtype=torch.bool)
        f1 = f0
        for _ in range(MAX_TRIES):
            _set(params, old, _solve(H, g, lam, scale))
            f1 = _loss(model, state, target, weights)
            # at convergence the change is rounding noise: a step that raises the loss by less
            # than ROUNDING (relative) is harmless and keeps λ from running away
            accepted = torch.isfinite(f1) & (f1 <= f0 * (1.0 + ROUNDING))
            if bool(accepted.all()):
                break
            lam = torch.where(accepted, lam, lam * 10.0)
        for p, p0 in zip(params, old):
            keep = accepted.view(-1, *([1] * (p.dim() - 1)))
            p.copy_(torch.where(keep, p, p0))
        # accepted: trust the model more; never accepted: back to the entering λ
        lam = torch.where(accepted, lam / 3.0, damping).clamp(min=1e-12, max=1e12)
        return lam, torch.where(accepted, f1, f0)
