"""Device and dtype resolution: nothing in iclab hard-codes a device."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"`` picks CUDA when present, else CPU; any other name is passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device: {name!r} was requested but CUDA is not available; use 'cpu' or 'auto'"
        )
    return device


def resolve_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"dtype: {name!r} is not one of {sorted(DTYPES)}") from None


_COMPLEX = {
    torch.float32: torch.complex64,
    torch.float64: torch.complex128,
    torch.complex64: torch.complex64,
    torch.complex128: torch.complex128,
}


def complex_dtype(dtype: torch.dtype) -> torch.dtype:
    """The complex dtype of a working dtype: float32 → complex64, float64 → complex128."""
    try:
        return _COMPLEX[dtype]
    except KeyError:
        raise ValueError(
            f"dtype: expected float32, float64, complex64 or complex128, got {dtype}"
        ) from None


@contextlib.contextmanager
def matmul_precision(precision: str, device: torch.device) -> Iterator[str]:
    """Set float32 matmul precision for a run and restore the previous flags afterwards.

    ``float32``: TF32 off for CUDA matmuls and cuDNN convolutions (torch's cuDNN default is on);
    ``tf32``: TF32 on; ``bf16``: TF32 off (the bfloat16 autocast is the trainer's). Yields what
    took effect, e.g. ``"tf32"`` or ``"float32 (tf32 has no effect on cpu)"``, for ``run.json``.
    """
    if precision not in ("float32", "tf32", "bf16"):
        raise ValueError(f"precision: {precision!r} is not one of ['bf16', 'float32', 'tf32']")
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    try:
        yield (
            precision
            if device.type == "cuda" or not tf32
            else "float32 (tf32 has no effect on cpu)"
        )
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def peak_memory(device: torch.device) -> dict[str, int]:
    """Peak memory of this process: CPU resident set (bytes) and, on CUDA, the most bytes
    allocated on ``device`` since :func:`torch.cuda.reset_peak_memory_stats`."""
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    out = {"cpu_max_rss_bytes": int(rss if sys.platform == "darwin" else rss * 1024)}
    if device.type == "cuda":
        out["cuda_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated(device))
    return out
