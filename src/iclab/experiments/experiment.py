"""The one shape of every paper reproduction: runs declared apart from the analysis.

A paper module defines an :class:`Experiment`:

- ``runs(budget)`` — the runs it needs, as typed :class:`Run` s (a folder name and a validated
  :class:`~iclab.config.RunConfig`, built with :func:`configure`): nothing is trained here;
- ``analyze(ctx)`` — rows and figures computed only from *finished* run folders, read through
  ``ctx.runs[name]`` (loaded from disk with :func:`~iclab.training.trainer.load_run`), so the rows
  are identical whether the runs were trained a moment ago, earlier, or by another executor.

:func:`run_experiment` trains the runs (each resumable; completed ones are skipped), then
analyses them and writes ``report.md``/``report.json`` with the budget, wall time, commit,
versions and seeds.
"""

from __future__ import annotations

import datetime as dt
import platform
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import torch

import iclab
from iclab.analysis.report import ReportMeta, ReportRow, runs_table, write_report
from iclab.config import ConfigError, RunConfig, apply_overrides, load_preset_dict, make_config
from iclab.training import TrainResult
from iclab.training.checkpoint import RunFolderError
from iclab.training.executors import Executor, Job, LocalExecutor
from iclab.training.run_folder import check_out_folder
from iclab.training.trainer import TrainingDiverged, load_run

B = TypeVar("B")


def configure(preset: str, changes: Mapping[str, Any] | None = None) -> RunConfig:
    """A validated config: preset ``preset`` with typed ``changes`` {dotted key: value}.

    Values are Python objects (numbers, lists, strings), never YAML text to parse back.
    """
    return configure_dict(load_preset_dict(preset), changes)


def configure_dict(data: Mapping[str, Any], changes: Mapping[str, Any] | None = None) -> RunConfig:
    """A validated config: the config mapping ``data`` with typed ``changes`` {dotted key: value}."""
    out = dict(data)
    for key, value in (changes or {}).items():
        out = _set(out, key, value)
    return make_config(out)


def _set(data: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    out = apply_overrides(data, [f"{key}=null"])  # creates the path, validates the key shape
    node = out
    parts = key.split(".")
    for p in parts[:-1]:
        node = node[p]
    node[parts[-1]] = value
    return out


@dataclass(frozen=True)
class Run:
    """One training run of an experiment: its folder name under ``OUT/runs`` and its config."""

    name: str
    config: RunConfig


class RunSet(Mapping[str, TrainResult]):
    """Finished run folders under ``root``, loaded on first access (and cached)."""

    def __init__(self, root: Path, device: str | None = None) -> None:
        self.root = Path(root)
        self.device = device
        self._cache: dict[str, TrainResult] = {}

    def __getitem__(self, name: str) -> TrainResult:
        if name not in self._cache:
            folder = self.root / name
            if not (folder / "config.yaml").exists():
                raise KeyError(f"run {name!r}: no run folder at {folder}")
            self._cache[name] = load_run(folder, device=self.device)
        return self._cache[name]

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(p.name for p in self.root.iterdir() if (p / "config.yaml").exists()))

    def __len__(self) -> int:
        return sum(1 for _ in self)


@dataclass
class Context(Generic[B]):
    """What an analysis sees: the output folder, the budget and the finished runs."""

    out: Path
    budget: B
    budget_name: str
    runs: RunSet
    device: str = "auto"
    progress: bool = False
    sections: list[str] = field(default_factory=list)

    @property
    def figures(self) -> Path:
        return self.out / "figures"


class Experiment(ABC, Generic[B]):
    """A paper reproduction: ``runs`` to train and an ``analyze`` that reads them."""

    name: str
    title: str
    budgets: Mapping[str, B]  # at least "quick" and "full"

    @abstractmethod
    def runs(self, budget: B, device: str = "auto") -> list[Run]:
        """The runs this budget needs (typed configs; nothing is trained here)."""

    @abstractmethod
    def analyze(self, ctx: Context[B]) -> list[ReportRow]:
        """Report rows from finished run folders; may append markdown to ``ctx.sections``."""

    def budget(self, name: str) -> B:
        if name not in self.budgets:
            raise ConfigError(f"budget: expected one of {sorted(self.budgets)}, got {name!r}")
        return self.budgets[name]


def _git(*args: str) -> str:
    root = Path(iclab.__file__).resolve().parents[2]
    done = subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=True
    )
    return done.stdout.strip()


def git_commit() -> str | None:
    """The commit of the iclab source tree (``+dirty`` when it has uncommitted changes)."""
    try:
        sha = _git("rev-parse", "--short=12", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("+dirty" if dirty else "") if sha else None


def versions() -> dict[str, str]:
    return {
        "iclab": iclab.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def train_runs(
    runs: list[Run], root: Path, *, progress: bool = True, executor: Executor | None = None
) -> int:
    """Train every run into ``root/NAME`` on ``executor`` (default: this process, one after
    another; completed runs are skipped, interrupted ones resume); returns how many runs took
    at least one step now. A run that diverged or failed raises after the others finished."""
    names = [r.name for r in runs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"runs: duplicate run names {dupes}")
    executor = executor or LocalExecutor(progress=progress)
    outcomes = executor.run([Job(r.name, r.config, root / r.name) for r in runs])
    errors = {"TrainingDiverged": TrainingDiverged, "RunFolderError": RunFolderError}
    for out in outcomes:
        if not out.ok:  # bad input stays bad input (exit 2), a failed run a failure (exit 1)
            bad_input = out.error in ("ConfigError", "ValueError")
            kind = ConfigError if bad_input else errors.get(out.error, RuntimeError)
            raise kind(f"run {out.name}: {out.message}")
    return sum(out.steps_run > 0 for out in outcomes)


def run_experiment(
    experiment: Experiment[B],
    out: str | Path,
    *,
    budget: str = "quick",
    budget_value: B | None = None,
    device: str = "auto",
    progress: bool = True,
    train: bool = True,
    executor: Executor | None = None,
) -> list[ReportRow]:
    """Train the experiment's runs (unless ``train=False``), analyse the run folders and write
    the report. ``budget_value`` replaces the named budget (e.g. tiny budgets in tests)."""
    out = check_out_folder(out, "reproduction", ("runs", "report.json"))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    commit = git_commit()  # the code that trains, even if the tree changes during the run
    b = experiment.budget(budget) if budget_value is None else budget_value
    runs = experiment.runs(b, device)
    trained_now = (
        train_runs(runs, out / "runs", progress=progress, executor=executor) if train else 0
    )
    ctx: Context[B] = Context(out, b, budget, RunSet(out / "runs", device), device, progress)
    rows = experiment.analyze(ctx)
    train_wall = sum(float(ctx.runs[r.name].info.get("wall_s", 0.0)) for r in runs)
    seeds = sorted({s for r in runs for s in r.config.seeds})
    meta = ReportMeta(
        budget=budget,
        wall_s=round(time.perf_counter() - t0, 1),
        git_commit=commit,
        versions=versions(),
        seeds=seeds,
        extra={
            "runs": len(runs),
            "runs_trained_now": trained_now,  # 0: this report re-analysed finished runs
            "device": device,
            "executor": (executor or LocalExecutor()).name,
            "train_wall_s": round(train_wall, 1),  # the runs' own training time, summed
        },
        date=started,
    )
    sections = [*ctx.sections, runs_table(out / "runs")]
    title = experiment.title + ("" if budget == "full" else f" ({budget})")
    write_report(out, title, rows, sections, meta)
    return rows
