"""The registry: kinds declared once, user kinds from outside iclab, pairs checked at config time."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict

import iclab
from iclab import registry
from iclab.config import ConfigError, make_config
from iclab.models import EnsembleModel
from iclab.training import train
from iclab.training.trainer import load_run

ROOT = Path(__file__).resolve().parents[1]


def test_custom_task_example_trains_and_learns():
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "custom_task.py")],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    losses = [
        [float(v) for v in re.findall(r"[-\d.e]+", line.split("seed", 1)[1])]
        for line in out.splitlines()
        if line.startswith("step")
    ]
    assert len(losses) == 3 and all(len(v) == 2 for v in losses)
    # the bandwidth starts far too wide (h = 3): training must cut the loss well down
    assert all(last < 0.6 * first for first, last in zip(losses[0], losses[-1], strict=True))
    h = [float(v) for v in re.findall(r"[\d.]+", out.split("bandwidth per seed:")[1])[:2]]
    assert all(0 < v < 2.0 for v in h)


@pytest.mark.parametrize(
    ("task", "model"),
    [
        ("linear_regression", "causal_linear_attention"),
        ("gaussian_process", "causal_linear_attention"),
        ("linear_dynamics", "lsa"),
        ("linear_dynamics", "softmax_transformer"),
    ],
)
def test_incompatible_pair_fails_at_config_time(task, model):
    with pytest.raises(ConfigError) as err:
        make_config({"task": {"kind": task}, "model": {"kind": model}})
    msg = str(err.value)
    assert f"task.kind {task!r}" in msg and f"model.kind {model!r}" in msg
    assert "Traceback" not in msg


def test_every_registered_pair_the_registry_allows_validates():
    for task in registry.TASKS:
        for model in registry.compatible_models(task):
            cfg = make_config({"task": {"kind": task}, "model": {"kind": model}})
            assert (cfg.task.kind, cfg.model.kind) == (task, model)


def test_unknown_kind_names_the_field_and_the_choices():
    with pytest.raises(ConfigError, match=r"model\.kind: unknown kind 'mamba'; allowed: .*lsa"):
        make_config({"model": {"kind": "mamba"}})
    with pytest.raises(ConfigError, match=r"task\.kind: unknown kind 'sine'; allowed: .*markov"):
        make_config({"task": {"kind": "sine"}})


@pytest.fixture
def scratch_registry(monkeypatch):
    """Register kinds in copies of the tables, so no test leaks a kind into another."""
    monkeypatch.setattr(registry, "TASKS", dict(registry.TASKS))
    monkeypatch.setattr(registry, "MODELS", dict(registry.MODELS))


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: str = "mean_label"


def test_a_config_without_its_kind_is_refused(scratch_registry):
    class NoKind(BaseModel):
        d: int = 1

    with pytest.raises(ValueError, match="needs a field kind"):
        registry.register_model("no_kind", config=NoKind, accepts=(object,))(EnsembleModel)


def test_a_name_taken_by_another_class_is_refused(scratch_registry):
    class Other(EnsembleModel):
        pass

    cfg = type("LsaCfg", (_Cfg,), {"__annotations__": {"kind": str}, "kind": "lsa"})
    with pytest.raises(ValueError, match=r"'lsa' is already registered by iclab\.models\.lsa"):
        registry.register_model("lsa", config=cfg, accepts=(object,))(Other)


def test_a_user_model_trains_resumes_and_loads_from_its_run_folder(scratch_registry, tmp_path):
    import torch
    from torch import nn

    from iclab.batches import PromptBatch

    @iclab.register_model("mean_label", config=_Cfg, accepts=(PromptBatch,))
    class MeanLabel(EnsembleModel):
        """ŷ = s · mean_i y_i with one learned scale s per seed."""

        def __init__(self, d, config, seeds=(0,), device="cpu", dtype=torch.float32):
            super().__init__(d, config, seeds, device, dtype)
            self.scale = nn.Parameter(
                torch.zeros(self.ensemble_size, 1, device=device, dtype=dtype)
            )

        def predict_prepared(self, batch):
            return self.scale * batch.y.mean(-1)

    data = {
        "n_seeds": 2,
        "model": {"kind": "mean_label"},
        "train": {"steps": 30, "lr": 0.05, "eval_every": 10, "checkpoint_every": 10},
    }
    cfg = make_config(data)
    res = train(cfg, tmp_path / "run", progress=False)
    assert res.info["status"] == "completed"
    loaded = load_run(tmp_path / "run")
    assert isinstance(loaded.model, MeanLabel)
    assert torch.equal(loaded.model.scale, res.model.scale)
    assert (res.model.scale.abs() > 0).all()


def test_the_trainer_knows_no_model_by_name_or_by_probing():
    source = (ROOT / "src" / "iclab" / "training" / "trainer.py").read_text()
    tree = ast.parse(source)
    probes = [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "hasattr"
    ]
    assert not probes, "the trainer must use the model contract, not hasattr"
    for kind in [*registry.MODELS, *registry.TASKS]:
        assert f'"{kind}"' not in source


def test_papers_are_found_by_module_name_without_importing_them():
    import subprocess
    import sys

    from iclab.experiments import EXPERIMENTS

    probe = (
        "import sys; from iclab.experiments import EXPERIMENTS; "
        "print(any(m in sys.modules for _, m in EXPERIMENTS.values()))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

    assert sorted(EXPERIMENTS) == ["ahn2023", "cheng2024", "ding2025", "garg2022", "zheng2024"]
    assert all(
        desc and module == f"iclab.experiments.{name}"
        for name, (desc, module) in EXPERIMENTS.items()
    )
    # helper modules (ding2025_transformers) are not papers, and listing imports no paper
    assert "ding2025_transformers" not in EXPERIMENTS


def test_every_task_and_model_module_registers_on_import():
    from iclab import models, tasks

    assert {"linear_regression", "gaussian_process", "markov_chain", "linear_dynamics"} <= set(
        registry.TASKS
    )
    assert {"lsa", "kernel_attention", "softmax_transformer", "causal_linear_attention"} <= set(
        registry.MODELS
    )
    for kind in registry.TASKS.values():
        if kind.builder.__module__.startswith("iclab."):
            assert kind.builder.__module__.startswith(tasks.__name__)
    for kind in registry.MODELS.values():
        if kind.builder.__module__.startswith("iclab."):
            assert kind.builder.__module__.startswith(models.__name__)
