"""``iclab sweep GRID.yaml --out DIR``: a grid of runs around a preset, on any executor.

The grid file names a preset (or a YAML config file, relative to the grid file), fixed
overrides and a grid of dotted keys to lists of values::

    preset: ahn2023_identity_L3
    set: {train.steps: 200}
    grid:
      model.layers: [1, 2, 3]
      task.n: [10, 20]

Every point of the grid's Cartesian product is validated before any run starts (an invalid key
or value fails naming it). Each point trains into ``DIR/runs/<key=value_…>_<hash>`` (the swept
values and the first 8 hex digits of the configuration's fingerprint), so two grids never share a
folder by accident. Completed runs are skipped, interrupted ones resume from their checkpoint.
``DIR/results.csv`` has one row per run: the swept keys (columns named by their dotted paths),
then ``test_loss_mean``, ``test_loss_std`` (over seeds, at the last evaluation), ``steps``,
``wall_s``, ``status`` (pending until the run finishes: the table is rewritten as each run
finishes) and ``run``; ``DIR/figures/sweep.png`` draws the final loss against each
swept key. ``DIR`` is locked while a sweep writes it.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from iclab import strict_yaml
from iclab.analysis.figures import sweep_panels
from iclab.atomic_io import atomic_write_text
from iclab.config import (
    ConfigError,
    RunConfig,
    format_validation_error,
    load_preset_dict,
    preset_names,
)
from iclab.experiments.experiment import configure_dict
from iclab.training.checkpoint import METRICS, RUN_INFO, RunFolderError, read_metrics
from iclab.training.executors import Executor, Job, LocalExecutor, Outcome, init_dependencies
from iclab.training.memory import check_memory
from iclab.training.run_folder import FolderLock, check_out_folder, fingerprint
from iclab.validation import STRICT_CONFIG

MAX_POINTS = 10_000
SWEEP_FILE = "sweep.yaml"
RESULTS = "results.csv"
RUNS = "runs"  # one folder per point under it
COLUMNS = ("test_loss_mean", "test_loss_std", "steps", "wall_s", "status", "run")


class SweepSpec(BaseModel):
    """A grid file (see the module docstring)."""

    model_config = STRICT_CONFIG

    preset: str = Field(description="a preset name (see `iclab presets`) or a YAML config file")
    set: dict[str, Any] = Field(default_factory=dict, description="fixed overrides {key: value}")
    grid: dict[str, list[Any]] = Field(description="swept keys {dotted key: [values]}")


@dataclass(frozen=True)
class Point:
    """One run of the sweep: its swept values, its config and its folder name."""

    values: dict[str, Any]
    config: RunConfig
    name: str


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and check a grid file; errors name the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"grid: file {str(path)!r} does not exist")
    data = strict_yaml.load(path.read_text(), where=f"grid {path.name}")
    if not isinstance(data, dict):
        raise ConfigError(f"grid {path.name}: expected a mapping with preset, set and grid")
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"grid {path.name}: {format_validation_error(err)}") from None
    if not spec.grid:
        raise ConfigError(f"grid {path.name}: grid: name at least one key with a list of values")
    for key, values in spec.grid.items():
        if not values:
            raise ConfigError(f"grid.{key}: an empty list; give at least one value")
        seen = [json.dumps(v, sort_keys=True) for v in values]
        dupes = sorted({v for v in seen if seen.count(v) > 1})
        if dupes:
            raise ConfigError(f"grid.{key}: lists {dupes[0]} more than once")
        if key in spec.set:
            raise ConfigError(f"grid.{key}: also fixed in set; keep it in one place")
    if not Path(spec.preset).suffix and spec.preset not in preset_names():
        raise ConfigError(
            f"preset: unknown preset {spec.preset!r}; available: {', '.join(preset_names())}"
        )
    if Path(spec.preset).suffix:  # a config file, relative to the grid file
        spec = spec.model_copy(update={"preset": str((path.parent / spec.preset).resolve())})
    return spec


def _base(spec: SweepSpec) -> dict[str, Any]:
    if not Path(spec.preset).suffix:
        return load_preset_dict(spec.preset)
    file = Path(spec.preset)
    if not file.is_file():
        raise ConfigError(f"preset: file {spec.preset!r} does not exist")
    data = strict_yaml.load(file.read_text(), where=file.name)
    if not isinstance(data, dict):
        raise ConfigError(f"preset: {file.name} is not a mapping of config fields")
    return data


def _slug(value: Any) -> str:
    text = json.dumps(value, separators=(",", ":")) if not isinstance(value, str) else value
    return re.sub(r"[^A-Za-z0-9.+-]", "_", text)[:40]


def expand(spec: SweepSpec) -> list[Point]:
    """Every point of the grid as a validated config, before anything runs."""
    keys = list(spec.grid)
    total = math.prod(len(spec.grid[k]) for k in keys)
    if total > MAX_POINTS:
        raise ConfigError(f"grid: {total} points; at most {MAX_POINTS} per sweep")
    base = _base(spec)
    points = []
    for combo in itertools.product(*(spec.grid[k] for k in keys)):
        values = dict(zip(keys, combo, strict=True))
        where = ", ".join(f"{k}={json.dumps(v)}" for k, v in values.items())
        try:
            config = configure_dict(base, {**spec.set, **values})
            check_memory(config)
        except ConfigError as err:
            reason = str(err).removeprefix("invalid configuration: ")
            raise ConfigError(f"grid point {where}: {reason}") from None
        slug = "_".join(f"{k}={_slug(v)}" for k, v in values.items())
        points.append(Point(values, config, f"{slug}_{fingerprint(config)[:8]}"))
    return points


def _last_record(run_dir: Path) -> dict[str, Any] | None:
    try:
        metrics = read_metrics(run_dir / METRICS)
    except (OSError, RunFolderError):
        return None
    return metrics[-1] if metrics else None


def result_row(point: Point, run_dir: Path, outcome: Outcome) -> dict[str, Any]:
    """One results.csv row, read from the run folder (whatever executor trained it)."""
    row = _pending_row(point)
    last = _last_record(run_dir) if outcome.ok else None
    losses = [float(v) for v in last["test_loss"]] if last else []
    try:
        info = json.loads((run_dir / RUN_INFO).read_text())
    except (OSError, ValueError):
        info = {}
    mean = sum(losses) / len(losses) if losses else None
    std = (
        math.sqrt(sum((v - mean) ** 2 for v in losses) / (len(losses) - 1))
        if mean is not None and len(losses) > 1
        else (0.0 if mean is not None else None)
    )
    row.update(
        test_loss_mean=mean,
        test_loss_std=std,
        steps=last["step"] if last else None,
        wall_s=round(float(info.get("wall_s", 0.0)), 3) if info else None,
        status=outcome.status,
        run=point.name,
    )
    return row


def _pending_row(point: Point) -> dict[str, Any]:
    row = {k: json.dumps(v) if isinstance(v, list | dict) else v for k, v in point.values.items()}
    return {**row, **dict.fromkeys(COLUMNS), "status": "pending", "run": point.name}


def write_results(path: Path, keys: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*keys, *COLUMNS], lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in writer.fieldnames})
    atomic_write_text(path, buf.getvalue())


def run_sweep(
    spec: SweepSpec,
    out: str | Path,
    executor: Executor | None = None,
    on_done: Callable[[Outcome], None] | None = None,
) -> list[dict[str, Any]]:
    """Expand, validate, train (skipping completed runs), then write results.csv and the figure.
    Returns the results rows."""
    points = expand(spec)  # every point valid before the folder is touched
    runs = Path(out) / RUNS
    jobs = [Job(p.name, p.config, runs / p.name) for p in points]
    init_dependencies(jobs)  # train.init_from: sources and cycles, likewise
    out = check_out_folder(out, "sweep", (SWEEP_FILE, RUNS))
    executor = executor or LocalExecutor()
    keys = list(spec.grid)
    with FolderLock(out):
        atomic_write_text(out / SWEEP_FILE, _spec_yaml(spec))
        by_name = {p.name: p for p in points}
        table: dict[str, dict[str, Any]] = {p.name: _pending_row(p) for p in points}

        def done(outcome: Outcome) -> None:  # results.csv grows as runs finish
            table[outcome.name] = result_row(by_name[outcome.name], runs / outcome.name, outcome)
            write_results(out / RESULTS, keys, list(table.values()))
            if on_done is not None:
                on_done(outcome)

        executor.run(jobs, done)
        rows = list(table.values())
        write_results(out / RESULTS, keys, rows)
        sweep_panels(rows, keys, out / "figures" / "sweep.png", title=spec.preset)
    return rows


def _spec_yaml(spec: SweepSpec) -> str:
    import yaml

    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
