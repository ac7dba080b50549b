"""Metrics, figures and reports: what a trained model implements, in numbers and pictures."""

from iclab.analysis.alignment import Alignment, alignment, input_sensitivity
from iclab.analysis.metrics import (
    distance_to_identity,
    mean_std,
    relative_error,
    whiten,
)
from iclab.analysis.report import ReportRow, write_report

__all__ = [
    "Alignment",
    "ReportRow",
    "alignment",
    "distance_to_identity",
    "input_sensitivity",
    "mean_std",
    "relative_error",
    "whiten",
    "write_report",
]
