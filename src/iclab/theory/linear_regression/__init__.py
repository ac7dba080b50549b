"""Theory of linear-regression prompts (Ahn et al. 2023): one layer, the PGD class of L layers and its
critical points, and LSA weights that implement PGD / GD++ exactly.
"""

from iclab.theory.linear_regression.constructions import (
    gd_plus_plus_weights,
    preconditioned_gd_weights,
)
from iclab.theory.linear_regression.critical_points import (
    CriticalPoint,
    critical_point_near,
    nearest_critical_point,
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
    "gd_plus_plus_weights",
    "nearest_critical_point",
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
