"""Batched in-context learning algorithms used as baselines.

Inputs are prompts with a leading ensemble dimension ``E`` and batch dimension ``B``:
``x`` (E, B, n, d), ``y`` (E, B, n), ``x_query`` (E, B, d); outputs are :class:`Prediction` s with
predictions (E, B) and fitted weights (E, B, d). No per-prompt Python loops; any device and dtype.
:mod:`iclab.algorithms.prefix_baselines` holds Garg et al.'s baselines evaluated at every prefix of
sequences ``x`` (E, B, N, d), ``y`` (E, B, N).
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
from iclab.algorithms.prefix_baselines import (
    prefix_averaging,
    prefix_decision_tree,
    prefix_gradient_boosting,
    prefix_knn,
    prefix_lasso,
    prefix_lasso_path,
    prefix_least_squares,
    prefix_sklearn,
    prefix_two_layer_net,
)
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
    "prefix_averaging",
    "prefix_decision_tree",
    "prefix_gradient_boosting",
    "prefix_knn",
    "prefix_lasso",
    "prefix_lasso_path",
    "prefix_least_squares",
    "prefix_sklearn",
    "prefix_two_layer_net",
    "ridge",
    "sufficient_statistics",
    "tune_functional_gd_steps",
    "tune_gd_step_sizes",
]
