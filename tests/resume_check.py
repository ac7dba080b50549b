"""Shared check: a run killed after a given step resumes to exactly the uninterrupted result."""

from __future__ import annotations

import pytest
import torch

from iclab.config import RunConfig
from iclab.training import train
from iclab.training.checkpoint import load_tensors
from iclab.training.trainer import load_run


def strip(metrics):
    """Metrics without their wall-clock times (the only field allowed to differ)."""
    return [{k: v for k, v in m.items() if k != "wall_s"} for m in metrics]


def assert_resumes_exactly(cfg: RunConfig, tmp_path, kill_at: int, final_step: int) -> None:
    """Train ``cfg`` uninterrupted, then again with a kill after step ``kill_at``, resume, and
    require identical metrics, parameters and final step."""
    full = train(cfg, tmp_path / "full", progress=False)

    def kill(step):
        if step == kill_at:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "killed", progress=False, on_step=kill)
    assert load_run(tmp_path / "killed").metrics[-1]["step"] == kill_at  # checkpoint only
    resumed = train(cfg, tmp_path / "killed", progress=False)
    assert resumed.info["resumed_from_step"] == kill_at
    assert strip(resumed.metrics) == strip(full.metrics)
    torch.testing.assert_close(resumed.model.A, full.model.A, rtol=0, atol=0)
    _, meta = load_tensors(tmp_path / "killed" / "model.safetensors")
    assert meta["step"] == final_step
