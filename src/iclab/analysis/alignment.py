"""Alignment of a model with an algorithm (von Oswald et al. 2023), for any predictor pair.

Both sides are callables ``predict(x, y, x_query) -> (E, B)``: a model's forward, or an
algorithm wrapped to return its predictions. Two measures, per ensemble member:

- **prediction difference**: ``E_prompts (ŷ_model − ŷ_algorithm)²`` (and its root);
- **sensitivity cosine**: the mean over prompts of the cosine between the input sensitivities
  ``∂ŷ/∂x_q`` of the two predictors (for a linear predictor ``x_qᵀ w``, the sensitivity is ``w``).

Evaluate on in-distribution prompts and on shifted ones (e.g. scaled inputs) to see whether the
model implements the algorithm or only matches it where it was trained.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

Predictor = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Alignment:
    prediction_difference: torch.Tensor  # (E,) mean squared difference of predictions
    sensitivity_cosine: torch.Tensor  # (E,) mean cosine of ∂ŷ/∂x_q

    @property
    def rms_difference(self) -> torch.Tensor:
        return self.prediction_difference.sqrt()


def input_sensitivity(
    predict: Predictor, x: torch.Tensor, y: torch.Tensor, x_query: torch.Tensor
) -> torch.Tensor:
    """``∂ŷ/∂x_q`` per prompt, (E, B, d). Each prediction depends only on its own query, so the
    gradient of the summed predictions is the per-prompt gradient."""
    with torch.enable_grad():
        xq = x_query.detach().clone().requires_grad_(True)
        out = predict(x, y, xq)
        (grad,) = torch.autograd.grad(out.sum(), xq)
    return grad


def alignment(
    model: Predictor,
    algorithm: Predictor,
    x: torch.Tensor,
    y: torch.Tensor,
    x_query: torch.Tensor,
    eps: float = 1e-12,
) -> Alignment:
    """Prediction difference and sensitivity cosine of two predictors on the same prompts."""
    with torch.no_grad():
        diff = (model(x, y, x_query) - algorithm(x, y, x_query)).pow(2).mean(-1)
    ga = input_sensitivity(model, x, y, x_query)
    gb = input_sensitivity(algorithm, x, y, x_query)
    cos = (ga * gb).sum(-1) / (ga.norm(dim=-1) * gb.norm(dim=-1)).clamp_min(eps)
    return Alignment(prediction_difference=diff, sensitivity_cosine=cos.mean(-1))
