"""Second moments that make a squared loss of bilinear predictions independent of the data size.

**Setting.** Predictions ``ŷ_n = P (F_n κ) ∈ C^a`` of targets ``y_n ∈ C^a``, n = 1..N, with data
features ``F_n ∈ C^{p×k}`` that do not depend on the weights, and weights ``P ∈ C^{a×p}``,
``κ ∈ C^k``. Expanding the square,

    Σ_n ½‖ŷ_n − y_n‖² = ½ Σ_{j,j'} G_{jj'} κᴴ M^{(j,j')} κ − Re Σ_{c,j,l} P_{cj} κ_l H_{cjl} + ½ S,

with ``G = PᴴP`` (p×p), the fourth-order data moment
``M_{(j,l),(j',l')} = Σ_n conj(F_n[j,l]) F_n[j',l']`` ((p·k)² numbers, Hermitian), the cross
moment ``H_{cjl} = Σ_n conj(y_n[c]) F_n[j,l]`` and ``S = Σ_n ‖y_n‖²``. The identity is exact
(algebra, no approximation); once ``(M, H, S)`` are summed, a loss with its gradients (autograd
through this closed form) costs O((p·k)²) per member whatever N is.

**Cost and precision.** Summing M costs about ``(p·k)²/2`` complex multiply-adds per data point
(the Hermitian half, as one GEMM per block row j ≤ j'; about half that again for features
``C[j, q] e[r]`` with C Hermitian, :class:`GramTokenMoments`), so it pays only when the same data
set is differentiated many times (full-batch training). The three terms cancel where the fit is good
(``ŷ ≈ y``), so the moments are summed and contracted in complex128 whatever the working dtype:
the loss then agrees with the direct sum to float64 round-off relative to ``S``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "GramTokenMoments",
    "PredictionMoments",
    "accumulate_moments",
    "empty_moments",
    "mirror_moments",
    "moment_loss",
]

_ACC = torch.complex128


@dataclass(frozen=True)
class PredictionMoments:
    """``M`` (E, p, k, p, k), ``H`` (E, a, p, k) complex128 and ``S`` (E,) float64, summed over
    ``count`` data points per member (see the module docstring). Mutable in place while summing."""

    M: torch.Tensor
    H: torch.Tensor
    S: torch.Tensor


def empty_moments(E: int, a: int, p: int, k: int, device: torch.device) -> PredictionMoments:
    """Zero moments for ``E`` members, targets in C^a and features in C^{p×k}."""
    return PredictionMoments(
        M=torch.zeros(E, p, k, p, k, dtype=_ACC, device=device),
        H=torch.zeros(E, a, p, k, dtype=_ACC, device=device),
        S=torch.zeros(E, dtype=torch.float64, device=device),
    )


@torch.no_grad()
def accumulate_moments(mom: PredictionMoments, F: torch.Tensor, y: torch.Tensor) -> None:
    """Add the data points ``F`` (E, n, p, k) with targets ``y`` (E, n, a) to ``mom`` in place.

    Only the blocks ``j ≤ j'`` of M are summed (M is Hermitian): call :func:`mirror_moments`
    once all points are in.
    """
    E, n, p, k = F.shape
    F = F.to(_ACC)
    y = y.to(_ACC)
    for j in range(p):
        rest = F[:, :, j:].reshape(E, n, (p - j) * k)
        mom.M[:, j, :, j:, :] += (F[:, :, j].mH @ rest).view(E, k, p - j, k)
    mom.H.add_((y.mH @ F.reshape(E, n, p * k)).view(E, -1, p, k))
    mom.S.add_(y.real.square().sum((1, 2)) + y.imag.square().sum((1, 2)))


@torch.no_grad()
def mirror_moments(mom: PredictionMoments) -> None:
    """Fill the blocks ``j > j'`` of M from the summed ones (M is Hermitian); in place."""
    p = mom.M.shape[1]
    for j in range(p):
        for jj in range(j):
            mom.M[:, j, :, jj, :] = mom.M[:, jj, :, j, :].mH


