"""Markov-chain ICL prompts (Ding, Lu, Lu, Nowicki & Gao 2025).

A prompt holds n context chains and one query chain, all of length d+1, that share one random
transition kernel (or, with ``mixture = k > 1``, one of k kernels per chain). An example is a
whole chain: ``x = (s_1, …, s_d)`` (the states as floats) and ``y = s_{d+1}``; the query's
``y`` is hidden.

- **Kernel prior** (any |S|): every row of the kernel is an independent ``Dirichlet(α·1)``
  draw (``dirichlet_alpha``, one prior for every |S|). For binary chains with α = 1 (the
  default) this is ``p01, p10 ~ U(0, 1)`` i.i.d. per kernel, the kernel
  ``[[1 − p01, p01], [p10, 1 − p10]]``, drawn as two uniforms; small α makes transitions nearly
  deterministic (binary rows ``Beta(α, α)``).
- **Initial state**: binary chains have ``P(s_1 = 1) = initial_prob`` (fixed); for |S| > 2 it is
  uniform on ``{0, …, |S|−1}``.
- **Correlated initial states** (``initial_correlation = ρ``): the prompt draws one state ``s⁰``
  from the initial law; each chain starts at ``s⁰`` with probability ρ and otherwise at an
  independent draw from the initial law. ρ = 0 gives independent starts. The initial law never
  depends on the kernel, so starts carry no information about it.
- **Mixtures** (``mixture = k``): the prompt draws k kernels; each chain (the query's too) uses
  one of them, uniformly at random (``assignments``).

The sampled kernels travel with the prompts (``kernels`` (E, B, k, S, S), rows sum to 1, and
``assignments`` (E, B, n+1), query last), so the Bayes predictor
(:mod:`iclab.theory.markov_chain.bayes`) and any analysis can use the ground truth. Dirichlet rows come
from Marsaglia–Tsang gamma draws on the member's own generator, so every draw is keyed by
``(seed, purpose, index)``: member e of an ensemble sees exactly what a single run with its seed
sees, on any device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel, Field

from iclab.batches import PromptBatch
from iclab.registry import register_task
from iclab.seeding import make_generator
from iclab.tasks.ensemble_task import EnsembleTask
from iclab.validation import STRICT_CONFIG, FiniteFloat

__all__ = ["MarkovChainBatch", "MarkovChainConfig", "MarkovChainTask", "sample_gamma"]


class MarkovChainConfig(BaseModel):
    """Markov-chain prompts (see the module docstring)."""

    model_config = STRICT_CONFIG

    kind: Literal["markov_chain"] = "markov_chain"
    d: int = Field(5, ge=1, description="x holds the first d states; chains have d+1 states")
    n: int = Field(10, ge=1, description="number of context chains per prompt")
    states: int = Field(2, ge=2, description="number of states |S| (≥ 2)")
    initial_prob: FiniteFloat = Field(
        0.5, gt=0.0, lt=1.0, description="P(s_1 = 1) for binary chains, in (0, 1)"
    )
    dirichlet_alpha: FiniteFloat = Field(
        1.0, gt=0.0, description="α of the Dirichlet(α·1) kernel rows, any |S| (> 0)"
    )
    initial_correlation: FiniteFloat = Field(
        0.0, ge=0.0, lt=1.0, description="ρ: probability that a chain starts at the shared s⁰"
    )
    mixture: int = Field(1, ge=1, description="kernels per prompt; each chain uses one of them")


@dataclass(frozen=True)
class MarkovChainBatch(PromptBatch):
    """A batch of Markov-chain prompts with their ground truth (E ensemble, B prompts)."""

    x: torch.Tensor  # (E, B, n, d) states s_1..s_d of the context chains, as floats
    y: torch.Tensor  # (E, B, n) s_{d+1}
    x_query: torch.Tensor  # (E, B, d)
    y_query: torch.Tensor  # (E, B)
    kernels: torch.Tensor  # (E, B, k, S, S) transition matrices, rows sum to 1
    assignments: torch.Tensor  # (E, B, n+1) int64: which kernel each chain uses (query last)
    config: MarkovChainConfig

    @property
    def num_states(self) -> int:
        return self.config.states

    def to(self, dtype: torch.dtype) -> MarkovChainBatch:
        """The same batch with the floating-point fields cast (``assignments`` stays int64)."""
        return MarkovChainBatch(
            x=self.x.to(dtype),
            y=self.y.to(dtype),
            x_query=self.x_query.to(dtype),
            y_query=self.y_query.to(dtype),
            kernels=self.kernels.to(dtype),
            assignments=self.assignments,
            config=self.config,
        )


def sample_gamma(
    alpha: float, shape: Sequence[int], generator: torch.Generator, device, dtype
) -> torch.Tensor:
    """Gamma(α, 1) draws from ``generator`` (Marsaglia & Tsang 2000), vectorized.

    For α < 1 uses ``Gamma(α) = Gamma(α + 1) · U^{1/α}``. Rejection runs in rounds over the
    still-rejected entries only (acceptance ≥ 95% for α ≥ 1), so the number of draws depends on
    the generator alone: deterministic per seed.
    """
    boost = alpha < 1.0
    a = alpha + 1.0 if boost else alpha
    dd = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * dd)
    kw = dict(generator=generator, device=device, dtype=torch.float64)
    out = torch.empty(math.prod(shape), device=device, dtype=torch.float64)
    todo = torch.arange(out.numel(), device=device)
    while todo.numel() > 0:
        z = torch.randn(todo.numel(), **kw)
        u = torch.rand(todo.numel(), **kw)
        v = (1.0 + c * z) ** 3
        ok = (v > 0) & (
            torch.log(u) < 0.5 * z * z + dd - dd * v + dd * torch.log(v.clamp_min(1e-300))
        )
        out[todo[ok]] = dd * v[ok]
        todo = todo[~ok]
    if boost:
        u = torch.rand(out.numel(), **kw)
        out = out * u.pow(1.0 / alpha)
    return out.reshape(tuple(shape)).to(dtype)


@register_task("markov_chain", config=MarkovChainConfig, batch=MarkovChainBatch)
class MarkovChainTask(EnsembleTask):
    """Samples :class:`MarkovChainBatch` es for an ensemble of seeds on any device."""

    def __init__(
        self,
        config: MarkovChainConfig,
        seeds: Sequence[int],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(config, seeds, device, dtype)

    def _kernels(self, g: torch.Generator, batch_size: int) -> torch.Tensor:
        """(B, k, S, S) float64 transition matrices."""
        cfg = self.config
        S, k = cfg.states, cfg.mixture
        if S == 2 and cfg.dirichlet_alpha == 1.0:  # U(0, 1) rows = Dirichlet(1, 1) rows
            p = torch.rand(batch_size, k, 2, generator=g, device=self.device, dtype=torch.float64)
            p01, p10 = p[..., 0], p[..., 1]
            rows = [torch.stack([1 - p01, p01], -1), torch.stack([p10, 1 - p10], -1)]
            return torch.stack(rows, dim=-2)
        gam = sample_gamma(
            cfg.dirichlet_alpha, (batch_size, k, S, S), g, self.device, torch.float64
        )
        return gam / gam.sum(-1, keepdim=True)

    def _initial(self, g: torch.Generator, shape: tuple[int, ...]) -> torch.Tensor:
        """Draws from the initial law, int64 of ``shape``."""
        cfg = self.config
        if cfg.states == 2:
            u = torch.rand(shape, generator=g, device=self.device, dtype=torch.float64)
            return (u < cfg.initial_prob).long()
        return torch.randint(cfg.states, shape, generator=g, device=self.device)

    def _one_member(self, seed: int, batch_size: int, purpose: str, index: int):
        cfg = self.config
        B, N, k = batch_size, cfg.n + 1, cfg.mixture
        g = make_generator(self.device, seed, purpose, index)
        kernels = self._kernels(g, B)  # (B, k, S, S)
        if k > 1:
            assign = torch.randint(k, (B, N), generator=g, device=self.device)
        else:
            assign = torch.zeros(B, N, dtype=torch.long, device=self.device)
        start = self._initial(g, (B, N))
        if cfg.initial_correlation > 0:
            shared = self._initial(g, (B, 1))
            copy = torch.rand(B, N, generator=g, device=self.device) < cfg.initial_correlation
            start = torch.where(copy, shared.expand(B, N), start)
        # per-chain kernel (B, N, S, S) and its row-wise CDFs
        chain_kernel = kernels[torch.arange(B, device=self.device)[:, None], assign]
        cdf = chain_kernel.cumsum(-1)
        u = torch.rand(B, N, cfg.d, generator=g, device=self.device, dtype=torch.float64)
        states = [start]
        for t in range(cfg.d):
            row = torch.gather(
                cdf, 2, states[-1][:, :, None, None].expand(B, N, 1, cfg.states)
            ).squeeze(2)  # (B, N, S)
            nxt = (u[:, :, t, None] > row).sum(-1).clamp_max(cfg.states - 1)
            states.append(nxt)
        return kernels, assign, torch.stack(states, -1)  # (B, N, d+1)

    def sample(self, batch_size: int, purpose: str, index: int = 0) -> MarkovChainBatch:
        """Draw ``batch_size`` prompts per member from the stream ``(seed, purpose, index)``."""
        if batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
        parts = [self._one_member(s, batch_size, purpose, index) for s in self.seeds]
        kernels = torch.stack([p[0] for p in parts]).to(self.dtype)
        assign = torch.stack([p[1] for p in parts])
        chains = torch.stack([p[2] for p in parts]).to(self.dtype)  # (E, B, n+1, d+1)
        n, d = self.config.n, self.config.d
        return MarkovChainBatch(
            x=chains[:, :, :n, :d],
            y=chains[:, :, :n, d],
            x_query=chains[:, :, n, :d],
            y_query=chains[:, :, n, d],
            kernels=kernels,
            assignments=assign,
            config=self.config,
        )
