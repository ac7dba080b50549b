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
        return self._draw(batch_size, purpose, index, None)[0]

    def sample_tilted(
        self, batch_size: int, purpose: str, index: int, scales: Sequence[float]
    ) -> tuple[LinearRegressionBatch, torch.Tensor]:
        """A defensive importance-sampling batch and its likelihood-ratio weights (E, B) float64.

        Each prompt (per member) picks a component ``k`` uniformly from ``scales`` and draws its
        context covariates as ``x_i = s_k Σ^{1/2} z_i``; the query, ``w`` and the noise are
        drawn as by :meth:`sample`, from the same stream (so the unscaled draws *are*
        ``sample(batch_size, purpose, index)``'s), and the labels come from the scaled ``x``.
        The components come from the separate stream ``(seed, purpose, index, "tail_scale")``.
        With ``u = s_k z`` the whitened context (n·d entries) the weight is

            p(u)/q(u) = 1 / mean_j s_j^{-nd} exp(½‖u‖²(1 − 1/s_j²)),

        q the equal mixture of N(0, s_j² I), so ``E_q[weight · f] = E_p[f]`` for every function
        f of the prompt, and a scale 1.0 among ``scales`` bounds every weight by their number.
        """
        scales = [float(s) for s in scales]
        if not scales or not all(math.isfinite(s) and s > 0 for s in scales):
            raise ValueError(f"scales: expected finite values > 0, got {scales}")
        batch, weights = self._draw(batch_size, purpose, index, scales)
        assert weights is not None
        return batch, weights

    def _draw(
        self, batch_size: int, purpose: str, index: int, scales: list[float] | None
    ) -> tuple[LinearRegressionBatch, torch.Tensor | None]:
        """The batch of the stream ``(seed, purpose, index)``, tilted by ``scales`` (with its
        weights) unless None."""
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
        weights = None
        if scales is not None:
            raw_x, weights = self._tilt(raw_x, batch_size, purpose, index, scales)
        # x = Σ^{1/2} z (row form: z Σ^{1/2}, Σ^{1/2} symmetric)
        xs = raw_x @ self._cov_sqrt.unsqueeze(1)
        w = raw_w @ self._wcov_sqrt
        ys = (xs @ w.unsqueeze(-1)).squeeze(-1) + self.config.noise_std * raw_e
        batch = LinearRegressionBatch(
            x=xs[:, :, :n],
            y=ys[:, :, :n],
            x_query=xs[:, :, n],
            y_query=ys[:, :, n],
            w=w,
            covariance=self.covariance.to(self.device, self.dtype),
            weight_covariance=self.weight_covariance.to(self.device, self.dtype),
            noise_std=self.config.noise_std,
        )
        return batch, weights

    def _tilt(
        self, raw_x: torch.Tensor, batch_size: int, purpose: str, index: int, scales: list[float]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``raw_x`` (E, B, n+1, d, a fresh tensor: scaled in place) with each prompt's context
        rows times its drawn scale, and the weights p/q (E, B) float64 (see
        :meth:`sample_tilted`)."""
        n, d = self.config.n, self.config.d
        comps = torch.stack(
            [
                torch.randint(
                    len(scales),
                    (batch_size,),
                    generator=make_generator(self.device, s, purpose, index, "tail_scale"),
                    device=self.device,
                )
                for s in self.seeds
            ]
        )  # (E, B)
        table = torch.tensor(scales, dtype=torch.float64, device=self.device)
        factor = table[comps].to(raw_x.dtype)  # (E, B): each prompt's s_k
        raw_x[:, :, :n] *= factor[:, :, None, None]
        # ‖u‖² of the whitened context actually used, in float64
        norm2 = raw_x[:, :, :n].double().pow(2).sum((-1, -2))  # (E, B)
        # log of s_j^{-nd} exp(½‖u‖²(1 − 1/s_j²)), (E, B, K)
        terms = -n * d * table.log() + 0.5 * norm2[..., None] * (1.0 - table.pow(-2))
        log_q_over_p = torch.logsumexp(terms, dim=-1) - math.log(len(scales))
        return raw_x, torch.exp(-log_q_over_p)
