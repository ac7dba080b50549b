"""One LSA layer on Markov-chain prompts: the convex reparametrization of Ding et al. (2025),
and its optimum (exact for binary chains, Monte Carlo otherwise).

Conventions (shared by every function here):

- **Prompts** as in :mod:`iclab.tasks.markov_chain`: ``x`` (…, n, d) the first d states of the
  n context chains, ``y`` (…, n) their last states, ``x_query`` (…, d); every leading shape is a
  batch shape (iclab's tasks give (E, B)). Everything is computed in float64 on the inputs'
  device.
- **Tokens and Gram matrix.** Token ``z_i = [x_i; y_i] ∈ R^D``, ``D = d + 1``;
  ``G = (1/n) Σ_i z_i z_iᵀ`` over the n context chains only (the query never enters G).
  ``g ∈ R^m``, ``m = D(D+1)/2``, holds the unique entries ``G_ik`` (i ≤ k) in row-major
  upper-triangle order: (0,0), (0,1), …, (0,d), (1,1), (1,2), …, (d,d) — the order of
  ``torch.triu_indices(D, D)``.
- **Model.** One LSA layer, *positive* readout (Ding et al.), predicts ``ŷ = bᵀ G A x_q`` where
  ``b = P[d, :]`` is the last row of the value matrix and ``A = Q[:, :d]`` the first d columns of
  the key-query matrix (papers' column layout; in iclab's row layout of
  :mod:`iclab.models.lsa` the query row moves by ``z_q Qᵀ G Pᵀ`` and its label entry is exactly
  ``bᵀ G A x_q`` — the same P and Q, no transposes; the rest of P and the last column of Q do
  not matter for one layer).
- **Reparametrization** ``X = φ(b, A) ∈ R^{d·m}``, *j-major*: block j (entries ``j·m … j·m+m−1``)
  belongs to column ``a_j = A[:, j]`` and holds, in g's order, ``X^{(j)}_{ii} = b_i A_ij`` and
  ``X^{(j)}_{ik} = b_i A_kj + b_k A_ij`` (i < k). The features are ``x_q ⊗ g`` in the same order
  (block j = ``x_q,j · g``), so ``ŷ = ⟨x_q ⊗ g, X⟩``.
- **Column matrices.** Block j encodes the symmetric ``S_j`` with ``S_ii = X_ii`` and
  ``S_ik = X_ik / 2``; ``φ`` maps ``(b, a_j)`` to ``S_j = sym(b a_jᵀ) = (b a_jᵀ + a_j bᵀ)/2``.
- **Loss** ``f̃(X) = E[(ŷ − y_q)²]`` (no ½) ``= E[y_q²] − 2hᵀX + XᵀHX`` with
  ``H = E[(x_q x_qᵀ) ⊗ (g gᵀ)]``, ``h = E[y_q (x_q ⊗ g)]``; at ``X* = H⁻¹h``,
  ``f̃(X*) = E[y_q²] − hᵀX*`` and, f̃ being quadratic, ``f̃(X) = f̃(X*) + (X − X*)ᵀH(X − X*)``
  exactly. ``f̃(X*)`` lower-bounds the loss of every one-layer LSA.
- **Binary chains** (the closed forms): per prompt ``p01, p10 ~ U(0, 1)`` i.i.d., one kernel for
  all chains of the prompt, ``P(s_1 = 1) = p``.

The realizability of the optimum by LSA weights is :mod:`iclab.theory.markov_chain.realizability`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import product

import numpy as np
import torch

__all__ = [
    "MonteCarloOptimum",
    "OneLayerOptimum",
    "column_matrices",
    "gram_features",
    "one_layer_features",
    "one_layer_optimum_d1",
    "one_layer_optimum_exact",
    "optimum_monte_carlo",
    "phi",
]

F64 = torch.float64


def _f64(t, device=None) -> torch.Tensor:
    if isinstance(t, torch.Tensor):
        return t.to(dtype=F64, device=device if device is not None else t.device)
    return torch.as_tensor(t, dtype=F64, device=device)


def _num_unique(d: int) -> int:
    """m = (d+1)(d+2)/2, the number of unique entries of the (d+1)×(d+1) Gram matrix."""
    return (d + 1) * (d + 2) // 2


def _dim_from_X(X: torch.Tensor, d: int) -> int:
    if d < 1:
        raise ValueError(f"d: must be >= 1, got {d}")
    m = _num_unique(d)
    if X.shape[-1] != d * m:
        raise ValueError(f"X: expected last dim d·m = {d * m} for d = {d}, got {X.shape[-1]}")
    return m


# ------------------------------------------------------------------------------------ features
def gram_features(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The unique entries g of ``G = (1/n) Σ_i z_i z_iᵀ``, ``z_i = [x_i; y_i]``: (…, m) float64.

    ``x`` (…, n, d) context inputs, ``y`` (…, n) context labels (the query is *not* included).
    Order: row-major upper triangle, ``G_00, G_01, …, G_0d, G_11, …, G_dd`` (module docstring).
    """
    if x.dim() < 2 or y.shape != x.shape[:-1]:
        raise ValueError(
            f"x, y: expected shapes (…, n, d) and (…, n), got {tuple(x.shape)}, {tuple(y.shape)}"
        )
    z = torch.cat([x.to(F64), y.to(F64).unsqueeze(-1)], dim=-1)
    D, n = z.shape[-1], z.shape[-2]
    G = z.transpose(-1, -2) @ z / n
    i, k = torch.triu_indices(D, D, device=z.device)
    return G[..., i, k]


