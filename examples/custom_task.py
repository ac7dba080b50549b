"""Add a task kind and a model kind to iclab from your own module, then train them.

The task: regression on ``y = sin(wᵀx)`` with ``x, w ~ N(0, I)``. The model: a kernel smoother
(softmax attention with a fixed query/key map and one learned bandwidth per seed),
``ŷ = Σ_i softmax_i(−‖x_i − x_q‖² / 2h²) y_i``. Neither is part of iclab: each is declared once
with a decorator, and from then on configs, the trainer and run folders know them.

    python examples/custom_task.py
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

import iclab
from iclab.batches import PromptBatch
from iclab.models import EnsembleModel
from iclab.seeding import make_generator
from iclab.tasks import EnsembleTask


class SineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["sine_regression"] = "sine_regression"
    d: int = Field(2, ge=1, description="input dimension")
    n: int = Field(32, ge=1, description="context examples per prompt")


@dataclass(frozen=True)
class SineBatch(PromptBatch):
    x: torch.Tensor  # (E, B, n, d)
    y: torch.Tensor  # (E, B, n)
    x_query: torch.Tensor  # (E, B, d)
    y_query: torch.Tensor  # (E, B)
    w: torch.Tensor  # (E, B, d): the ground truth travels with the prompts


@iclab.register_task("sine_regression", config=SineConfig, batch=SineBatch)
class SineTask(EnsembleTask):
    def sample(self, batch_size: int, purpose: str, index: int = 0) -> SineBatch:
        n, d, kw = self.config.n, self.config.d, dict(device=self.device, dtype=self.dtype)
        xs, ws = [], []
        for seed in self.seeds:  # member e draws from its own stream (seed, purpose, index)
            g = make_generator(self.device, seed, purpose, index)
            xs.append(torch.randn(batch_size, n + 1, d, generator=g, **kw))
            ws.append(torch.randn(batch_size, d, generator=g, **kw))
        x, w = torch.stack(xs), torch.stack(ws)
        y = torch.sin((x @ w.unsqueeze(-1)).squeeze(-1))
        return SineBatch(x=x[:, :, :n], y=y[:, :, :n], x_query=x[:, :, n], y_query=y[:, :, n], w=w)


class KernelSmootherConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["kernel_smoother"] = "kernel_smoother"
    init_bandwidth: float = Field(3.0, gt=0, description="initial bandwidth h")


@iclab.register_model("kernel_smoother", config=KernelSmootherConfig, accepts=(PromptBatch,))
class KernelSmoother(EnsembleModel):
    def __init__(self, d, config, seeds=(0,), device="cpu", dtype=torch.float32):
        super().__init__(d, config, seeds, device, dtype)
        log_h = torch.full((self.ensemble_size, 1, 1), config.init_bandwidth, dtype=dtype).log()
        self.log_bandwidth = nn.Parameter(log_h.to(device))

    def predict_prepared(self, batch: PromptBatch) -> torch.Tensor:
        dist2 = (batch.x - batch.x_query.unsqueeze(-2)).pow(2).sum(-1)  # (E, B, n)
        weights = torch.softmax(-dist2 / (2 * self.log_bandwidth.exp() ** 2), dim=-1)
        return (weights * batch.y).sum(-1)  # the default objective: MSE against y_query

    def effective_weights(self) -> dict[str, torch.Tensor]:
        return {"bandwidth": self.log_bandwidth.detach().exp().flatten()}


if __name__ == "__main__":
    config = iclab.make_config(
        {
            "name": "sine_smoother",
            "n_seeds": 2,
            "task": {"kind": "sine_regression", "d": 2, "n": 32},
            "model": {"kind": "kernel_smoother"},
            "train": {"steps": 60, "lr": 0.05, "batch_size": 256, "eval_every": 20},
        }
    )
    result = iclab.train(config, progress=False)
    for record in result.metrics:
        print(f"step {record['step']:3d}: test loss per seed {record['test_loss']}")
    h = result.model.effective_weights()["bandwidth"].tolist()
    print(f"learned bandwidth per seed: {h} (started at 3.0)")
