"""Samplers of random in-context-learning problem instances."""

from iclab.tasks.gaussian_process import (
    GaussianProcessBatch,
    GaussianProcessConfig,
    GaussianProcessTask,
    KernelTerm,
    gp_covariance,
    kernel_function,
)
from iclab.tasks.linear_regression import (
    LinearRegressionBatch,
    LinearRegressionConfig,
    LinearRegressionTask,
    rotated_covariance,
)

__all__ = [
    "GaussianProcessBatch",
    "GaussianProcessConfig",
    "GaussianProcessTask",
    "KernelTerm",
    "LinearRegressionBatch",
    "LinearRegressionConfig",
    "LinearRegressionTask",
    "gp_covariance",
    "kernel_function",
    "rotated_covariance",
]
