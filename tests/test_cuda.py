"""Every paper's tiny reproduction, the precisions and the Ray executor on CUDA (skipped without
a GPU; ``benchmarks/gpu_check.sh`` runs these with the benchmarks on a machine that has one).

On CUDA the tasks, models, baselines and theory of each paper run with no tensor left on the CPU
(a device mismatch raises), and every report row agrees with the CPU run: theory (float64) to
1e-6, trained numbers to 2e-2 relative (float32 training on another device rounds differently).
"""

from __future__ import annotations

import json
import math

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _close(a, b, rtol: float) -> bool:
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_close(x, y, rtol) for x, y in zip(a, b, strict=True))
    if isinstance(a, int | float) and isinstance(b, int | float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return math.isclose(a, b, rel_tol=rtol, abs_tol=1e-9)
    return a == b


def _budgets():
    import test_reproduce_ahn2023 as ahn
    import test_reproduce_cheng2024 as cheng
    import test_reproduce_ding2025 as ding
    import test_reproduce_zheng2024 as zheng

    return [("ahn2023", ahn.UNTRAINED), ("cheng2024", cheng.TINY), ("ding2025", ding.TINY),
            ("zheng2024", zheng.TINY)]  # fmt: skip


@pytest.mark.parametrize("index", range(4))
def test_tiny_reproduction_on_cuda_matches_cpu(tmp_path, index):
    from iclab.experiments.experiment import run_experiment
    from iclab.experiments.registry import get_experiment

    name, budget = _budgets()[index]
    kw = {"budget": "tiny", "budget_value": budget, "progress": False}
    cpu = run_experiment(get_experiment(name), tmp_path / "cpu", device="cpu", **kw)
    gpu = run_experiment(get_experiment(name), tmp_path / "cuda", device="cuda", **kw)
    assert [r.quantity for r in cpu] == [r.quantity for r in gpu]
    for a, b in zip(cpu, gpu, strict=True):
        assert _close(a.theory, b.theory, 1e-6), (a.quantity, a.theory, b.theory)
        assert _close(a.trained_mean, b.trained_mean, 2e-2), (
            a.quantity,
            a.trained_mean,
            b.trained_mean,
        )
    for run in (tmp_path / "cuda" / "runs").iterdir():
        info = json.loads((run / "run.json").read_text())
        assert info["device"].startswith("cuda")
        assert info["peak_memory"]["cuda_max_allocated_bytes"] > 0


def test_tf32_and_bf16_take_effect_on_cuda(tmp_path):
    from test_precision import SHORT, transformer

    from iclab.config import load_config
    from iclab.training import train

    seen = []
    cfg = load_config("ahn2023_identity_L3", [*SHORT[:-1], "device=cuda", "precision=tf32"])
    train(cfg, tmp_path / "t", progress=False,
          on_step=lambda s: seen.append(torch.backends.cuda.matmul.allow_tf32))  # fmt: skip
    assert seen and all(seen)
    assert json.loads((tmp_path / "t" / "run.json").read_text())["precision"] == "tf32"
    f32 = transformer("float32").model_copy(update={"device": "cuda"})
    bf16 = transformer("bf16").model_copy(update={"device": "cuda"})
    a = torch.tensor([m["train_loss"] for m in train(f32, progress=False).metrics])
    b = torch.tensor([m["train_loss"] for m in train(bf16, progress=False).metrics])
    assert torch.isfinite(b).all() and not torch.equal(a, b) and torch.allclose(a, b, rtol=0.05)


def test_ray_runs_share_the_gpus(tmp_path):
    pytest.importorskip("ray")
    from test_sweep import write_grid

    from iclab.experiments.sweep import load_sweep, run_sweep
    from iclab.training.executors import RayExecutor

    path = write_grid(tmp_path, {"model.layers": [1, 2, 3, 4]}, device="auto")
    rows = run_sweep(
        load_sweep(path), tmp_path / "s", RayExecutor(4, cpus_per_run=1, gpus_per_run=0.25)
    )
    assert [r["status"] for r in rows] == ["completed"] * 4
    for run in (tmp_path / "s" / "runs").iterdir():
        assert json.loads((run / "run.json").read_text())["device"].startswith("cuda")
