"""Run-folder I/O: atomic writes, safetensors checkpoints (never pickle), JSON-lines metrics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from iclab.atomic_io import atomic_write_text, commit, temporary_path

CHECKPOINT = "checkpoint.safetensors"
MODEL = "model.safetensors"
METRICS = "metrics.jsonl"
CONFIG = "config.yaml"
RUN_INFO = "run.json"


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Write a safetensors file atomically; ``metadata`` is stored as one JSON string.

    Complex tensors (safetensors has no complex128) are stored as their real view (…, 2) and
    listed under the ``iclab_complex`` metadata key; :func:`load_tensors` restores them.
    """
    tmp = temporary_path(path)
    try:
        cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        complex_keys = sorted(k for k, v in cpu.items() if v.is_complex())
        for k in complex_keys:
            cpu[k] = torch.view_as_real(cpu[k]).contiguous()
        save_file(
            cpu,
            str(tmp),
            metadata={"iclab": json.dumps(metadata), "iclab_complex": json.dumps(complex_keys)},
        )
        commit(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class RunFolderError(RuntimeError):
    """A run folder that cannot be used as it is (corrupt, foreign or in use); the message names
    the file and what to do."""


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a safetensors file written by :func:`save_tensors`; a damaged file is a
    :class:`RunFolderError` naming it."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
        meta = json.loads(raw.get("iclab", "{}"))
        tensors = load_file(str(path))
        for k in json.loads(raw.get("iclab_complex", "[]")):
            tensors[k] = torch.view_as_complex(tensors[k].contiguous())
    except FileNotFoundError:
        raise
    except Exception as err:  # safetensors raises its own error types for damaged files
        raise RunFolderError(
            f"{path}: not a readable iclab tensor file ({type(err).__name__}: "
            f"{str(err)[:120]}); delete it to start the run over, or restore a copy"
        ) from None
    if not isinstance(meta, dict):
        raise RunFolderError(f"{path}: its iclab metadata is not a JSON object")
    return tensors, meta


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Flatten an optimizer state dict into named tensors plus JSON-able metadata."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, st in sd["state"].items():
        for key, val in st.items():
            name = f"optim.{idx}.{key}"
            if torch.is_tensor(val):
                tensors[name] = val
            else:
                scalars[name] = val
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def restore_optimizer(
    opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, val in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = val
    for name, val in meta.get("scalars", {}).items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = val
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def read_run_info(run_dir: Path) -> dict[str, Any]:
    """A run folder's ``run.json`` as a dict; empty when it is missing or unreadable (a run that
    never started, or a damaged view that its next training rewrites)."""
    try:
        info = json.loads((run_dir / RUN_INFO).read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics file; a line that is not a JSON record is an error naming the
    file and line (the checkpoint holds the authoritative copy: see the trainer)."""
    if not path.exists():
        return []
    out = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or "step" not in record:
            raise RunFolderError(
                f"{path}, line {number}: not a metrics record ({line[:60]!r}); the run's "
                "checkpoint holds the metrics up to its step: resume the run to rewrite this file"
            )
        out.append(record)
    return out


def write_metrics(path: Path, records: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))
