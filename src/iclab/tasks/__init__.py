"""Samplers of random in-context-learning problem instances."""

from iclab.tasks.linear_regression import (
    LinearRegressionBatch,
    LinearRegressionConfig,
    LinearRegressionTask,
    rotated_covariance,
)

__all__ = [
    "LinearRegressionBatch",
    "LinearRegressionConfig",
    "LinearRegressionTask",
    "rotated_covariance",
]
