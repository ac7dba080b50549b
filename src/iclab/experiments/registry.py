"""``iclab reproduce NAME``: the registry of paper reproductions.

A paper is one module of this package named ``<author><year>.py`` (e.g. ``ahn2023.py``) that
defines its :class:`~iclab.experiments.experiment.Experiment` as ``EXPERIMENT`` and a one-line
``DESCRIPTION``. The registry finds them by name and reads ``DESCRIPTION`` from the source, so
``iclab --help`` lists the papers without importing them; a module is imported on first use.
Adding a paper is adding its module.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

from iclab.analysis.report import ReportRow
from iclab.experiments.experiment import Experiment, run_experiment
from iclab.training.executors import Executor

_PAPER_MODULE = re.compile(r"^[a-z]+\d{4}$")


def _description(path: Path) -> str:
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "DESCRIPTION" for t in node.targets
        ):
            return str(ast.literal_eval(node.value))
    raise RuntimeError(f"{path.name}: a paper module needs DESCRIPTION = '...'")


def _discover() -> dict[str, tuple[str, str]]:
    here = Path(__file__).parent
    return {
        p.stem: (_description(p), f"iclab.experiments.{p.stem}")
        for p in sorted(here.glob("*.py"))
        if _PAPER_MODULE.match(p.stem)
    }


EXPERIMENTS: dict[str, tuple[str, str]] = _discover()


def get_experiment(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise ValueError(f"experiment: unknown name {name!r}; available: {', '.join(EXPERIMENTS)}")
    return importlib.import_module(EXPERIMENTS[name][1]).EXPERIMENT


def reproduce(
    name: str,
    out: str | Path,
    *,
    quick: bool = False,
    device: str = "auto",
    progress: bool = True,
    executor: Executor | None = None,
) -> list[ReportRow]:
    """Train (or resume) the paper's runs for the quick or full budget, on ``executor`` (default:
    this process, one run after another), and write its report."""
    return run_experiment(
        get_experiment(name),
        out,
        budget="quick" if quick else "full",
        device=device,
        progress=progress,
        executor=executor,
    )
