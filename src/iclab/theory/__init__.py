"""Closed-form and semi-analytic theory (pure float64 functions of distribution parameters).

- :mod:`iclab.theory.one_layer`: exact one-layer (one preconditioned GD step) population loss,
  its optimal preconditioner and optimal loss (Ahn et al. Theorem 1, any Σ, Σ_w, noise).
- :mod:`iclab.theory.multilayer`: best scalars of the sparse / PGD critical-point classes of
  Ahn et al. Theorems 3–4 (Σ_w = Σ⁻¹) via the Wishart-eigenvalue reduction.
- :mod:`iclab.theory.pgd_critical_points`: all critical points (minima and saddles) of that PGD
  class, the one a trained model reached, and the projection of trained matrices onto the class.
- :mod:`iclab.theory.constructions`: LSA weights that make the model equal PGD / GD++ exactly.

Conventions: ``A`` is the GD preconditioner (one sparse layer predicts ``x_qᵀ A (1/n) Xᵀ y``);
loss is the mean squared error without 1/2; see each module's docstring.
"""

from iclab.theory.constructions import gd_plus_plus_weights, preconditioned_gd_weights
from iclab.theory.functional_gd import (
    functional_gd_weights,
    gp_expected_loss,
    gp_posterior_mean,
    kernel_ridge,
)
from iclab.theory.multilayer import (
    PGDScalars,
    best_pgd_scalars,
    pgd_class_loss,
    pgd_class_matrices,
    pgd_class_sample_losses,
    wishart_eigenvalues,
)
from iclab.theory.one_layer import (
    one_layer_population_loss,
    one_layer_second_moment,
    optimal_one_layer_loss,
    preconditioner_optimum,
)
from iclab.theory.pgd_critical_points import (
    CriticalPoint,
    critical_point_near,
    pgd_critical_points,
    project_to_class,
)

__all__ = [
    "CriticalPoint",
    "PGDScalars",
    "best_pgd_scalars",
    "critical_point_near",
    "functional_gd_weights",
    "gd_plus_plus_weights",
    "gp_expected_loss",
    "gp_posterior_mean",
    "kernel_ridge",
    "one_layer_population_loss",
    "one_layer_second_moment",
    "optimal_one_layer_loss",
    "pgd_class_loss",
    "pgd_class_matrices",
    "pgd_class_sample_losses",
    "pgd_critical_points",
    "preconditioned_gd_weights",
    "preconditioner_optimum",
    "project_to_class",
    "wishart_eigenvalues",
]
