"""Batched in-context learning algorithms used as baselines (science.md §0–§1).

Inputs are prompts with a leading ensemble dimension ``E`` and batch dimension ``B``:
``x`` (E, B, n, d), ``y`` (E, B, n), ``x_query`` (E, B, d); outputs are :class:`Prediction` s with
predictions (E, B) and fitted weights (E, B, d). No per-prompt Python loops; any device and dtype.
"""

from iclab.algorithms.gradient_descent import gd_plus_plus, preconditioned_gd, sufficient_statistics
from iclab.algorithms.least_squares import Prediction, bayes_posterior_mean, ols, ridge
from iclab.algorithms.step_size_tuning import TunedSteps, tune_gd_step_sizes

__all__ = [
    "Prediction",
    "TunedSteps",
    "bayes_posterior_mean",
    "gd_plus_plus",
    "ols",
    "preconditioned_gd",
    "ridge",
    "sufficient_statistics",
    "tune_gd_step_sizes",
]
