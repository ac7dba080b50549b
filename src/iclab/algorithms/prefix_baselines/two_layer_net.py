"""A two-layer ReLU network trained by Adam on every prefix, all prompts and prefixes at once.

The model is ``f(x) = w₂ᵀ relu(W₁x + b₁) + b₂`` with ``width`` hidden units (``nn.Linear``
layers with biases), initialized as PyTorch's ``nn.Linear``: every entry uniform on
``[−1/√fan_in, 1/√fan_in]`` (``fan_in = d`` for ``W₁, b₁``, ``width`` for ``w₂, b₂``). For the
prefix of length ``i`` it minimizes the mean squared error ``(1/i) Σ_{j<i} (f(x_j) − y_j)²``
by full-batch Adam (``torch.optim.Adam`` defaults: β = (0.9, 0.999), eps = 1e-8) for ``steps``
steps at learning rate ``lr``, starting from the prompt's initialization; the prediction at
position ``i`` is ``f(x_i)``.

**Batching.** Each (prompt, prefix) pair has its own parameters, stacked as tensors of shape
(P, E, B, …) for the P evaluated prefix lengths. The loss summed over all pairs has, for each
pair's parameters, exactly that pair's gradient (the masked-out points ``j ≥ i`` contribute a
zero term), and Adam acts elementwise, so one ``torch.optim.Adam`` over the stacked tensors runs
all the per-prompt optimizations at once, equal to separate runs up to the summation order of
the matrix products (checked against a per-prompt loop in the tests).

**Initialization and seeding.** :func:`two_layer_net_init` draws the initial parameters of all
prompts from one ``torch.Generator`` seeded with ``seed`` on the CPU (``W₁``, ``b₁``, ``w₂``,
``b₂`` in that order, in float64) and moves them to the input's device and dtype, so the result
is the same on every device; every prefix length of a prompt starts from that prompt's draw.
Defaults (width 100, Adam with lr 5e-3, 1000 steps, batch = the whole prefix) follow the ReLU
network baseline of Garg et al. (2022).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from iclab.algorithms.prefix_baselines.sequence_shapes import (
    check_counts,
    check_positions,
    check_sequences,
    new_predictions,
)

__all__ = ["prefix_two_layer_net", "two_layer_net_init"]


def two_layer_net_init(
    E: int,
    B: int,
    d: int,
    width: int = 100,
    seed: int = 0,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """Initial parameters of every prompt's network (module docstring).

    Returns ``{"W1": (E, B, width, d), "b1": (E, B, width), "w2": (E, B, width), "b2": (E, B)}``.
    """
    gen = torch.Generator().manual_seed(seed)

    def uniform(shape: tuple[int, ...], fan_in: int) -> torch.Tensor:
        u = torch.rand(shape, generator=gen, dtype=torch.float64)
        return ((2 * u - 1) / math.sqrt(fan_in)).to(dtype=dtype, device=device)

    return {
        "W1": uniform((E, B, width, d), d),
        "b1": uniform((E, B, width), d),
        "w2": uniform((E, B, width), width),
        "b2": uniform((E, B), width),
    }


def _forward(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Outputs (P, E, B, N) of the stacked networks (P, E, B, …) on the points x (E, B, N, d)."""
    hidden = torch.einsum("ebnd,pebhd->pebnh", x, params["W1"]) + params["b1"].unsqueeze(-2)
    return (torch.relu(hidden) @ params["w2"].unsqueeze(-1)).squeeze(-1) + params["b2"][..., None]


def prefix_two_layer_net(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    width: int = 100,
    steps: int = 1000,
    lr: float = 5e-3,
    seed: int = 0,
    positions: Sequence[int] | None = None,
) -> torch.Tensor:
    """Prediction ``f(x_i)`` of a two-layer ReLU net trained on each prefix (module docstring).

    Memory is dominated by the hidden activations, (P, E, B, N, width) with their gradients; pass
    ``positions`` (or fewer prompts) for long sequences.

    Args:
        x: (E, B, N, d) covariates.
        y: (E, B, N) labels.
        width: hidden units.
        steps: full-batch Adam steps.
        lr: Adam learning rate.
        seed: seed of the initialization.
        positions: prefix lengths to evaluate (default all).

    Returns:
        (E, B, N) prefix predictions (NaN at positions not evaluated).
    """
    N, d = check_sequences(x, y)
    check_counts(width=width, steps=steps)
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr: expected a finite number > 0, got {lr!r}")
    pos = check_positions(positions, N)
    out = new_predictions(x, pos)
    fit = [i for i in pos if i > 0]
    if not fit:
        return out
    E, B = x.shape[:2]
    x, y = x.detach(), y.detach()
    init = two_layer_net_init(E, B, d, width, seed, dtype=x.dtype, device=x.device)
    P = len(fit)
    params = {
        k: v.unsqueeze(0).expand(P, *v.shape).clone().requires_grad_(True) for k, v in init.items()
    }
    lengths = torch.tensor(fit, device=x.device)
    mask = (torch.arange(N, device=x.device) < lengths[:, None]).to(x.dtype)  # (P, N)
    weight = (mask / lengths.to(x.dtype)[:, None])[:, None, None, :]  # (P, 1, 1, N): 1/i on j < i
    opt = torch.optim.Adam(params.values(), lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = (weight * (_forward(params, x) - y) ** 2).sum()
            loss.backward()
            opt.step()
    with torch.no_grad():
        pred = _forward(params, x)  # (P, E, B, N)
        at = lengths.view(P, 1, 1, 1).expand(P, E, B, 1)
        out[..., lengths] = pred.gather(-1, at).squeeze(-1).permute(1, 2, 0)
    return out
