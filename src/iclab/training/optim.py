"""Optimizers, learning-rate schedules and per-ensemble-member gradient clipping.

Every parameter carries a leading ensemble dimension. Adam, AdamW and SGD act elementwise, and
the loss is the *sum* of the members' losses, so members train independently in one program.
Clipping norms are therefore computed per member (never across members).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from iclab.config import ClipConfig, ScheduleConfig, TrainConfig
from iclab.training.shampoo import Shampoo


def build_optimizer(
    params: Iterable[torch.nn.Parameter], cfg: TrainConfig
) -> torch.optim.Optimizer:
    params = list(params)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(
            params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay
        )
    if cfg.optimizer == "shampoo":
        return Shampoo(
            params,
            lr=cfg.lr,
            betas=cfg.betas,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            exponent=cfg.shampoo_exponent,
        )
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(
            params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay
        )
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def lr_factor(step: int, total_steps: int, cfg: ScheduleConfig) -> float:
    """Multiplier of the base learning rate at (0-based) ``step``; stateless, so resume is exact."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.kind == "constant":
        return 1.0
    if cfg.kind == "step":
        return cfg.gamma ** (step // cfg.step_every)
    span = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_factor + (1 - cfg.min_factor) * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def clip_gradients(params: Iterable[torch.nn.Parameter], cfg: ClipConfig) -> torch.Tensor | None:
    """Clip in place; returns the per-member pre-clipping global norm (E,) (None if no grads)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return None
    sq = sum(g.abs().square().flatten(1).sum(1) for g in grads)  # (E,), complex grads too
    norm = sq.sqrt()
    if cfg.mode == "global":
        scale = (cfg.max_norm / (norm + 1e-12)).clamp(max=1.0)
        for g in grads:
            g.mul_(scale.view(-1, *([1] * (g.dim() - 1))))
    elif cfg.mode == "per_matrix":
        for g in grads:
            m = g.abs().square().sum(dim=(-2, -1), keepdim=True).sqrt()
            g.mul_((cfg.max_norm / (m + 1e-12)).clamp(max=1.0))
    return norm
