"""Input laws and query shifts for evaluating in-context learners away from ``x ~ N(0, I_d)``.

Input laws (each fixed per seed, drawn on the CPU in float64 so every device sees the same one):

- **skewed**: ``x ~ N(0, Σ)``, ``Σ = U diag(λ) Uᵀ`` with ``λ_i = d · (1/i) / H_d`` (``H_d = Σ_{i≤d}
  1/i``), so the eigenvalues are proportional to ``1/i`` and ``tr Σ = d = E‖x‖²`` as for the
  identity; ``U`` is a Haar-random rotation (:func:`haar_orthogonal`) per seed.
- **low_rank**: ``x = V z``, ``z ~ N(0, I_r)``, ``V`` (d × r) an orthonormal basis of a uniformly
  random r-dimensional subspace (the first r columns of a Haar rotation). ``Cov x = V Vᵀ``, a
  projection, so ``E‖x‖² = r``: the inputs are not rescaled to the full-rank norm.

Query and context shifts (one draw per prompt):

- :func:`orthogonal_query`: the fresh query with its component in the span of the context inputs
  removed, then rescaled to its original norm, so its norm has the law of a standard query's.
  Needs the context span to be a proper subspace of the inputs' support (n below its dimension).
- :func:`apply_quadrants`: every context input gets one sign pattern ``s ∈ {±1}^d`` per prompt,
  ``x_i ← s ⊙ |x_i|`` (each coordinate's absolute value kept); the query gets ``s ⊙ |x_q|`` or,
  for the *opposite* shift, ``−s ⊙ |x_q|``, the orthant diametrically opposite the context's.
"""

from __future__ import annotations

import torch

__all__ = [
    "apply_quadrants",
    "haar_orthogonal",
    "orthogonal_query",
    "skewed_spectrum",
]


def haar_orthogonal(d: int, generator: torch.Generator) -> torch.Tensor:
    """A d × d orthogonal matrix from the Haar measure (float64, on the generator's device).

    QR of a standard Gaussian matrix, with each column's sign fixed by ``R``'s diagonal: without
    the fix, QR's sign convention would bias the distribution.
    """
    g = torch.randn(d, d, generator=generator, dtype=torch.float64, device=generator.device)
    q, r = torch.linalg.qr(g)
    return q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, 1.0)


def skewed_spectrum(d: int) -> torch.Tensor:
    """Eigenvalues ``λ_i = d · (1/i) / H_d``, i = 1 … d (float64): ∝ 1/i and summing to d."""
    inv = 1.0 / torch.arange(1, d + 1, dtype=torch.float64)
    return d * inv / inv.sum()


def orthogonal_query(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``q`` (…, d) minus its projection on the span of the rows of ``x`` (…, n, d), rescaled to
    ``‖q‖``. The rows of ``x`` must be linearly independent with n < d (reduced QR of ``xᵀ``);
    the projection is removed twice, which brings the residual inner products to round-off."""
    basis, _ = torch.linalg.qr(x.transpose(-1, -2))  # (…, d, n) orthonormal columns
    p = q
    for _ in range(2):
        p = p - (basis @ (basis.transpose(-1, -2) @ p.unsqueeze(-1))).squeeze(-1)
    return p * (q.norm(dim=-1, keepdim=True) / p.norm(dim=-1, keepdim=True))


def apply_quadrants(
    x: torch.Tensor, q: torch.Tensor, signs: torch.Tensor, *, opposite: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Context inputs x (…, n, d) moved to the orthant ``signs`` (…, d) of ±1, the query q
    (…, d) to the same orthant, or to the opposite one when ``opposite``."""
    qs = -signs if opposite else signs
    return signs.unsqueeze(-2) * x.abs(), qs * q.abs()
