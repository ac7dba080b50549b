"""Named paper experiments: preset configs + the analysis that turns runs into a report."""

from iclab.experiments.registry import EXPERIMENTS, reproduce

__all__ = ["EXPERIMENTS", "reproduce"]
