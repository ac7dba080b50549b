"""Linear-dynamics sequences (Zheng, Huang, Wang, Wu, Zhu & Li 2024).

Each sequence has its own transition ``W`` (d×d) and start ``x_1``; then ``x_{t+1} = W x_t`` for
t = 1..T−1. A batch holds ``x`` (E, m, T, d) and the transitions ``W`` (E, m, d, d), both
*complex* (``complex64`` for float32 work, ``complex128`` for float64), so the ground truth
travels with the data and every model sees one dtype whatever the transition law.

Transitions (``transition``):

- ``complex_diagonal_unitary`` (the paper's): ``W = diag(e^{iθ_1}, …, e^{iθ_d})``,
  ``θ_j ~ U[0, 2π)`` i.i.d. per sequence. The trajectory is evaluated in closed form,
  ``x_{t,j} = e^{i(t−1)θ_j} x_{1,j}``, so no round-off accumulates along the sequence.
- ``real_orthogonal``: a Haar-random orthogonal W per sequence: ``G`` with N(0, 1) entries,
  ``G = QR``, ``W = Q · diag(sign(diag R))`` (the sign fix makes the law exactly Haar).
- ``stable``: a general real W with spectral radius exactly ``spectral_radius = ρ ∈ (0, 1)``:
  ``W = ρ · G / max|eig(G)|`` with ``G`` N(0, 1). ``x_t → 0`` geometrically, but W is not
  normal, so ``‖W^k‖`` may exceed 1 for small k (transient growth).

The real laws give real-valued trajectories, stored with zero imaginary part.

Laws of ``x_1`` (``x1``), all *real-valued* as in the paper (its moment conditions and the limit
``c* → 1/(5σ²)`` of the paper use real Gaussian moments κ4 = 3σ⁴, κ6 = 15σ⁶; a circular
complex Gaussian would give κ4 = 2σ⁴, κ6 = 6σ⁶ and a different limit):

- ``gaussian``: ``x_1 ~ N(0, σ²I)`` (``sigma``);
- ``sparse``: ``x_1 = ±c·e_k``, k uniform on {1..d}, sign uniform (``c``);
- ``ones``: ``x_1 = (1, …, 1)`` (no draw);
- ``custom``: a user-given sampler passed to :class:`LinearDynamicsTask` as
  ``x1_sampler(generator, shape, device) -> tensor`` of ``shape = (m, d)`` (real or complex; it
  must draw only from ``generator`` to stay deterministic per seed). The config only records
  ``"custom"`` so it stays serializable; the callable lives on the task object.

Every draw comes from the member's generator ``make_generator(device, seed, purpose, index)``, in
float64, transition first and then ``x_1``; the trajectory is computed in complex128 and cast
to the working dtype. So a batch is a pure function of (seed, purpose, index), member e of an
ensemble equals a single-seed task with ``seeds[e]``, and float32 batches are the float64 ones
rounded.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel, Field

from iclab.batches import SequenceBatch
from iclab.device import complex_dtype
from iclab.registry import register_task
from iclab.seeding import make_generator
from iclab.tasks.ensemble_task import EnsembleTask
from iclab.validation import STRICT_CONFIG, FiniteFloat

__all__ = [
    "LinearDynamicsBatch",
    "LinearDynamicsConfig",
    "LinearDynamicsTask",
    "X1Sampler",
]

X1Sampler = Callable[[torch.Generator, tuple[int, ...], torch.device], torch.Tensor]
"""``x1_sampler(generator, shape, device) -> tensor of shape`` (real or complex)."""

Transition = Literal["complex_diagonal_unitary", "real_orthogonal", "stable"]
X1Law = Literal["gaussian", "sparse", "ones", "custom"]


class LinearDynamicsConfig(BaseModel):
    """Linear-dynamics sequences ``x_{t+1} = W x_t`` (see the module docstring)."""

    model_config = STRICT_CONFIG

    kind: Literal["linear_dynamics"] = "linear_dynamics"
    d: int = Field(5, ge=1, description="state dimension d (≥ 1)")
    T: int = Field(100, ge=3, description="sequence length T (≥ 3: the loss needs t = 2..T−1)")
    transition: Transition = Field(
        "complex_diagonal_unitary",
        description="law of W per sequence: 'complex_diagonal_unitary' (paper), "
        "'real_orthogonal' (Haar) or 'stable' (spectral radius spectral_radius)",
    )
    spectral_radius: FiniteFloat = Field(
        0.9, gt=0.0, lt=1.0, description="spectral radius ρ of 'stable' transitions, in (0, 1)"
    )
    x1: X1Law = Field(
        "gaussian",
        description="law of x_1: 'gaussian' N(0, σ²I), 'sparse' ±c·e_k, 'ones', or 'custom' "
        "(a sampler passed to the task)",
    )
    sigma: FiniteFloat = Field(1.0, gt=0.0, description="σ of the Gaussian x_1 (> 0)")
    c: FiniteFloat = Field(1.0, gt=0.0, description="magnitude c of the sparse x_1 = ±c·e_k (> 0)")


@dataclass(frozen=True)
class LinearDynamicsBatch(SequenceBatch):
    """Sequences with their ground truth (E ensemble members, m sequences each)."""

    x: torch.Tensor  # (E, m, T, d) complex: x_1..x_T
    W: torch.Tensor  # (E, m, d, d) complex: the transition of each sequence
    x1_law: str  # "gaussian", "sparse", "ones" or "custom:<sampler name>"
    config: LinearDynamicsConfig

    @property
    def m(self) -> int:
        return self.x.shape[-3]

    @property
    def T(self) -> int:
        return self.x.shape[-2]

    @property
    def d(self) -> int:
        return self.x.shape[-1]

    @property
    def x1(self) -> torch.Tensor:
        """The starts x_1, (E, m, d)."""
        return self.x[..., 0, :]

    def next_state(self) -> torch.Tensor:
        """``x_{T+1} = W x_T`` (E, m, d): the target of the final-step prediction ŷ_T."""
        return (self.W @ self.x[..., -1, :].unsqueeze(-1)).squeeze(-1)

    def to(self, dtype: torch.dtype) -> LinearDynamicsBatch:
        """The same batch in the complex dtype of ``dtype`` (float32 → complex64, …)."""
        cd = complex_dtype(dtype)
        return dataclasses.replace(self, x=self.x.to(cd), W=self.W.to(cd))


@register_task("linear_dynamics", config=LinearDynamicsConfig, batch=LinearDynamicsBatch)
class LinearDynamicsTask(EnsembleTask):
    """Samples :class:`LinearDynamicsBatch` es for an ensemble of seeds on any device.

    ``x1_sampler`` is required exactly when ``config.x1 == "custom"``.
    """

    def __init__(
        self,
        config: LinearDynamicsConfig,
        seeds: Sequence[int],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        x1_sampler: X1Sampler | None = None,
    ) -> None:
        super().__init__(config, seeds, device, dtype)
        self.complex_dtype = complex_dtype(dtype)
        if config.x1 == "custom" and x1_sampler is None:
            raise ValueError(
                "x1: 'custom' needs a sampler: pass x1_sampler=f to LinearDynamicsTask, "
                "with f(generator, shape, device) -> tensor of shape (m, d)"
            )
        if config.x1 != "custom" and x1_sampler is not None:
            raise ValueError(
                f"x1_sampler: given, but x1 is {config.x1!r}; set x1='custom' to use a sampler"
            )
        if x1_sampler is not None and not callable(x1_sampler):
            raise ValueError("x1_sampler: must be callable(generator, shape, device)")
        self.x1_sampler = x1_sampler

    @property
    def x1_law(self) -> str:
        if self.config.x1 != "custom":
            return self.config.x1
        name = getattr(self.x1_sampler, "__name__", type(self.x1_sampler).__name__)
        return f"custom:{name}"

    # ------------------------------------------------------------------------ draws
    def _transition(self, g: torch.Generator, m: int):
        """(W (m, d, d) complex128, phases θ (m, d) float64 or None)."""
        cfg, dev, d = self.config, self.device, self.config.d
        kw = dict(generator=g, device=dev, dtype=torch.float64)
        if cfg.transition == "complex_diagonal_unitary":
            theta = torch.rand(m, d, **kw) * (2 * math.pi)
            W = torch.diag_embed(torch.polar(torch.ones_like(theta), theta))
            return W, theta
        G = torch.randn(m, d, d, **kw)
        if cfg.transition == "real_orthogonal":
            Q, R = torch.linalg.qr(G)
            sign = torch.sign(torch.diagonal(R, dim1=-2, dim2=-1))
            sign = torch.where(sign == 0, torch.ones_like(sign), sign)
            return (Q * sign.unsqueeze(-2)).to(torch.complex128), None
        rho = torch.linalg.eigvals(G).abs().amax(-1)  # (m,)
        rho = rho.clamp_min(torch.finfo(torch.float64).tiny)
        W = G * (cfg.spectral_radius / rho)[:, None, None]
        return W.to(torch.complex128), None

    def _x1(self, g: torch.Generator, m: int) -> torch.Tensor:
        """(m, d) complex128 starts."""
        cfg, dev, d = self.config, self.device, self.config.d
        kw = dict(generator=g, device=dev, dtype=torch.float64)
        if cfg.x1 == "gaussian":
            x1 = torch.randn(m, d, **kw) * cfg.sigma
        elif cfg.x1 == "sparse":
            k = torch.randint(d, (m,), generator=g, device=dev)
            sign = torch.randint(2, (m,), generator=g, device=dev).to(torch.float64) * 2 - 1
            x1 = torch.zeros(m, d, device=dev, dtype=torch.float64)
            x1[torch.arange(m, device=dev), k] = sign * cfg.c
        elif cfg.x1 == "ones":
            x1 = torch.ones(m, d, device=dev, dtype=torch.float64)
        else:
            x1 = self._custom_x1(g, m)
        return x1.to(torch.complex128)

    def _custom_x1(self, g: torch.Generator, m: int) -> torch.Tensor:
        shape = (m, self.config.d)
        out = self.x1_sampler(g, shape, self.device)  # type: ignore[misc]
        if not torch.is_tensor(out):
            raise ValueError(f"x1_sampler: must return a tensor, got {type(out).__name__}")
        if tuple(out.shape) != shape:
            raise ValueError(f"x1_sampler: must return shape {shape}, got {tuple(out.shape)}")
        out = out.to(device=self.device)
        out = out.to(torch.complex128 if out.is_complex() else torch.float64)
        if not bool(torch.isfinite(out).all()):
            raise ValueError("x1_sampler: returned non-finite values")
        return out

    def _one_member(self, seed: int, m: int, purpose: str, index: int):
        T = self.config.T
        g = make_generator(self.device, seed, purpose, index)
        W, theta = self._transition(g, m)
        x1 = self._x1(g, m)
        if theta is not None:  # closed form x_t = e^{i(t−1)θ} ⊙ x_1
            steps = torch.arange(T, device=self.device, dtype=torch.float64)
            phase = steps[None, :, None] * theta[:, None, :]  # (m, T, d)
            x = torch.polar(torch.ones_like(phase), phase) * x1[:, None, :]
        else:
            xs = [x1]
            for _ in range(T - 1):
                xs.append((W @ xs[-1].unsqueeze(-1)).squeeze(-1))
            x = torch.stack(xs, dim=1)  # (m, T, d)
        return x, W

    def sample(self, num_sequences: int, purpose: str, index: int = 0) -> LinearDynamicsBatch:
        """Draw ``num_sequences`` sequences per member from the stream ``(seed, purpose, index)``."""
        if num_sequences < 1:
            raise ValueError(f"num_sequences: must be >= 1, got {num_sequences}")
        parts = [self._one_member(s, num_sequences, purpose, index) for s in self.seeds]
        cd = self.complex_dtype
        return LinearDynamicsBatch(
            x=torch.stack([p[0] for p in parts]).to(cd),
            W=torch.stack([p[1] for p in parts]).to(cd),
            x1_law=self.x1_law,
            config=self.config,
        )
