"""Samplers of random in-context-learning problem instances."""

from iclab.batches import PromptBatch, SequenceBatch
from iclab.registry import import_all_modules
from iclab.tasks.ensemble_task import EnsembleTask
from iclab.tasks.function_class import FunctionClassBatch, FunctionClassConfig, FunctionClassTask
from iclab.tasks.function_classes import FunctionParams, draw_functions, evaluate
from iclab.tasks.gaussian_process import (
    GaussianProcessBatch,
    GaussianProcessConfig,
    GaussianProcessTask,
    KernelTerm,
    gp_covariance,
    kernel_function,
)
from iclab.tasks.linear_dynamics import (
    LinearDynamicsBatch,
    LinearDynamicsConfig,
    LinearDynamicsTask,
)
from iclab.tasks.linear_regression import (
    LinearRegressionBatch,
    LinearRegressionConfig,
    LinearRegressionTask,
    rotated_covariance,
)
from iclab.tasks.markov_chain import MarkovChainBatch, MarkovChainConfig, MarkovChainTask

__all__ = [
    "EnsembleTask",
    "FunctionClassBatch",
    "FunctionClassConfig",
    "FunctionClassTask",
    "FunctionParams",
    "GaussianProcessBatch",
    "GaussianProcessConfig",
    "GaussianProcessTask",
    "KernelTerm",
    "LinearDynamicsBatch",
    "LinearDynamicsConfig",
    "LinearDynamicsTask",
    "LinearRegressionBatch",
    "LinearRegressionConfig",
    "LinearRegressionTask",
    "MarkovChainBatch",
    "MarkovChainConfig",
    "MarkovChainTask",
    "PromptBatch",
    "SequenceBatch",
    "draw_functions",
    "evaluate",
    "gp_covariance",
    "kernel_function",
    "rotated_covariance",
]


# import every module of the package, so that each one's @register_task runs: adding a kind is
# adding its module
import_all_modules(__name__, __path__)
