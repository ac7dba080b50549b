"""Baselines of Garg et al. (2022) evaluated at every prefix of in-context sequences.

**Convention.** Given sequences ``x`` (E, B, N, d), ``y`` (E, B, N) (a leading ensemble dimension
E, batch B, N examples per sequence), the prefix prediction at position ``i`` (0-based) is the
prediction for ``x_i`` of the learner fitted on the pairs ``(x_j, y_j)``, ``j = 0, …, i−1``, only;
at ``i = 0`` (no data) it is 0. Every baseline returns (E, B, N) predictions (the Lasso path
(A, E, B, N), one slice per penalty); an optional ``positions`` argument restricts the prefix
lengths evaluated (useful for the expensive learners), the others are NaN. Everything runs on the
inputs' device and dtype; the batched learners loop over prefix lengths, iterations or penalties,
never over prompts.

- :func:`prefix_least_squares`: minimum-norm least squares (SVD, numpy's ``rcond``);
- :func:`prefix_averaging`: ``ŵ = (1/i) Σ_{j<i} y_j x_j`` (one GD step from 0), cumulative sums;
- :func:`prefix_knn`: k-nearest-neighbour regression (k = 3);
- :func:`prefix_lasso`, :func:`prefix_lasso_path`: scikit-learn's Lasso objective over an α grid,
  exact homotopy path with a duality-gap certificate;
- :func:`prefix_two_layer_net`: a two-layer ReLU network trained by Adam, all prompts as one
  tensor program;
- :func:`prefix_decision_tree`, :func:`prefix_gradient_boosting`, :func:`prefix_sklearn`:
  scikit-learn regressors fitted per prompt and prefix in a process pool.
"""

from iclab.algorithms.prefix_baselines.knn import prefix_knn
from iclab.algorithms.prefix_baselines.lasso import DEFAULT_ALPHAS, prefix_lasso, prefix_lasso_path
from iclab.algorithms.prefix_baselines.linear import prefix_averaging, prefix_least_squares
from iclab.algorithms.prefix_baselines.sklearn_learners import (
    prefix_decision_tree,
    prefix_gradient_boosting,
    prefix_sklearn,
)
from iclab.algorithms.prefix_baselines.two_layer_net import (
    prefix_two_layer_net,
    two_layer_net_init,
)

__all__ = [
    "DEFAULT_ALPHAS",
    "prefix_averaging",
    "prefix_decision_tree",
    "prefix_gradient_boosting",
    "prefix_knn",
    "prefix_lasso",
    "prefix_lasso_path",
    "prefix_least_squares",
    "prefix_sklearn",
    "prefix_two_layer_net",
    "two_layer_net_init",
]
