"""Closed-form and semi-analytic theory: pure float64 functions of distribution parameters, laid
out like the tasks, one sub-package per task family.

- :mod:`iclab.theory.linear_regression` (Ahn et al. 2023): the exact one-layer loss and its optimum
  (``one_layer``), the PGD class of L layers by the Wishart-eigenvalue reduction (``multilayer``),
  its critical points (``critical_points``) and LSA weights that implement PGD / GD++
  (``constructions``).
- :mod:`iclab.theory.gaussian_process` (Cheng et al. 2024): the GP posterior mean and Bayes risk,
  kernel ridge and the weights that implement functional GD (``functional_gd``).
- :mod:`iclab.theory.markov_chain` (Ding et al. 2025): the Bayes predictor (``bayes``), the convex
  optimum of one layer (``one_layer``), its realizability (``realizability``) and the multi-layer
  recursion (``multilayer``).
- :mod:`iclab.theory.linear_dynamics` (Zheng et al. 2024): the mesa-optimizer, the limit c* of
  the trained ab and the recovery condition (``mesa_optimizer``).

Conventions: ``A`` is the GD preconditioner (one sparse layer predicts ``x_qᵀ A (1/n) Xᵀ y``);
loss is the mean squared error without 1/2; see each module's docstring. The names most used by
the experiments are re-exported here.
"""

from iclab.theory.gaussian_process.functional_gd import (
    functional_gd_weights,
    gp_expected_loss,
    gp_posterior_mean,
    kernel_ridge,
)
from iclab.theory.linear_regression.constructions import (
    gd_plus_plus_weights,
    preconditioned_gd_weights,
)
from iclab.theory.linear_regression.critical_points import (
    CriticalPoint,
    critical_point_near,
    pgd_critical_points,
    project_to_class,
)
from iclab.theory.linear_regression.multilayer import (
    TAIL_SCALES,
    PGDScalars,
    best_pgd_scalars,
    pgd_class_loss,
    pgd_class_matrices,
    pgd_class_sample_losses,
    wishart_eigenvalues,
    wishart_sample,
)
from iclab.theory.linear_regression.one_layer import (
    one_layer_population_loss,
    one_layer_second_moment,
    optimal_one_layer_loss,
    preconditioner_optimum,
)
from iclab.theory.linear_regression.wishart_moments import (
    exact_pgd_stationary_point,
    pgd_class_loss_exact,
    wishart_trace_moments,
)

__all__ = [
    "TAIL_SCALES",
    "CriticalPoint",
    "PGDScalars",
    "best_pgd_scalars",
    "critical_point_near",
    "exact_pgd_stationary_point",
    "functional_gd_weights",
    "gd_plus_plus_weights",
    "gp_expected_loss",
    "gp_posterior_mean",
    "kernel_ridge",
    "one_layer_population_loss",
    "one_layer_second_moment",
    "optimal_one_layer_loss",
    "pgd_class_loss",
    "pgd_class_loss_exact",
    "pgd_class_matrices",
    "pgd_class_sample_losses",
    "pgd_critical_points",
    "preconditioned_gd_weights",
    "preconditioner_optimum",
    "project_to_class",
    "wishart_eigenvalues",
    "wishart_sample",
    "wishart_trace_moments",
]
