"""Theory of linear-dynamics sequences (Zheng et al. 2024): the mesa-optimizer, the limit c* of the
trained ab, and the data condition for recovery.
"""

from iclab.theory.linear_dynamics.mesa_optimizer import (
    LAWS,
    OptimalAB,
    X1Moments,
    diagonal_unitary_sequences,
    harmonic_number,
    limit_ab,
    mesa_loss,
    mesa_optimizer_prediction,
    mesa_optimizer_weights,
    optimal_ab_from_sequences,
    optimal_ab_monte_carlo,
    predicted_mean_ratio,
    predicted_ratio,
    recovers_sequence,
    x1_moments,
    x1_moments_monte_carlo,
)

__all__ = [
    "LAWS",
    "OptimalAB",
    "X1Moments",
    "diagonal_unitary_sequences",
    "harmonic_number",
    "limit_ab",
    "mesa_loss",
    "mesa_optimizer_prediction",
    "mesa_optimizer_weights",
    "optimal_ab_from_sequences",
    "optimal_ab_monte_carlo",
    "predicted_mean_ratio",
    "predicted_ratio",
    "recovers_sequence",
    "x1_moments",
    "x1_moments_monte_carlo",
]
