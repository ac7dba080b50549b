"""Batched in-context learning algorithms used as baselines.

Inputs are prompts with a leading ensemble dimension ``E`` and batch dimension ``B``:
``x`` (E, B, n, d), ``y`` (E, B, n), ``x_query`` (E, B, d); outputs are :class:`Prediction` s with
predictions (E, B) and fitted weights (E, B, d). No per-prompt Python loops; any device and dtype.
"""

from iclab.algorithms.classic_baselines import (
    ClassifierPrediction,
    k_nearest_neighbors,
    linear_regression_classifier,
    linear_svm,
    logistic_regression,
)
from iclab.algorithms.gradient_descent import gd_plus_plus, preconditioned_gd, sufficient_statistics
from iclab.algorithms.kernel_methods import (
    FunctionalGDResult,
    TunedFunctionalSteps,
    functional_gd,
    tune_functional_gd_steps,
)
from iclab.algorithms.least_squares import Prediction, bayes_posterior_mean, ols, ridge
from iclab.algorithms.step_size_tuning import TunedSteps, tune_gd_step_sizes

__all__ = [
    "ClassifierPrediction",
    "FunctionalGDResult",
    "Prediction",
    "TunedFunctionalSteps",
    "TunedSteps",
    "bayes_posterior_mean",
    "functional_gd",
    "gd_plus_plus",
    "k_nearest_neighbors",
    "linear_regression_classifier",
    "linear_svm",
    "logistic_regression",
    "ols",
    "preconditioned_gd",
    "ridge",
    "sufficient_statistics",
    "tune_functional_gd_steps",
    "tune_gd_step_sizes",
]
