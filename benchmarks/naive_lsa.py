"""A deliberately naive LSA trainer step, the baseline the fast path is measured against.

Written like most public ICL codebases: one token matrix per prompt, the (n+1)×n attention-score
matrix formed explicitly in every layer, and one model/optimizer per seed in a Python loop.
"""

from __future__ import annotations

import torch


class NaiveLSA(torch.nn.Module):
    def __init__(self, d: int, layers: int, init_std: float, generator: torch.Generator) -> None:
        super().__init__()
        D = d + 1
        self.P = torch.nn.Parameter(torch.randn(layers, D, D, generator=generator) * init_std)
        self.Q = torch.nn.Parameter(torch.randn(layers, D, D, generator=generator) * init_std)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, n+1, d+1), rows; returns −Z_L[query, label] (B,)."""
        n = tokens.shape[1] - 1
        Z = tokens
        for layer in range(self.P.shape[0]):
            ctx = Z[:, :n]
            scores = Z @ self.Q[layer].T @ ctx.transpose(1, 2)  # (B, n+1, n)
            Z = Z + scores @ ctx @ self.P[layer].T / n
        return -Z[:, -1, -1]


def naive_train_step(models, optimizers, tokens, targets) -> None:
    """One step for every seed, looping over seeds in Python."""
    for model, opt, tok, y in zip(models, optimizers, tokens, targets):
        loss = (model(tok) - y).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
