"""The run folder as a small transactional store.

- **One writer.** :class:`FolderLock` holds an exclusive ``flock`` on ``DIR/.iclab.lock`` (with
  the holder's PID, host and start time written in it) for as long as a process trains there,
  ``--overwrite`` included. The kernel drops the lock when its holder dies, so the lock of a killed
  process is taken over by the next run without any stale-lock guesswork.
- **One commit point.** The checkpoint holds the parameters, the optimizer state, the metrics
  up to its step and the fingerprint of the configuration that produced it; it is written to a
  temporary file, fsynced and renamed (then the folder is fsynced). ``metrics.jsonl`` and
  ``run.json`` are views rewritten after each commit, so a kill at any instant leaves a folder
  that resumes to exactly the uninterrupted run. Temporary files a kill left behind are removed
  when the next run takes the lock.
- **No foreign data.** Resume checks the checkpoint's configuration fingerprint, its step and
  its tensor set against the run before loading anything.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import socket
from pathlib import Path
from typing import Any

from iclab.atomic_io import FILE_MODE
from iclab.config import ConfigError, RunConfig
from iclab.training.checkpoint import CONFIG, RunFolderError

LOCK = ".iclab.lock"
#: top-level config fields added after checkpoint format 2, with the value equal to the old behaviour
ADDED_FIELDS = {
    "precision": "float32",
    "train.curriculum": None,
    "train.polish.tail_scales": None,
    "train.init_from": None,
}


def fingerprint(config: RunConfig) -> str:
    """SHA-256 of the configuration's canonical JSON: what a checkpoint's data was produced by.

    Fields added after checkpoint format 2 are left out while they hold the value that means
    what runs did before they existed (``precision: float32``, ``train.curriculum: null``), so
    older folders still resume."""
    data = config.to_dict()
    for path, before in ADDED_FIELDS.items():
        *parents, key = path.split(".")
        holder = data
        for p in parents:
            holder = holder.get(p, {})
        if key in holder and holder[key] == before:
            del holder[key]
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def check_out_folder(out: str | Path, what: str, marks: tuple[str, ...]) -> Path:
    """The output folder ``out``, refused when the path is empty, names a file, or names a
    non-empty folder holding none of the ``marks`` that make it an iclab ``what`` (so iclab never
    writes into a user's own folder). Our own lock and stale temporaries do not count."""
    if not str(out).strip():
        raise ConfigError(f"out: an empty path; name the {what} to write (e.g. --out runs/a)")
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"out: {path} is a file, not a folder")
    if path.is_dir() and not any((path / mark).exists() for mark in marks):
        foreign = [p.name for p in path.iterdir() if not _ours(p.name)]
        if foreign:
            raise ConfigError(
                f"out: {path} is a non-empty folder that is not an iclab {what} (it has no "
                f"{' or '.join(marks)}; found {', '.join(sorted(foreign)[:3])}…); choose a new or "
                "empty folder"
            )
    return path


def check_out_path(out: str | Path) -> Path:
    """The run folder ``out`` (see :func:`check_out_folder`; a run folder has ``config.yaml``)."""
    return check_out_folder(out, "run folder", (CONFIG,))


def _ours(name: str) -> bool:
    """The lock, or a temporary file a killed iclab writer left (``.NAME.*.tmp``)."""
    return name == LOCK or (name.startswith(".") and name.endswith(".tmp"))


def remove_stale_temporaries(folder: Path) -> list[str]:
    """Delete the temporary files (``.NAME.*.tmp``) a killed writer left; the names removed."""
    removed = []
    for tmp in folder.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
        removed.append(tmp.name)
    return removed


class FolderLock:
    """Exclusive use of a run folder by this process (see the module docstring)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.fd: int | None = None

    def __enter__(self) -> FolderLock:
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / LOCK
        fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunFolderError(
                f"out: {self.folder} is in use by process {holder.get('pid', '?')} on host "
                f"{holder.get('host', '?')} (since {holder.get('since', '?')}); wait for it to "
                "finish or choose another folder"
            ) from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        import fcntl

        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
