"""Naive reference implementations used only by tests (loops, O(n²) attention, numpy)."""

from __future__ import annotations

import numpy as np


def lsa_naive(tokens: np.ndarray, P: np.ndarray, Q: np.ndarray, sign: float) -> float:
    """One prompt, papers' column layout: Z ← Z + (1/n) Σ_h P_h Z M (Zᵀ Q_h Z), explicit scores.

    tokens: (n+1, d+1) rows; P, Q: (L, H, d+1, d+1). Returns sign · Z_L[label, query].
    """
    Z = tokens.T.copy()  # (d+1, n+1): one column per token
    D, N = Z.shape
    n = N - 1
    M = np.eye(N)
    M[n, n] = 0.0
    for layer in range(P.shape[0]):
        update = np.zeros_like(Z)
        for h in range(P.shape[1]):
            scores = Z.T @ Q[layer, h] @ Z  # (n+1, n+1) attention scores
            update += P[layer, h] @ Z @ M @ scores
        Z = Z + update / n
    return sign * Z[D - 1, n]