def one_layer_features(x: torch.Tensor, y: torch.Tensor, x_query: torch.Tensor) -> torch.Tensor:
    """Features ``x_q ⊗ g`` (…, d·m) float64, j-major: block j is ``x_q,j · g``.

    With them a one-layer LSA (positive readout) predicts ``ŷ = ⟨x_q ⊗ g, φ(b, A)⟩``.
    """
    g = gram_features(x, y)
    if x_query.shape != x.shape[:-2] + x.shape[-1:]:
        raise ValueError(
            f"x_query: expected shape {tuple(x.shape[:-2] + x.shape[-1:])}, "
            f"got {tuple(x_query.shape)}"
        )
    return (x_query.to(F64).unsqueeze(-1) * g.unsqueeze(-2)).flatten(-2)


# ------------------------------------------------------------------------ reparametrization
def phi(b: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """``X = φ(b, A)`` (…, d·m) float64 for ``b`` (…, d+1) and ``A`` (…, d+1, d).

    Block j (j-major): ``X^{(j)}_{ii} = b_i A_ij``, ``X^{(j)}_{ik} = b_i A_kj + b_k A_ij`` (i < k),
    in g's row-major upper-triangle order, so that ``bᵀ G A x_q = ⟨x_q ⊗ g, X⟩``. ``b`` is the
    last row of P, ``A`` the first d columns of Q (positive readout).
    """
    b, A = _f64(b), _f64(A)
    D = b.shape[-1]
    if A.shape[-2] != D:
        raise ValueError(f"A: expected shape (…, {D}, d), got {tuple(A.shape)}")
    M = b[..., :, None, None] * A[..., None, :, :]  # (…, i, k, j) = b_i A_kj
    T = M + M.transpose(-2, -3)  # b_i A_kj + b_k A_ij
    i, k = torch.triu_indices(D, D, device=b.device)
    X = T[..., i, k, :] * torch.where(i == k, 0.5, 1.0).to(T)[:, None]  # (…, m, d); 2b_iA_ij/2
    return X.transpose(-1, -2).flatten(-2)


def column_matrices(X: torch.Tensor, d: int) -> torch.Tensor:
    """The symmetric matrices ``S_j`` encoded by the blocks of X: (…, d, d+1, d+1) float64,
    ``S_ii = X^{(j)}_ii``, ``S_ik = S_ki = X^{(j)}_ik / 2`` (so ``φ(b, A)`` gives
    ``S_j = sym(b a_jᵀ)``)."""
    X = _f64(X)
    m = _dim_from_X(X, d)
    D = d + 1
    blocks = X.unflatten(-1, (d, m))
    i, k = torch.triu_indices(D, D, device=X.device)
    S = torch.zeros(*blocks.shape[:-1], D, D, dtype=F64, device=X.device)
    S[..., i, k] = blocks
    S[..., k, i] = blocks
    off = i != k
    S[..., i[off], k[off]] /= 2
    S[..., k[off], i[off]] /= 2
    return S


def _design(v: torch.Tensor) -> torch.Tensor:
    """``M(v)`` (…, m, D) with ``φ`` block j ``= M(b) a_j = M(a_j) b`` (φ is symmetric in b, a_j)."""
    D = v.shape[-1]
    i, k = torch.triu_indices(D, D, device=v.device)
    m = i.numel()
    rows = torch.arange(m, device=v.device)
    M = torch.zeros(*v.shape[:-1], m, D, dtype=F64, device=v.device)
    M[..., rows, k] = v[..., i]
    off = i != k
    M[..., rows[off], i[off]] += v[..., k[off]]
    return M


# ------------------------------------------------------------------------ exact optima
@dataclass(frozen=True)
class OneLayerOptimum:
    """Exact population quantities (float64). ``H`` (dm, dm), ``h`` (dm,), ``X_star = H⁻¹h``,
    ``y2_mean = E[y_q²]``, ``loss_star = f̃(X*) = E[y_q²] − hᵀX*`` (mean squared error, no ½).
    ``gram_moment`` is ``E[g gᵀ]`` (only where ``H = E[x_q x_qᵀ] ⊗ E[g gᵀ]``, e.g. d = 1)."""

    H: torch.Tensor
    h: torch.Tensor
    X_star: torch.Tensor
    y2_mean: float
    loss_star: float
    gram_moment: torch.Tensor | None = None


def _check_p_n(p: float, n: int) -> None:
    if not 0.0 < p < 1.0:
        raise ValueError(f"p: must be in (0, 1), got {p}")
    if n < 1:
        raise ValueError(f"n: must be >= 1, got {n}")


def one_layer_optimum_d1(p: float, n: int, device=None) -> OneLayerOptimum:
    """Closed-form optimum for d = 1 (length-2 binary chains, ``P(s_1 = 1) = p``, n chains).

    ``g = (G_xx, G_xy, G_yy) = (mean x, mean xy, mean y)`` (binary states: x² = x).
    ``h = [p²/2, p²/3, p²/12 + p/4]`` (paper). ``H = p·E[g gᵀ]`` because ``x_q² = x_q`` is
    independent of the context with mean p, and (moments derived from ``E[1 − p10] = 1/2``,
    ``E[(1 − p10)²] = 1/3`` and i.i.d. chains given the kernel):

        E[G_xx²]      = p² + p(1−p)/n            E[G_xx G_xy] = (p² + p(1−p)/n)/2
        E[G_xx G_yy]  = p/2                      E[G_xy²]     = p²/3 + p(3−2p)/(6n)
        E[G_xy G_yy]  = p(np + 3n − p + 3)/(12n)
        E[G_yy²]      = (np² − np + 2n − p² + p + 1)/(6n)

    ``E[y_q²] = E[y_q] = P(s_2 = 1) = p·E[1 − p10] + (1 − p)·E[p01] = 1/2`` for any p.
    """
    _check_p_n(p, n)
    gxx_xx = p * p + p * (1 - p) / n
    gxx_xy = gxx_xx / 2
    gxx_yy = p / 2
    gxy_xy = p * p / 3 + p * (3 - 2 * p) / (6 * n)
    gxy_yy = p * (n * p + 3 * n - p + 3) / (12 * n)
    gyy_yy = (n * p * p - n * p + 2 * n - p * p + p + 1) / (6 * n)
    Egg = torch.tensor(
        [[gxx_xx, gxx_xy, gxx_yy], [gxx_xy, gxy_xy, gxy_yy], [gxx_yy, gxy_yy, gyy_yy]],
        dtype=F64,
        device=device,
    )
    h = torch.tensor([p * p / 2, p * p / 3, p * p / 12 + p / 4], dtype=F64, device=device)
    H = p * Egg
    X = torch.linalg.solve(H, h)
    y2 = 0.5
    return OneLayerOptimum(H, h, X, y2, y2 - float(h @ X), gram_moment=Egg)


def one_layer_optimum_exact(
    p: float, n: int, d: int, nodes: int | None = None, device=None
) -> OneLayerOptimum:
    """Exact ``H``, ``h``, ``X*``, ``f̃(X*)`` for binary chains of any (small) d, by enumeration
    and Gauss–Legendre quadrature.

    Given the kernel K = (p01, p10), the n context chains and the query chain are i.i.d. with
    law ``π(s | K) = P(s_1) Π_t K[s_t, s_{t+1}]`` over the ``2^{d+1}`` sequences s. With the
    per-chain vector ``ψ(s) = triu(s sᵀ)`` (so ``g = mean_i ψ(s_i)``):
    ``E[g|K] = E_π ψ``, ``E[g gᵀ|K] = E_π[ψψᵀ]/n + (1 − 1/n) E_π ψ E_π ψᵀ``, the query is
    independent of the context given K, and

        H = ∫ E[x_q x_qᵀ|K] ⊗ E[g gᵀ|K] dK,   h = ∫ E[y_q x_q|K] ⊗ E[g|K] dK,
        E[y_q²] = ∫ E[y_q|K] dK.

    The integrands are polynomials of degree ≤ 3d in each of p01, p10, so ``nodes ≥ (3d+1)/2``
    Gauss–Legendre nodes per axis are exact (default ``2d + 2``). Cost grows like ``4^d``.
    """
    _check_p_n(p, n)
    if d < 1:
        raise ValueError(f"d: must be >= 1, got {d}")
    D, m = d + 1, _num_unique(d)
    nodes = 2 * d + 2 if nodes is None else nodes
    if 2 * nodes - 1 < 3 * d:
        raise ValueError(f"nodes: need >= {(3 * d + 1) / 2} for exactness, got {nodes}")
    t, w = np.polynomial.legendre.leggauss(nodes)
    u = torch.tensor((t + 1) / 2, dtype=F64, device=device)  # nodes on (0, 1)
    wu = torch.tensor(w / 2, dtype=F64, device=device)
    p01, p10 = (a.reshape(-1) for a in torch.meshgrid(u, u, indexing="ij"))
    weight = (wu[:, None] * wu[None, :]).reshape(-1)  # (K,)
    seqs = torch.tensor(list(product((0.0, 1.0), repeat=D)), dtype=F64, device=device)  # (S, D)
    # π(s | K): (K, S)
    s = seqs.long()
    start = torch.tensor([1 - p, p], dtype=F64, device=device)
    prob = start[s[:, 0]][None, :].expand(p01.numel(), -1)
    for step in range(d):
        a, c = s[:, step], s[:, step + 1]
        to1 = torch.where(a[None, :] == 0, p01[:, None], 1 - p10[:, None])  # P(next = 1)
        prob = prob * torch.where(c[None, :] == 1, to1, 1 - to1)
    i, k = torch.triu_indices(D, D, device=seqs.device)
    psi = seqs[:, i] * seqs[:, k]  # (S, m)
    xq, yq = seqs[:, :d], seqs[:, d]
    Eg = prob @ psi  # (K, m)
    Epp = torch.einsum("ks,sa,sb->kab", prob, psi, psi)
    Egg = Epp / n + (1 - 1 / n) * Eg[:, :, None] * Eg[:, None, :]
    Exx = torch.einsum("ks,si,sj->kij", prob, xq, xq)  # (K, d, d)
    Eyx = prob @ (yq[:, None] * xq)  # (K, d)
    H = torch.einsum("k,kij,kab->iajb", weight, Exx, Egg).reshape(d * m, d * m)
    h = torch.einsum("k,ki,ka->ia", weight, Eyx, Eg).reshape(d * m)
    y2 = float(weight @ (prob @ yq))
    X = torch.linalg.solve(H, h)
    return OneLayerOptimum(H, h, X, y2, y2 - float(h @ X))


# ------------------------------------------------------------------------ Monte Carlo optimum
@dataclass(frozen=True)
class MonteCarloOptimum:
    """Monte Carlo least-squares optimum of the reparametrized one-layer loss (float64).

    ``H``, ``h``: sample means of ``f fᵀ`` and ``y_q f`` (f = x_q ⊗ g) over ``num_prompts``
    pooled prompts; ``X_star = H⁻¹h`` (``solver`` ``"cholesky"``, or ``"pinv"`` — minimum-norm
    least squares — where H is numerically singular); ``X_star_cov`` the sandwich covariance
    ``H⁻¹ E[f fᵀ r²] H⁻¹ / N`` (r = y_q − fᵀX*, recomputed on the same prompts) and
    ``X_star_se`` its diagonal's square root. ``loss_star`` estimates ``f̃(X*)`` as the
    out-of-sample mean of ``(fᵀX* − y_q)²`` over ``fresh_prompts`` *independent* prompts
    (unbiased for ``f̃`` of the *fitted* X̂, which exceeds ``f̃(X*)`` of the true X*), and
    ``loss_star_se`` its standard error; ``loss_in_sample = E[y²] − hᵀX̂`` on the fitting
    prompts (optimistic).

    Bias. f̃ is quadratic, so ``f̃(X̂) = f̃(X*) + (X̂ − X*)ᵀH(X̂ − X*)`` exactly, and to first
    order in 1/N the excess has mean ``tr(H·Cov X̂) = tr(H⁻¹ E[f fᵀ r²])/N`` (≈ dm·f̃/N for
    homoscedastic residuals); the in-sample loss falls short of f̃(X*) by the same amount.
    ``excess`` is that trace from the sandwich covariance and ``loss_star_corrected =
    loss_star − excess`` estimates ``f̃(X*)`` itself, with bias O(1/N²)."""

    H: torch.Tensor
    h: torch.Tensor
    X_star: torch.Tensor
    X_star_cov: torch.Tensor
    X_star_se: torch.Tensor
    y2_mean: float
    loss_star: float
    loss_star_se: float
    loss_in_sample: float
    num_prompts: int
    fresh_prompts: int
    solver: str
    excess: float = 0.0
    loss_star_corrected: float = math.nan


def _chunks(task, num_prompts: int, batch: int, purpose: str):
    """Yield ``(features (N, dm), y_q (N,))`` over ``ceil(num_prompts/batch)`` chunks of the
    streams ``(seed, purpose, index)``; members of an ensemble task are pooled."""
    for index, start in enumerate(range(0, num_prompts, batch)):
        b = task.sample(min(batch, num_prompts - start), purpose, index)
        f = one_layer_features(b.x, b.y, b.x_query)
        yield f.reshape(-1, f.shape[-1]), b.y_query.to(F64).reshape(-1)


def optimum_monte_carlo(
    task,
    num_prompts: int,
    batch: int = 50_000,
    purpose: str = "one_layer_fit",
    fresh_purpose: str = "one_layer_eval",
    fresh_prompts: int | None = None,
) -> MonteCarloOptimum:
    """Monte Carlo ``X* = H⁻¹h`` for any task with ``sample(B, purpose, index)`` (x, y, x_query,
    y_query), e.g. :class:`~iclab.tasks.markov_chain.MarkovChainTask`.

    ``num_prompts`` prompts *per ensemble member* are drawn in chunks of ``batch`` from the
    streams ``(seed, purpose, chunk index)`` (all members pooled, so N = E·num_prompts), and
    ``H``, ``h`` are accumulated chunk by chunk. A second pass over the same (regenerated)
    prompts gives the sandwich covariance of X*; a third pass over ``fresh_prompts`` (default
    ``num_prompts``) prompts of the independent streams ``(seed, fresh_purpose, ·)`` gives the
    out-of-sample loss of X* with its standard error. See :class:`MonteCarloOptimum`.
    """
    if num_prompts < 2 or batch < 1:
        raise ValueError(f"num_prompts >= 2 and batch >= 1 needed, got {num_prompts}, {batch}")
    if purpose == fresh_purpose:
        raise ValueError("fresh_purpose: must differ from purpose (independent prompts)")
    fresh_prompts = num_prompts if fresh_prompts is None else fresh_prompts
    H = h = None
    y2 = 0.0
    N = 0
    for f, yq in _chunks(task, num_prompts, batch, purpose):
        if H is None:
            H = torch.zeros(f.shape[-1], f.shape[-1], dtype=F64, device=f.device)
            h = torch.zeros(f.shape[-1], dtype=F64, device=f.device)
        H += f.T @ f
        h += f.T @ yq
        y2 += float((yq * yq).sum())
        N += yq.numel()
    H, h, y2 = H / N, h / N, y2 / N
    L, info = torch.linalg.cholesky_ex(H)
    cond = torch.linalg.cond(H)
    if int(info) == 0 and bool(cond < 1e12):
        Hinv = torch.cholesky_inverse(L)
        solver = "cholesky"
        X = torch.cholesky_solve(h[:, None], L)[:, 0]
    else:
        Hinv = torch.linalg.pinv(H, hermitian=True)
        solver = "pinv"
        X = Hinv @ h
    meat = torch.zeros_like(H)
    for f, yq in _chunks(task, num_prompts, batch, purpose):
        r = yq - f @ X
        fr = f * r[:, None]
        meat += fr.T @ fr
    cov = Hinv @ (meat / N) @ Hinv / N
    s1 = s2 = 0.0
    M = 0
    for f, yq in _chunks(task, fresh_prompts, batch, fresh_purpose):
        e = (f @ X - yq) ** 2
        s1 += float(e.sum())
        s2 += float((e * e).sum())
        M += e.numel()
    mean = s1 / M
    var = max(s2 / M - mean * mean, 0.0) * M / max(M - 1, 1)
    excess = float((H * cov).sum())  # tr(H·Cov X̂): the expected excess of f̃(X̂) over f̃(X*)
    return MonteCarloOptimum(
        H=H,
        h=h,
        X_star=X,
        X_star_cov=cov,
        X_star_se=cov.diagonal().clamp_min(0).sqrt(),
        y2_mean=y2,
        loss_star=mean,
        loss_star_se=math.sqrt(var / M),
        loss_in_sample=y2 - float(h @ X),
        num_prompts=N,
        fresh_prompts=M,
        solver=solver,
        excess=excess,
        loss_star_corrected=mean - excess,
    )
