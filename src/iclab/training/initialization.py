"""Starting a run from another run's weights (``train.init_from``).

A run may start from the final parameters of a *completed* run folder instead of its random
initialization, e.g. a deeper LSA from a trained shallower one (progressive depth: the extra
layers are identity maps that still get a gradient, see
:meth:`~iclab.models.EnsembleModel.zero_when_grown`, so training starts from the source's
function). The source must hold the same task, the same seeds and the same model settings,
except the fields the model kind may grow (:attr:`~iclab.models.EnsembleModel.grows_along`) and
its ``init_std``, which the source's weights replace. Training settings may differ.

The path is relative to the run folder's parent (a sibling's name) unless absolute, so an output
folder of runs that start from each other can move as a whole. The started run records the
source in ``run.json`` (``init_from``: folder, configuration fingerprint and step). Its own
checkpoints make it independent of the source once written (a resume works without it), but a
source folder that now holds another run (:func:`source_changed`) stops it from continuing or
counting as complete.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from iclab import registry
from iclab.config import ConfigError, RunConfig, load_config
from iclab.models import EnsembleModel
from iclab.training import checkpoint as io


def init_source(config: RunConfig, run_dir: Path | None) -> Path | None:
    """The folder ``config.train.init_from`` names, resolved against ``run_dir``'s parent
    (None when the run starts from its random initialization)."""
    name = config.train.init_from
    if name is None:
        return None
    if run_dir is None:
        raise ConfigError("train.init_from: needs a run folder (--out) to resolve the path against")
    path = Path(name)
    return path if path.is_absolute() else Path(os.path.abspath(run_dir)).parent / path


def check_init_source(config: RunConfig, source: Path, run_dir: Path) -> dict[str, Any]:
    """Raise :class:`ConfigError` (one line naming ``train.init_from``) unless ``source`` is a
    completed run this run may start from; return the source's ``run.json``."""
    where = f"train.init_from: {source}"
    if source.resolve() == run_dir.resolve():
        raise ConfigError(f"{where} is this run's own folder; name another run")
    info = io.read_run_info(source)
    if info.get("status") != "completed":
        raise ConfigError(f"{where} is not a completed run (train it first)")
    if not (source / io.MODEL).is_file():
        raise ConfigError(f"{where} has no final weights ({io.MODEL})")
    try:
        theirs = load_config(source / io.CONFIG)
    except ConfigError as err:
        raise ConfigError(f"{where}: its {io.CONFIG} is unreadable ({str(err)[:160]})") from None
    for field in ("seed", "n_seeds", "task"):
        if getattr(theirs, field) != getattr(config, field):
            raise ConfigError(
                f"{where} has another {field}; a run starts only from its own {field}"
            )
    mine = config.model.model_dump(mode="json")
    other = theirs.model.model_dump(mode="json")
    grows = getattr(registry.model_kind(mine["kind"]).builder, "grows_along", {})
    for key in sorted(set(mine) | set(other)):
        if key == "init_std" or mine.get(key) == other.get(key):
            continue
        if key in grows and isinstance(other.get(key), int) and other[key] <= mine[key]:
            continue
        allowed = f"may grow: {sorted(grows)}" if grows else "none may differ"
        raise ConfigError(
            f"{where} has model.{key} = {other.get(key)!r}, this run {mine.get(key)!r} "
            f"(model settings must match; {allowed})"
        )
    return info


def source_changed(record: dict[str, Any], source: Path) -> str | None:
    """Why a run started from ``source`` (``record``: its ``init_from`` entry of ``run.json``)
    may not continue: the source folder now holds a run of another configuration than the one
    it started from (retrained or overwritten since). None when it is the same, or gone (a run
    never needs its source after its first checkpoint)."""
    now = io.read_run_info(source).get("fingerprint")
    if now is None or now == record.get("fingerprint"):
        return None
    return (
        f"train.init_from: {source} now holds another run (fingerprint {str(now)[:12]}) than the "
        f"one this run started from ({str(record.get('fingerprint'))[:12]}); retrain it from "
        "the new source with --overwrite"
    )


@dataclass(frozen=True)
class InitState:
    """A checked source's final weights and the record ``run.json`` keeps of it."""

    source: Path
    tensors: dict[str, torch.Tensor]
    record: dict[str, Any]


def read_init_source(config: RunConfig, source: Path, run_dir: Path) -> InitState:
    """Check ``source`` (:func:`check_init_source`) and read its final weights, once."""
    info = check_init_source(config, source, run_dir)
    tensors, meta = io.load_tensors(source / io.MODEL)
    record = {
        "run_dir": str(source.resolve()),
        "fingerprint": info.get("fingerprint"),
        "step": meta.get("step"),
    }
    return InitState(source, tensors, record)


def load_init_weights(model: EnsembleModel, state: InitState) -> None:
    """Load the source's weights into ``model`` (a :class:`ConfigError` naming the field when
    they cannot start it)."""
    try:
        model.load_initial_state(state.tensors)
    except ValueError as err:
        raise ConfigError(f"train.init_from: {state.source}: {err}") from None
