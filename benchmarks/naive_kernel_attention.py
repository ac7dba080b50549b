"""A deliberately naive kernel-attention trainer step, the baseline iclab's KernelAttention is
measured against (Cheng, Chen & Sra 2024).

Written straight from the math, the way typical public ICL codebases write it. Tokens are rows
``z = [x; y]`` in a (B, n+1, d+1) matrix, query last with label slot 0. Every layer updates the
*whole* token matrix:

    z_m ← z_m + Σ_h Σ_{j≤n} a_h(m, j) · P_h z_j,      P_h = [[0, 0], [0, v_h]]

with scores ``s_h(m, j) = ⟨Q_h x_j, K_h x_m⟩`` on the x part, ``a_h = h(s)/n`` for the
activations linear / relu / exp and ``a_h = softmax_j s`` for softmax; the prediction is
``−Z_L[query, label]``. Deliberately naive choices: one model and one ``torch.optim.Adam`` per
seed looped in Python, a per-head Python loop, Q_h / K_h embedded into full (d+1)×(d+1) matrices
and applied to the full tokens, an explicit (n+1)×(n+1) score matrix over all tokens with the
query column masked out (only the n context tokens are keys), and the full (d+1)×(d+1) value
matrix P_h built in every layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

ACTIVATIONS = ("linear", "relu", "exp", "softmax")


class NaiveKernelAttention(torch.nn.Module):
    """One seed's L-layer kernel-attention model with one head per entry of ``heads``."""

    def __init__(
        self,
        d: int,
        layers: int,
        heads: Sequence[str],
        init_std: float,
        generator: torch.Generator,
    ) -> None:
        super().__init__()
        for act in heads:
            if act not in ACTIVATIONS:
                raise ValueError(f"unknown activation {act!r}; expected one of {ACTIVATIONS}")
        self.d = d
        self.heads = list(heads)
        H = len(self.heads)
        self.Q = torch.nn.Parameter(torch.randn(layers, H, d, d, generator=generator) * init_std)
        self.K = torch.nn.Parameter(torch.randn(layers, H, d, d, generator=generator) * init_std)
        self.v = torch.nn.Parameter(torch.randn(layers, H, generator=generator) * init_std)

    def _embed(self, M: torch.Tensor) -> torch.Tensor:
        """A d×d matrix acting on the x part, as a full (d+1)×(d+1) matrix on the token."""
        full = torch.zeros(self.d + 1, self.d + 1, dtype=M.dtype, device=M.device)
        full[: self.d, : self.d] = M
        return full

    def _value(self, v: torch.Tensor) -> torch.Tensor:
        """P = [[0, 0], [0, v]]: value x-block 0, label weight v."""
        P = torch.zeros(self.d + 1, self.d + 1, dtype=v.dtype, device=v.device)
        P[self.d, self.d] = v
        return P

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, n+1, d+1), rows; returns −Z_L[query, label] (B,)."""
        n = tokens.shape[1] - 1
        is_key = torch.arange(n + 1, device=tokens.device) < n  # context tokens are the keys
        Z = tokens
        for layer in range(self.Q.shape[0]):
            update = torch.zeros_like(Z)
            for h, act in enumerate(self.heads):
                Qf = self._embed(self.Q[layer, h])
                Kf = self._embed(self.K[layer, h])
                P = self._value(self.v[layer, h])
                keys = Z @ Qf.T  # rows Q x_j
                queries = Z @ Kf.T  # rows K x_m
                S = torch.einsum("bmc,bjc->bmj", queries, keys)  # (B, n+1, n+1)
                if act == "softmax":
                    A = torch.softmax(S.masked_fill(~is_key, float("-inf")), dim=-1)
                else:
                    if act == "linear":
                        hS = S
                    elif act == "relu":
                        hS = torch.relu(S)
                    else:
                        hS = torch.exp(S)
                    A = hS * is_key / n
                values = Z @ P.T  # rows P z_j
                update = update + torch.einsum("bmj,bjc->bmc", A, values)
            Z = Z + update
        return -Z[:, -1, -1]
