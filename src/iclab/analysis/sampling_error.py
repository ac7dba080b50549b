"""How far trained weights stray from their population optimum because the training prompts are
finite: the sandwich covariance of a least-squares fit.

For weights θ̂ that minimize the mean squared query error over N training prompts, near the
population optimum θ*: θ̂ − θ* ≈ −H⁻¹ ĝ, with H = E[J Jᵀ] (the Gauss–Newton matrix, J the
per-prompt gradient of the prediction) and ĝ the empirical gradient at θ*, whose covariance is
V/N with V = E[r² J Jᵀ] (r the residual). Hence

    Cov(θ̂) ≈ H⁺ V H⁺ / N,

estimated at θ̂ on prompts the fit never saw. Directions the predictions never see (zero columns
of J, e.g. a last layer's covariate map) get zero variance through the pseudo-inverse. Heavy
tails in r make V, and so the covariance, hard to estimate; the estimate is a measurement, with
that caveat, not a bound.
"""

from __future__ import annotations

from typing import Any

import torch


def weight_covariance(model: Any, state: Any, target: torch.Tensor, n_train: int) -> torch.Tensor:
    """Sandwich covariance (E, P, P) of each member's weights, P in ``named_parameters`` order.

    ``model`` provides ``prediction_jacobian(state) -> (E, B, P)`` and ``predict_prepared``;
    ``state``/``target`` are fresh prompts; ``n_train`` is the number of prompts the weights
    were fitted on.
    """
    J = model.prediction_jacobian(state).double()
    with torch.no_grad():
        B = J.shape[1]
        r = (model.predict_prepared(state) - target).double()
        H = J.transpose(1, 2) @ J / B
        V = (J * r.pow(2).unsqueeze(-1)).transpose(1, 2) @ J / B
        Hp = torch.linalg.pinv(H, hermitian=True, rtol=1e-10)
        cov = Hp @ V @ Hp / n_train
        return (cov + cov.transpose(1, 2)) / 2


def gaussian_draws(cov: torch.Tensor, draws: int, seed: int = 0) -> torch.Tensor:
    """``draws`` samples of N(0, cov) per member: (E, draws, P), float64, from a fixed stream."""
    vals, vecs = torch.linalg.eigh(cov)
    root = vecs * vals.clamp(min=0).sqrt().unsqueeze(-2)  # cov = root rootᵀ
    gen = torch.Generator(device="cpu").manual_seed(seed)
    z = torch.randn(cov.shape[0], draws, cov.shape[-1], generator=gen, dtype=torch.float64)
    return z @ root.transpose(1, 2).cpu()
