"""Atomic file writes: a reader sees the old file or the new one, never a part of either, and a
rename that returned has reached the disk (file and folder are fsynced)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()
"""Mode of the files iclab writes: what ``open`` would give under the process's umask
(``tempfile.mkstemp`` alone would make every file 0600)."""


def temporary_path(path: Path) -> Path:
    """A fresh temporary file beside ``path`` (``.NAME.*.tmp``: hidden, and removable as stale)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    return Path(tmp)


def commit(tmp: Path, path: Path) -> None:
    """Make the written ``tmp`` the file ``path``: fsync the data, set the mode, rename, and fsync
    the folder so that the rename itself survives a power cut."""
    os.chmod(tmp, FILE_MODE)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_folder(path.parent)


def fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. a platform without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = temporary_path(path)
    try:
        tmp.write_text(text)
        commit(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
