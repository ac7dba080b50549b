"""``iclab reproduce NAME``: the registry of paper reproductions.

Each entry names the module that defines the paper's :class:`~iclab.experiments.experiment.
Experiment` as ``EXPERIMENT`` (imported on first use, so ``iclab --help`` stays fast).
"""

from __future__ import annotations

import importlib
from pathlib import Path

from iclab.analysis.report import ReportRow
from iclab.experiments.experiment import Experiment, run_experiment

EXPERIMENTS: dict[str, tuple[str, str]] = {
    "ahn2023": (
        "Ahn, Cheng, Daneshmand & Sra (NeurIPS 2023): transformers learn preconditioned GD",
        "iclab.experiments.ahn2023",
    ),
    "cheng2024": (
        "Cheng, Chen & Sra (ICML 2024): transformers implement functional gradient descent",
        "iclab.experiments.cheng2024",
    ),
    "ding2025": (
        "Ding, Lu, Lu, Nowicki & Gao (NeurIPS 2025): optimality and NP-hardness on Markov chains",
        "iclab.experiments.ding2025",
    ),
    "zheng2024": (
        "Zheng, Huang, Wang, Wu, Zhu & Li (NeurIPS 2024): mesa-optimization in autoregressive "
        "linear attention",
        "iclab.experiments.zheng2024",
    ),
}


def get_experiment(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise ValueError(f"experiment: unknown name {name!r}; available: {', '.join(EXPERIMENTS)}")
    return importlib.import_module(EXPERIMENTS[name][1]).EXPERIMENT


def reproduce(
    name: str, out: str | Path, *, quick: bool = False, device: str = "auto", progress: bool = True
) -> list[ReportRow]:
    """Train (or resume) the paper's runs for the quick or full budget and write its report."""
    return run_experiment(
        get_experiment(name),
        out,
        budget="quick" if quick else "full",
        device=device,
        progress=progress,
    )