def moment_loss(P: torch.Tensor, kappa: torch.Tensor, mom: PredictionMoments) -> torch.Tensor:
    """``Σ_n ½‖P F_n κ − y_n‖²`` per member (E,) float64 from the moments, differentiable in
    ``P`` (E, a, p) and ``kappa`` (E, k)."""
    P = P.to(_ACC)
    kappa = kappa.to(_ACC)
    Mk = torch.einsum("ejlim,em->ejli", mom.M, kappa)  # Σ_l' M[(j,l),(j',l')] κ_l'
    V = torch.einsum("ejli,el->eji", Mk, kappa.conj())  # κᴴ M^{(j,j')} κ
    G = P.mH @ P
    quad = (G * V).sum((-1, -2)).real
    lin = torch.einsum("ecj,el,ecjl->e", P, kappa, mom.H).real
    return 0.5 * quad - lin + 0.5 * mom.S


class GramTokenMoments:
    """The moments of features ``F[j, (q, r)] = C[j, q] e[r]`` with C Hermitian (D×D) and
    e ∈ C^D, at about half the cost of :func:`accumulate_moments`.

    With ``c_u = C[u]`` (u a pair of indices) and ``C̄[j, q] = C[q, j]``,
    ``M[(j,q,r),(j',q',r')] = Σ c_{(q,j)} c_{(j',q')} ē_r e_{r'} =: N[{(q,j), (j',q')}, r, r']``
    depends on the unordered pair of C entries only, and ``N[{u, v}, r, r'] =
    conj N[{uᵀ, vᵀ}, r', r]``: only u ≤ v and r ≤ r' are summed (D⁴/2 · D²/2 products per point
    instead of D⁶/2), and :meth:`finish` unfolds them into M.
    """

    def __init__(self, E: int, a: int, D: int, device: torch.device) -> None:
        self.D = D
        self.r, self.rr = torch.triu_indices(D, D, device=device)
        self.N = torch.zeros(E, D * D, D * D, self.r.numel(), dtype=_ACC, device=device)
        self.H = torch.zeros(E, a, D, D, D, dtype=_ACC, device=device)  # [c, j, q, r]
        self.S = torch.zeros(E, dtype=torch.float64, device=device)

    @torch.no_grad()
    def add(self, C: torch.Tensor, e: torch.Tensor, y: torch.Tensor) -> None:
        """Add points: C (E, n, D, D) Hermitian, e (E, n, D), targets y (E, n, a)."""
        E, n, D, _ = C.shape
        c = C.to(_ACC).reshape(E, n, D * D)
        e = e.to(_ACC)
        y = y.to(_ACC)
        b = e.conj()[..., self.r] * e[..., self.rr]  # ē_r e_r' for r ≤ r'
        for u in range(D * D):
            self.N[:, u, u:] += c[..., u:].mT @ (c[..., u : u + 1] * b)
        left = (y.conj().unsqueeze(-1) * e.unsqueeze(-2)).reshape(E, n, -1)  # ȳ_c e_r
        H = (left.mT @ c).view(E, y.shape[-1], D, D, D)  # [c, r, j, q]
        self.H += H.permute(0, 1, 3, 4, 2)
        self.S += y.real.square().sum((1, 2)) + y.imag.square().sum((1, 2))

    @torch.no_grad()
    def finish(self) -> PredictionMoments:
        """The summed moments in the layout of :class:`PredictionMoments` (p = D, k = D²)."""
        D, dev = self.D, self.N.device
        E = self.N.shape[0]
        pair = torch.zeros(D, D, dtype=torch.long, device=dev)  # (r ≤ r') -> column of N
        pair[self.r, self.rr] = torch.arange(self.r.numel(), device=dev)
        j, q, r, j2, q2, r2 = torch.meshgrid(*[torch.arange(D, device=dev)] * 6, indexing="ij")
        N = torch.where(  # N[u, v] for u > v from N[v, u]
            torch.ones(D * D, D * D, dtype=torch.bool, device=dev).triu()[None, :, :, None],
            self.N,
            self.N.transpose(1, 2),
        )
        direct = N[:, q * D + j, j2 * D + q2, pair[r, r2]]
        swapped = N[:, j * D + q, q2 * D + j2, pair[r2, r]].conj()
        M = torch.where((r <= r2).unsqueeze(0), direct, swapped)
        return PredictionMoments(
            M=M.reshape(E, D, D * D, D, D * D),
            H=self.H.reshape(E, -1, D, D * D),
            S=self.S.clone(),
        )
