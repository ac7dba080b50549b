"""One trainer for every task × model: optimizer, clipping, schedules, resampling, evaluation,
checkpoints, resume, divergence stop and progress."""

from iclab.training.trainer import TrainingDiverged, TrainResult, build_model, build_task, train

__all__ = ["TrainResult", "TrainingDiverged", "build_model", "build_task", "train"]
