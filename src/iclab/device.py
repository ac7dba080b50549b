"""Device and dtype resolution: nothing in iclab hard-codes a device."""

from __future__ import annotations

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
