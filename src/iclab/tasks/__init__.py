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
from iclab.tasks.markov_chain import MarkovChainBatch, MarkovChainConfig, MarkovChainTask

__all__ = [
    "GaussianProcessBatch",
    "GaussianProcessConfig",
    "GaussianProcessTask",
    "KernelTerm",
    "LinearRegressionBatch",
    "LinearRegressionConfig",
    "LinearRegressionTask",
    "MarkovChainBatch",
    "MarkovChainConfig",
    "MarkovChainTask",
    "gp_covariance",
    "kernel_function",
    "rotated_covariance",
]
