"""Shampoo for stacks of small matrices, with Adam grafting.

Shampoo (Gupta, Koren & Singer 2018) preconditions the gradient ``G`` of a matrix parameter from
both sides, ``L^{-p} G R^{-p}``, with ``L``/``R`` running averages of ``G Gᵀ`` and ``Gᵀ G`` and
``p = 1/4`` in the original method (``train.shampoo_exponent``). On one matrix (no averaging) the
direction is ``U S^{1-4p} Vᵀ`` for ``G = U S Vᵀ``: the polar factor at ``p = 1/4``. Two larger
exponents have a meaning when the errors are isotropic on average:

- ``p = 1/2`` is the Kronecker-factored Newton step of ``½‖P (W − W*) Q‖²``: there
  ``G = PᵀP (W − W*) QQᵀ``, ``L ∝ (PᵀP)²``, ``R ∝ (QQᵀ)²``, and the step recovers ``W − W*``;
- ``p = 1`` is gradient descent in whitened variables ``W̃ = P W Q``: ``G = Pᵀ G̃ Qᵀ``,
  ``L ∝ PᵀP``, ``R ∝ QQᵀ``, so ``P (L⁻¹ G R⁻¹) Q = G̃``.

A rotated input covariance Σ makes LSA's loss landscape two-sided ill-conditioned in this way
(``Σ^{1/2} A_ℓ Σ^{1/2}`` and ``Σ^{-1/2} B_ℓ Σ^{1/2}`` are the well-conditioned variables), so
Shampoo trains Ahn et al.'s rotated task far faster than Adam; it does not make it as fast as
Σ = I (measured in ``iclab.experiments.ahn2023``). Eigenvalues of ``L``, ``R`` are floored at
``root_eps`` times the largest before the root, which bounds how much a larger ``p`` amplifies
directions the gradients have barely visited.
The step's size is *grafted* from Adam (each matrix's step has the norm Adam's would have),
so learning rates transfer from Adam. A parameter with at least four dims (iclab's (E, L, H, m, n)
layout) is a stack of matrices, each preconditioned on its own, so ensemble members stay
independent; smaller parameters (e.g. a label weight per head, (E, L, H)) take Adam's step.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def _inverse_root(m: torch.Tensor, exponent: float, eps: float) -> torch.Tensor:
    """``m^{-exponent}`` of a stack of PSD matrices, eigenvalues floored at ``eps``·(largest)."""
    lam, v = torch.linalg.eigh(m)
    floor = eps * lam.amax(dim=-1, keepdim=True).clamp_min(1e-30)
    return (v * (lam.clamp_min(0) + floor).pow(-exponent).unsqueeze(-2)) @ v.transpose(-1, -2)


class Shampoo(torch.optim.Optimizer):
    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        root_eps: float = 1e-4,
        weight_decay: float = 0.0,
        exponent: float = 0.25,
    ) -> None:
        if not 0.0 < exponent <= 1.0:
            raise ValueError(f"exponent must be in (0, 1], got {exponent}")
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            root_eps=root_eps,
            weight_decay=weight_decay,
            exponent=exponent,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                matrix = p.dim() >= 4
                st = self.state[p]
                if not st:
                    st["step"] = torch.zeros((), dtype=torch.float64)
                    st["exp_avg"] = torch.zeros_like(p)
                    st["exp_avg_sq"] = torch.zeros_like(p)
                    if matrix:
                        m, k = p.shape[-2], p.shape[-1]
                        kw = dict(dtype=p.dtype, device=p.device)
                        st["left"] = torch.zeros(*p.shape[:-2], m, m, **kw)
                        st["right"] = torch.zeros(*p.shape[:-2], k, k, **kw)
                st["step"] += 1
                t = int(st["step"].item())
                st["exp_avg_sq"].mul_(b2).addcmul_(g, g, value=1 - b2)
                corr = 1 - b2**t
                if matrix:
                    adam_dir = g / ((st["exp_avg_sq"] / corr).sqrt() + group["eps"])
                    gt = g.transpose(-1, -2)
                    st["left"].mul_(b2).add_(g @ gt, alpha=1 - b2)
                    st["right"].mul_(b2).add_(gt @ g, alpha=1 - b2)
                    p_exp, r_eps = group["exponent"], group["root_eps"]
                    pre = (
                        _inverse_root(st["left"] / corr, p_exp, r_eps)
                        @ g
                        @ _inverse_root(st["right"] / corr, p_exp, r_eps)
                    )
                    norm = lambda x: torch.linalg.matrix_norm(x, keepdim=True)  # noqa: E731
                    pre = pre * (norm(adam_dir) / norm(pre).clamp_min(1e-30))
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                if matrix:  # momentum on the grafted, preconditioned direction
                    st["exp_avg"].mul_(b1).add_(pre, alpha=1 - b1)
                    p.add_(st["exp_avg"], alpha=-group["lr"] / (1 - b1**t))
                else:  # exactly Adam
                    st["exp_avg"].mul_(b1).add_(g, alpha=1 - b1)
                    denom = (st["exp_avg_sq"] / corr).sqrt() + group["eps"]
                    p.addcdiv_(st["exp_avg"], denom, value=-group["lr"] / (1 - b1**t))
        return loss
