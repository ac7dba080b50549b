"""``iclab reproduce NAME``: the registry of paper reproductions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from iclab.analysis.report import ReportRow


def _ahn2023(out: Path, quick: bool, device: str, progress: bool) -> list[ReportRow]:
    from iclab.experiments.ahn2023 import reproduce_ahn2023

    return reproduce_ahn2023(out, quick=quick, device=device, progress=progress)


def _cheng2024(out: Path, quick: bool, device: str, progress: bool) -> list[ReportRow]:
    from iclab.experiments.cheng2024 import reproduce_cheng2024

    return reproduce_cheng2024(out, quick=quick, device=device, progress=progress)


def _ding2025(out: Path, quick: bool, device: str, progress: bool) -> list[ReportRow]:
    from iclab.experiments.ding2025 import reproduce_ding2025

    return reproduce_ding2025(out, quick=quick, device=device, progress=progress)


def _zheng2024(out: Path, quick: bool, device: str, progress: bool) -> list[ReportRow]:
    from iclab.experiments.zheng2024 import reproduce_zheng2024

    return reproduce_zheng2024(out, quick=quick, device=device, progress=progress)


EXPERIMENTS: dict[str, tuple[str, Callable[[Path, bool, str, bool], list[ReportRow]]]] = {
    "ahn2023": (
        "Ahn, Cheng, Daneshmand & Sra (NeurIPS 2023): transformers learn preconditioned GD",
        _ahn2023,
    ),
    "cheng2024": (
        "Cheng, Chen & Sra (ICML 2024): transformers implement functional gradient descent",
        _cheng2024,
    ),
    "ding2025": (
        "Ding, Lu, Lu, Nowicki & Gao (NeurIPS 2025): optimality and NP-hardness on Markov chains",
        _ding2025,
    ),
    "zheng2024": (
        "Zheng, Huang, Wang, Wu, Zhu & Li (NeurIPS 2024): mesa-optimization in autoregressive "
        "linear attention",
        _zheng2024,
    ),
}


def reproduce(
    name: str, out: str | Path, *, quick: bool = False, device: str = "auto", progress: bool = True
) -> list[ReportRow]:
    if name not in EXPERIMENTS:
        raise ValueError(f"experiment: unknown name {name!r}; available: {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name][1](Path(out), quick, device, progress)
