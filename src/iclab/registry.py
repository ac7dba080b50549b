"""One registry per kind: every task kind and model kind is declared once, here.

A declaration names the kind, its configuration class (a frozen pydantic model whose ``kind``
field holds the name), the class that builds it, and the batch types that connect the two: a task
declares the batch class it samples, a model the batch classes it accepts. The run configuration
(:mod:`iclab.config`), the trainer and the CLI all read this registry, so adding a kind touches
one module, and a user adds their own from outside iclab::

    @register_task("sine", config=SineConfig, batch=SineBatch)
    class SineTask(EnsembleTask): ...

    @register_model("nadaraya_watson", config=NWConfig, accepts=(PromptBatch,))
    class NadarayaWatson(EnsembleModel): ...

Builders: a task class is called as ``Task(config, seeds, device=, dtype=)``; a model class as
``Model(d, config, seeds, device=, dtype=)`` with ``d`` the task's input dimension.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

T = TypeVar("T")


@dataclass(frozen=True)
class TaskKind:
    name: str
    config: type[BaseModel]
    builder: Callable[..., Any]
    batch: type


@dataclass(frozen=True)
class ModelKind:
    name: str
    config: type[BaseModel]
    builder: Callable[..., Any]
    accepts: tuple[type, ...]

    @property
    def has_prediction_jacobian(self) -> bool:
        """Whether the model gives per-prompt Jacobians (needed by Levenberg–Marquardt)."""
        return callable(getattr(self.builder, "prediction_jacobian", None))

    @property
    def trains_in_bf16(self) -> bool:
        """Whether the model may train under bfloat16 autocast (``precision: bf16``)."""
        return bool(getattr(self.builder, "bf16_autocast", False))


TASKS: dict[str, TaskKind] = {}
MODELS: dict[str, ModelKind] = {}


def _check_config(name: str, config: type[BaseModel]) -> None:
    field = config.model_fields.get("kind")
    if field is None or field.default != name:
        raise ValueError(
            f"{config.__name__}: a registered configuration needs a field kind: "
            f"Literal[{name!r}] = {name!r}"
        )


def _register(table: dict[str, Any], entry: Any, what: str) -> None:
    old = table.get(entry.name)
    if old is not None and old.builder.__qualname__ != entry.builder.__qualname__:
        raise ValueError(
            f"{what}.kind: {entry.name!r} is already registered by "
            f"{old.builder.__module__}.{old.builder.__qualname__}"
        )
    table[entry.name] = entry  # re-registering the same class (a module reload) replaces it


def register_task(name: str, *, config: type[BaseModel], batch: type) -> Callable[[T], T]:
    """Class decorator declaring a task kind ``name`` that samples ``batch`` objects."""

    def decorate(cls: T) -> T:
        _check_config(name, config)
        _register(TASKS, TaskKind(name, config, cls, batch), "task")  # type: ignore[arg-type]
        return cls

    return decorate


def register_model(
    name: str, *, config: type[BaseModel], accepts: tuple[type, ...]
) -> Callable[[T], T]:
    """Class decorator declaring a model kind ``name`` that reads batches of the ``accepts`` types."""

    def decorate(cls: T) -> T:
        _check_config(name, config)
        _register(MODELS, ModelKind(name, config, cls, tuple(accepts)), "model")  # type: ignore[arg-type]
        return cls

    return decorate


def task_kind(name: str) -> TaskKind:
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"task.kind: unknown kind {name!r}; allowed: {sorted(TASKS)}") from None


def model_kind(name: str) -> ModelKind:
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"model.kind: unknown kind {name!r}; allowed: {sorted(MODELS)}") from None


def compatible_models(task: str) -> list[str]:
    """The model kinds that accept the batches of task kind ``task``."""
    batch = task_kind(task).batch
    return sorted(m.name for m in MODELS.values() if issubclass(batch, m.accepts))


def check_pair(task: str, model: str) -> None:
    """Raise ``ValueError`` naming ``task.kind`` and ``model.kind`` when they cannot meet."""
    t, m = task_kind(task), model_kind(model)
    if not issubclass(t.batch, m.accepts):
        wanted = ", ".join(a.__name__ for a in m.accepts)
        raise ValueError(
            f"task.kind {task!r} samples {t.batch.__name__} but model.kind {model!r} reads "
            f"{wanted}; models for {task!r}: {compatible_models(task)}"
        )


def import_all_modules(package: str, path: Iterable[str]) -> None:
    """Import every module of ``package`` (found on ``path``, the package's ``__path__``), so
    that the decorators of each register its kinds."""
    for info in pkgutil.iter_modules(path):
        importlib.import_module(f"{package}.{info.name}")


def import_user_module(spec: str) -> None:
    """Import a dotted module name or a ``.py`` file, e.g. one registering its own kinds (what
    ``iclab --import`` does; sweep workers repeat it so they know the same kinds).

    A bad spec raises ``ValueError`` naming ``--import``."""
    path = Path(spec)
    if spec.endswith(".py"):
        if not path.is_file():
            raise ValueError(f"--import: file {spec!r} does not exist")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(module_spec)  # type: ignore[arg-type]
        sys.modules[path.stem] = module
        module_spec.loader.exec_module(module)  # type: ignore[union-attr]
        return
    try:
        importlib.import_module(spec)
    except ModuleNotFoundError as err:
        raise ValueError(f"--import: cannot import {spec!r} ({err})") from None
