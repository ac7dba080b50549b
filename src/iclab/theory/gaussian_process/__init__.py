"""Theory of Gaussian-process prompts (Cheng et al. 2024): the GP posterior mean and Bayes risk,
kernel ridge, and the attention weights that implement functional gradient descent.
"""

from iclab.theory.gaussian_process.functional_gd import (
    functional_gd_weights,
    gp_expected_loss,
    gp_posterior_mean,
    kernel_ridge,
)

__all__ = [
    "functional_gd_weights",
    "gp_expected_loss",
    "gp_posterior_mean",
    "kernel_ridge",
]
