"""Shared timing helpers for the benchmark scripts: median wall time of a step after warm-up."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def sync(device: torch.device) -> None:
    """Wait for queued GPU work so a wall-clock measurement covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(
    step: Callable[[], None], repeats: int, device: torch.device, warmup: int = 3
) -> float:
    """Median seconds per call of ``step`` over ``repeats`` calls, after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)
