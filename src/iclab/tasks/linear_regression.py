"""Linear-regression ICL prompts (the setting of Ahn et al. 2023).

A prompt holds n context pairs ``(x_i, y_i)`` and a query ``x_q`` with
``x ~ N(0, Σ)``, one ``w ~ N(0, Σ_w)`` per prompt, ``y = wᵀx + ε``, ``ε ~ N(0, σ²)``.

Every tensor carries a leading *ensemble* dimension ``E`` (one slice per seed), then the batch
dimension ``B``. Each ensemble member has its own covariance (the rotated construction draws one
rotation per seed) and its own random stream, so member ``e`` of an ensemble sees exactly the data
a single run with seed ``seeds[e]`` sees.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel, Field, model_validator

from iclab.batches import PromptBatch
from iclab.matrix_functions import psd_sqrt
from iclab.registry import register_task
from iclab.seeding import make_generator
from iclab.tasks.ensemble_task import EnsembleTask
from iclab.validation import STRICT_CONFIG, FiniteFloat

PAPER_SPECTRUM_D5 = (1.0, 1.0, 0.5, 0.25, 1.0)
Matrix = list[list[float]]


def _check_matrix(name: str, value: Matrix, d: int, *, require_pd: bool) -> None:
    t = torch.tensor(value, dtype=torch.float64)
    if t.shape != (d, d):
        raise ValueError(f"{name}: expected a {d}x{d} matrix, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name}: contains NaN or inf")
    if not torch.allclose(t, t.T, atol=1e-10 * max(1.0, t.abs().max().item())):
        raise ValueError(f"{name}: must be symmetric")
    lam_min = torch.linalg.eigvalsh(t).min().item()
    scale = max(1.0, t.abs().max().item())
    if lam_min < -1e-10 * scale:
        raise ValueError(
            f"{name}: must be positive semi-definite (smallest eigenvalue {lam_min:.3g})"
        )
    if require_pd and lam_min <= 1e-12 * scale:
        raise ValueError(f"{name}: must be positive definite (smallest eigenvalue {lam_min:.3g})")


class LinearRegressionConfig(BaseModel):
    """Linear-regression task. ``covariance``/``weight_prior`` accept a name or an explicit matrix."""

    model_config = STRICT_CONFIG

    kind: Literal["linear_regression"] = "linear_regression"
    d: int = Field(5, ge=1, description="input dimension")
    n: int = Field(20, ge=1, description="number of context examples per prompt")
    covariance: Literal["identity", "rotated"] | Matrix = Field(
        "identity",
        description="Σ: 'identity', 'rotated' (U D² Uᵀ, U random orthogonal per seed) or a matrix",
    )
    spectrum: list[float] | None = Field(
        None,
        description="D of the rotated construction; default (1, 1, 1/2, 1/4, 1) repeated to length d",
    )
    weight_prior: Literal["identity", "inverse_covariance"] | Matrix = Field(
        "identity", description="Σ_w: 'identity', 'inverse_covariance' (Σ⁻¹) or a matrix"
    )
    noise_std: FiniteFloat = Field(0.0, ge=0.0, description="label noise σ")

    @model_validator(mode="after")
    def _check(self) -> LinearRegressionConfig:
        if isinstance(self.covariance, list):
            _check_matrix("covariance", self.covariance, self.d, require_pd=False)
        if self.spectrum is not None:
            if len(self.spectrum) != self.d:
                raise ValueError(f"spectrum: expected {self.d} values, got {len(self.spectrum)}")
            if not all(math.isfinite(s) and s > 0 for s in self.spectrum):
                raise ValueError("spectrum: values must be finite and > 0")
        if isinstance(self.weight_prior, list):
            _check_matrix("weight_prior", self.weight_prior, self.d, require_pd=False)
        if self.weight_prior == "inverse_covariance" and isinstance(self.covariance, list):
            _check_matrix("covariance", self.covariance, self.d, require_pd=True)
        return self

    def rotated_spectrum(self) -> list[float]:
        if self.spectrum is not None:
            return list(self.spectrum)
        return [PAPER_SPECTRUM_D5[i % len(PAPER_SPECTRUM_D5)] for i in range(self.d)]


def rotated_covariance(
    d: int, spectrum: Sequence[float], seed: int, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """Σ = U D² Uᵀ with U the left singular vectors of a d×d Uniform[−1, 1] matrix (one per seed)."""
    gen = make_generator("cpu", seed, "rotation")
    m = torch.rand(d, d, generator=gen, dtype=torch.float64) * 2 - 1
    u, _, _ = torch.linalg.svd(m)
    D = torch.tensor(list(spectrum), dtype=torch.float64)
    return (u * D**2) @ u.T


@dataclass(frozen=True)
class LinearRegressionBatch(PromptBatch):
    """A batch of prompts with their ground truth. Shapes: E ensemble, B prompts, n context, d."""

    x: torch.Tensor  # (E, B, n, d)
    y: torch.Tensor  # (E, B, n)
    x_query: torch.Tensor  # (E, B, d)
    y_query: torch.Tensor  # (E, B)
    w: torch.Tensor  # (E, B, d)
    covariance: torch.Tensor  # (E, d, d)
    weight_covariance: torch.Tensor  # (E, d, d)
    noise_std: float


@register_task("linear_regression", config=LinearRegressionConfig, batch=LinearRegressionBatch)
class LinearRegressionTask(EnsembleTask):
    """Samples :class:`LinearRegressionBatch` es for an ensemble of seeds on any device."""

    def __init__(
        self,
        config: LinearRegressionConfig,
        seeds: Sequence[int],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(config, seeds, device, dtype)
        d = config.d
        covs = []
        for s in self.seeds:
            if config.covariance == "identity":
                covs.append(torch.eye(d, dtype=torch.float64))
            elif config.covariance == "rotated":
                covs.append(rotated_covariance(d, config.rotated_spectrum(), s))
            else:
                covs.append(torch.tensor(config.covariance, dtype=torch.float64))
        cov = torch.stack(covs)
        if config.weight_prior == "identity":
            wcov = torch.eye(d, dtype=torch.float64).expand(len(seeds), d, d).clone()
        elif config.weight_prior == "inverse_covariance":
            wcov = torch.linalg.inv(cov)
        else:
            wcov = torch.tensor(config.weight_prior, dtype=torch.float64).expand(len(seeds), d, d)
        # float64 copies for theory; working-precision square roots for sampling
        self.covariance = cov
        self.weight_covariance = wcov.clone()
        self._cov_sqrt = psd_sqrt(cov).to(self.device, dtype)
        self._wcov_sqrt = psd_sqrt(wcov).to(self.device, dtype)

    def sample(self, batch_size: int, purpose: str, index: int = 0) -> LinearRegressionBatch:
        """Draw ``batch_size`` prompts per member from the stream ``(seed, purpose, index)``."""
        if batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
        n, d = self.config.n, self.config.d
        parts = []
        for s in self.seeds:
            g = make_generator(self.device, s, purpose, index)
            kw = dict(generator=g, device=self.device, dtype=self.dtype)
            parts.append(
                (
                    torch.randn(batch_size, n + 1, d, **kw),
                    torch.randn(batch_size, d, **kw),
                    torch.randn(batch_size, n + 1, **kw),
                )
            )
        raw_x = torch.stack([p[0] for p in parts])  # (E, B, n+1, d)
        raw_w = torch.stack([p[1] for p in parts])  # (E, B, d)
        raw_e = torch.stack([p[2] for p in parts])  # (E, B, n+1)
        # x = Σ^{1/2} z (row form: z Σ^{1/2}, Σ^{1/2} symmetric)
        xs = raw_x @ self._cov_sqrt.unsqueeze(1)
        w = raw_w @ self._wcov_sqrt
        ys = (xs @ w.unsqueeze(-1)).squeeze(-1) + self.config.noise_std * raw_e
        return LinearRegressionBatch(
            x=xs[:, :, :n],
            y=ys[:, :, :n],
            x_query=xs[:, :, n],
            y_query=ys[:, :, n],
            w=w,
            covariance=self.covariance.to(self.device, self.dtype),
            weight_covariance=self.weight_covariance.to(self.device, self.dtype),
            noise_std=self.config.noise_std,
        )
