"""Whether one LSA layer realizes the convex optimum of Ding et al. (2025) on Markov chains.

Conventions as in :mod:`iclab.theory.markov_chain.one_layer` (prompts, tokens, the
reparametrization ``X = φ(b, A)``, column matrices, the loss f̃).

Realizability. ``sym(b aᵀ)`` has at most one positive and at most one negative eigenvalue, and
every symmetric matrix with that inertia is some ``sym(b aᵀ)`` (``T = t₊uuᵀ − t₋vvᵀ`` is
``sym(b aᵀ)`` for ``b = √t₊ u + √t₋ v``, ``a = √t₊ u − √t₋ v``). For d = 1 (2×2 matrices) this is
``X2² ≥ 4 X1 X3``. For D ≥ 3 a generic ``S_j`` (no zero eigenvalue) has two eigenvalues of one
sign and is not realizable: :func:`non_realizability_certificate` turns that into certified lower
bounds on the residual and the loss gap. All columns also share ``b`` (a further constraint the
certificate ignores, so its bounds stay valid but may be loose).
:func:`global_gap_bounds` closes that gap for small d: a branch and bound over the direction of
b (for fixed b the best A is linear least squares) gives a certified bracket on the smallest
residual or loss gap over *all* (b, A).

Findings (tests in ``tests/test_markov_one_layer.py``): for d = 1 the convex optimum X* is
realizable only for n ≥ n₀(p) (n₀ = 6 at p = 0.5; X* at n = 1 has ``X2² − 4X1X3 = −0.639`` for
every p tried), so one LSA layer can fall short of ``f̃(X*)`` already at d = 1; at d = 2 (p = 0.5,
n = 10) X* is certified non-realizable (one column matrix is positive definite).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import product

import torch

from iclab.theory.markov_chain.one_layer import (
    F64,
    _design,
    _dim_from_X,
    _f64,
    column_matrices,
    phi,
)

__all__ = [
    "Certificate",
    "GlobalBounds",
    "Recovery",
    "global_gap_bounds",
    "non_realizability_certificate",
    "realizable_d1",
    "realize_d1",
    "recover_parameters",
]


# ------------------------------------------------------------------------ realizability
def _column_factors(S: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nearest ``sym(b aᵀ)`` to each symmetric ``S`` (…, D, D) in Frobenius norm.

    Keeps the top eigenvalue if ≥ 0 and the bottom one if ≤ 0 (Hoffman–Wielandt: optimal among
    matrices of inertia ≤ (1, 1)); returns ``(b, a, eigenvalues ascending)`` with
    ``sym(b aᵀ) = λ₊ u uᵀ + λ₋ v vᵀ``, ``‖b‖ = ‖a‖``.
    """
    lam, U = torch.linalg.eigh(S)
    top = lam[..., -1].clamp_min(0).sqrt()
    bot = (-lam[..., 0]).clamp_min(0).sqrt()
    u, v = U[..., :, -1], U[..., :, 0]
    b = top[..., None] * u + bot[..., None] * v
    a = top[..., None] * u - bot[..., None] * v
    return b, a, lam


def realizable_d1(X: torch.Tensor, tol: float = 0.0) -> torch.Tensor:
    """d = 1: whether ``X = (X1, X2, X3)`` (…, 3) equals some ``φ(b, a)``, i.e.
    ``X2² − 4 X1 X3 ≥ −tol`` (S = [[X1, X2/2], [X2/2, X3]] not definite). Bool tensor (…)."""
    X = _f64(X)
    _dim_from_X(X, 1)
    return X[..., 1] ** 2 - 4 * X[..., 0] * X[..., 2] >= -tol


def realize_d1(X: torch.Tensor, tol: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """d = 1: ``(b, A)`` with ``φ(b, A) = X`` exactly, ``b`` (…, 2), ``A`` (…, 2, 1), ``‖b‖ = ‖a‖``.

    From the eigen-decomposition ``S = λ₊ u uᵀ − λ₋ v vᵀ``: ``b = √λ₊ u + √λ₋ v``,
    ``a = √λ₊ u − √λ₋ v``. Raises ``ValueError`` unless :func:`realizable_d1` (with ``tol``).
    The real factorizations form the orbit ``(c b, a/c)`` and the swap ``b ↔ a``.
    """
    X = _f64(X)
    if not bool(realizable_d1(X, tol).all()):
        raise ValueError("realize_d1: X2² < 4 X1 X3 (S definite): not realizable by real (b, A)")
    b, a, _ = _column_factors(column_matrices(X, 1)[..., 0, :, :])
    return b, a.unsqueeze(-1)


@dataclass(frozen=True)
class Certificate:
    """Evidence that ``X`` is not ``φ(b, A)`` for any real (b, A), with certified lower bounds.

    ``eigenvalues`` (d, D): ascending eigenvalues of each column matrix ``S_j``.
    ``spectral_gap`` (d,): ``max(λ_2(S_j), −λ_{D−1}(S_j), 0)`` (second largest / second
    smallest); by Weyl ``‖S_j − sym(b a_jᵀ)‖_2 ≥`` it for every (b, a_j).
    ``column_distance`` (d,): the exact Frobenius distance from ``S_j`` to the set
    ``{sym(b aᵀ)}``: ``sqrt(Σ_{middle} λ² + min(λ_max, 0)² + max(λ_min, 0)²)`` (≥ spectral_gap).
    ``fires``: some column_distance exceeds ``tol·max(1, ‖S_j‖_2)``.
    ``residual_bound``: ``sqrt(Σ_j column_distance_j²)``, a lower bound on ``‖φ(b, A) − X‖``
    (Euclidean, X-coordinates) for all (b, A), because
    ``‖x_j − φ_j‖² = Σ Δ_ii² + 4 Σ_{i<k} Δ_ik² ≥ ‖ΔS_j‖_F²``.
    ``loss_gap_bound`` (given H, else None): a lower bound on ``(φ(b, A) − X)ᵀ H (φ(b, A) − X)``
    for all (b, A) (= ``f̃(φ) − f̃(X*)`` when ``X = X* = H⁻¹h``). With ``K = W H W``,
    ``W = diag(1 on diagonal entries, √2 on off-diagonal ones)`` (so ``Δx = W Δs`` and
    ``‖Δs_j‖ = ‖ΔS_j‖_F``), any ``μ ≥ 0`` with ``K ⪰ diag(μ_j I)`` gives
    ``Δxᵀ H Δx ≥ Σ_j μ_j ‖ΔS_j‖_F² ≥ Σ_j μ_j column_distance_j²`` (weak Lagrangian duality);
    the bound is the best over a set of feasible μ (uniform ``μ = λ_min(K)``, single columns via
    Schur complements, and a grid over the simplex for d ≤ 3), each one valid on its own.
    ``loss_gap_bound_uniform``: the plain ``λ_min(K)·Σ_j column_distance_j²``.
    The bounds ignore that all columns share b: they are valid, not necessarily tight."""

    eigenvalues: torch.Tensor
    spectral_gap: torch.Tensor
    column_distance: torch.Tensor
    fires: bool
    residual_bound: float
    loss_gap_bound: float | None
    loss_gap_bound_uniform: float | None


def _weighting(d: int, device) -> torch.Tensor:
    D = d + 1
    i, k = torch.triu_indices(D, D, device=device)
    w = torch.where(i == k, 1.0, math.sqrt(2.0)).to(F64)
    return w.repeat(d)


def _mu_bound(K: torch.Tensor, dist2: torch.Tensor, weights: torch.Tensor, m: int) -> float:
    """``t·Σ w_j dist2_j`` with ``t`` the largest value s.t. ``K ⪰ t·diag(w_j I_m)`` (w ≥ 0):
    on the support of w, ``t = λ_min(D_w^{-1/2} Schur(K) D_w^{-1/2})``."""
    d = dist2.numel()
    sup = [j for j in range(d) if weights[j] > 0]
    rest = [j for j in range(d) if weights[j] <= 0]

    def idx(js: list[int]) -> torch.Tensor:
        return torch.cat([torch.arange(j * m, (j + 1) * m) for j in js]).to(K.device)

    Ks = K[idx(sup)][:, idx(sup)]
    if rest:
        Kr = K[idx(rest)][:, idx(rest)]
        C = K[idx(sup)][:, idx(rest)]
        try:
            Ks = Ks - C @ torch.linalg.solve(Kr, C.T)
        except torch.linalg.LinAlgError:  # singular block: skip this μ (0 is always valid)
            return 0.0
    scale = torch.cat([weights[j].rsqrt().expand(m) for j in sup])
    t = float(torch.linalg.eigvalsh(scale[:, None] * Ks * scale[None, :])[0])
    t = max(t, 0.0)
    return t * float(sum(weights[j] * dist2[j] for j in sup))


def non_realizability_certificate(
    X: torch.Tensor, d: int, H: torch.Tensor | None = None, tol: float = 1e-9
) -> Certificate:
    """Certified lower bounds on how far ``X`` (d·m,) is from every ``φ(b, A)``.

    Column j of any ``φ(b, A)`` is ``sym(b a_jᵀ)``, which has at most one positive and at most one
    negative eigenvalue; a target ``S_j`` with two eigenvalues of one sign is therefore out of
    reach, and how far is quantified exactly per column (see :class:`Certificate` for every field
    and the proofs). ``H`` (dm, dm), symmetric positive semi-definite, turns the residual bound
    into a loss-gap bound. The bounds hold for the given X exactly; for a Monte Carlo X* use the
    exact optimum or account for its standard error (``column_distance`` is 1-Lipschitz in
    ``‖X‖``).
    """
    X = _f64(X)
    if X.dim() != 1:
        raise ValueError(f"X: expected a vector (d·m,), got shape {tuple(X.shape)}")
    m = _dim_from_X(X, d)
    S = column_matrices(X, d)
    lam = torch.linalg.eigvalsh(S)  # (d, D) ascending
    spectral = torch.stack([lam[:, -2], -lam[:, 1], torch.zeros_like(lam[:, 0])], dim=-1).amax(-1)
    middle = (lam[:, 1:-1] ** 2).sum(-1)
    dist2 = middle + lam[:, -1].clamp_max(0) ** 2 + lam[:, 0].clamp_min(0) ** 2
    dist = dist2.sqrt()
    scale = lam.abs().amax(-1).clamp_min(1.0)
    fires = bool((dist > tol * scale).any())
    residual_bound = float(dist2.sum().sqrt())
    gap = gap_uniform = None
    if H is not None:
        H = _f64(H, X.device)
        if H.shape != (d * m, d * m):
            raise ValueError(f"H: expected shape {(d * m, d * m)}, got {tuple(H.shape)}")
        W = _weighting(d, X.device)
        K = W[:, None] * (H + H.T) / 2 * W[None, :]
        gap_uniform = max(float(torch.linalg.eigvalsh(K)[0]), 0.0) * float(dist2.sum())
        candidates = [torch.ones(d, dtype=F64)]
        candidates += [torch.eye(d, dtype=F64)[j] for j in range(d)]
        candidates.append(dist2.cpu().clamp_min(0) + 1e-300)
        if d <= 3:
            res = 10
            for c in product(range(res + 1), repeat=d):
                if sum(c) == res:
                    candidates.append(torch.tensor(c, dtype=F64) / res)
        gap = max(
            (_mu_bound(K, dist2, w.to(K.device), m) for w in candidates if w.sum() > 0),
            default=0.0,
        )
        gap = max(gap, gap_uniform)
    return Certificate(
        eigenvalues=lam,
        spectral_gap=spectral,
        column_distance=dist,
        fires=fires,
        residual_bound=residual_bound,
        loss_gap_bound=gap,
        loss_gap_bound_uniform=gap_uniform,
    )


# ------------------------------------------------------------------------ parameter recovery
@dataclass(frozen=True)
class Recovery:
    """Best ``(b, A)`` found by :func:`recover_parameters`: ``b`` (d+1,), ``A`` (d+1, d),
    ``residual = ‖φ(b, A) − X‖`` (Euclidean), ``loss_gap = (φ − X)ᵀH(φ − X)`` (None without H;
    equal to ``f̃(φ(b, A)) − f̃(X*)`` when X = X*), ``objective`` the minimized quantity
    (residual² or loss_gap), and ``restart_objectives`` (R,) the final objective of every
    restart (spectral starts first)."""

    b: torch.Tensor
    A: torch.Tensor
    residual: float
    loss_gap: float | None
    objective: float
    restart_objectives: torch.Tensor


def _lstsq(M: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Minimum-norm least squares ``argmin ‖M x − r‖`` batched, any device (SVD pseudo-inverse)."""
    return (torch.linalg.pinv(M) @ r.unsqueeze(-1)).squeeze(-1)


def recover_parameters(
    X: torch.Tensor,
    d: int,
    H: torch.Tensor | None = None,
    restarts: int = 16,
    iterations: int = 500,
    seed: int = 0,
    minimize: str = "residual",
    tol: float = 1e-15,
) -> Recovery:
    """Find ``(b, A)`` with ``φ(b, A) ≈ X`` by alternating least squares with restarts.

    φ is bilinear: block j is ``M(b) a_j = M(a_j) b`` (:func:`_design`), so fixing b the best A
    is a linear least-squares problem, and fixing A so is b. ``minimize="residual"`` minimizes
    ``‖φ(b, A) − X‖²``; ``"loss"`` minimizes ``(φ − X)ᵀH(φ − X)`` (needs H; with X = X* that is the
    loss gap ``f̃(φ) − f̃(X*)``, so the result is a one-layer LSA's best loss found). Starts:
    the spectral factorizations of every column (``b`` ∈ {top/bottom-eigenvalue factors of
    S_j}, exact for a realizable X whenever some S_j has rank 2, and always for d = 1) plus
    ``restarts`` N(0, I) draws of b (generator seeded by ``seed``); ``iterations`` ALS sweeps,
    stopping early when no restart improves by more than ``tol`` (relative). Each sweep
    rescales ``(b, A) → (c b, A/c)`` so ``‖b‖ = ‖A‖_F`` (φ is invariant). The problem is NP-hard
    in general (Ding et al.): the result is a local optimum, exact only when certified.
    """
    X = _f64(X)
    if X.dim() != 1:
        raise ValueError(f"X: expected a vector (d·m,), got shape {tuple(X.shape)}")
    m = _dim_from_X(X, d)
    D = d + 1
    if minimize not in ("residual", "loss"):
        raise ValueError(f"minimize: 'residual' or 'loss', got {minimize!r}")
    if minimize == "loss" and H is None:
        raise ValueError("minimize='loss' needs H")
    dev = X.device
    if H is not None:
        H = _f64(H, dev)
        H = (H + H.T) / 2
    if minimize == "loss":
        Lh, info = torch.linalg.cholesky_ex(H)
        if int(info) != 0:
            lam, U = torch.linalg.eigh(H)
            R = lam.clamp_min(0).sqrt()[:, None] * U.T  # RᵀR = H
        else:
            R = Lh.T
    else:
        R = torch.eye(d * m, dtype=F64, device=dev)
    fb, fa, _ = _column_factors(column_matrices(X, d))  # (d, D)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    rand = torch.randn(restarts, D, generator=gen, dtype=F64).to(dev)
    b = torch.cat([fb, fa, rand], dim=0)
    b = b + (b.norm(dim=-1, keepdim=True) == 0) * torch.ones(D, dtype=F64, device=dev)
    Rx = R @ X

    def solve_A(b):
        Mb = _design(b)  # (R, m, D)
        big = torch.zeros(b.shape[0], d * m, d * D, dtype=F64, device=dev)
        for j in range(d):
            big[:, j * m : (j + 1) * m, j * D : (j + 1) * D] = Mb
        alpha = _lstsq(R @ big, Rx.expand(b.shape[0], -1))
        return alpha.unflatten(-1, (d, D)).transpose(-1, -2)  # (R, D, d)

    def solve_b(A):
        K = _design(A.transpose(-1, -2)).flatten(-3, -2)  # (R, d·m, D)
        return _lstsq(R @ K, Rx.expand(A.shape[0], -1))

    def objective(b, A):
        r = (phi(b, A) - X) @ R.T
        return (r * r).sum(-1)

    A = solve_A(b)
    obj = objective(b, A)
    for _ in range(iterations):
        b = solve_b(A)
        A = solve_A(b)
        c = (A.flatten(-2).norm(dim=-1) / b.norm(dim=-1).clamp_min(1e-300)).sqrt()
        ok = c > 0
        b = torch.where(ok[:, None], b * c[:, None], b)
        A = torch.where(ok[:, None, None], A / c.clamp_min(1e-300)[:, None, None], A)
        new = objective(b, A)
        done = bool(((obj - new) <= tol * obj.clamp_min(1e-300)).all()) or bool(
            new.min() <= 1e-28 * max(float((Rx * Rx).sum()), 1e-300)
        )
        obj = new
        if done:
            break
    best = int(obj.argmin())
    bb, AA = b[best], A[best]
    diff = phi(bb, AA) - X
    return Recovery(
        b=bb,
        A=AA,
        residual=float(diff.norm()),
        loss_gap=None if H is None else float(diff @ H @ diff),
        objective=float(obj[best]),
        restart_objectives=obj,
    )


# ------------------------------------------------------------------------ global bounds
@dataclass(frozen=True)
class GlobalBounds:
    """Certified bracket ``lower ≤ min_{b, A} obj(b, A) ≤ upper`` from :func:`global_gap_bounds`.

    ``obj`` is ``‖φ(b, A) − X‖²`` (``metric="residual"``) or ``(φ − X)ᵀH(φ − X)``
    (``metric="loss"``; the loss gap when X = X*). ``b``, ``A``: parameters attaining ``upper``.
    ``cells``: number of leaf cells evaluated; ``converged``: every leaf was resolved to the
    requested relative tolerance (otherwise ``lower`` is still valid, just looser)."""

    lower: float
    upper: float
    b: torch.Tensor
    A: torch.Tensor
    cells: int
    converged: bool


def _profile(b: torch.Tensor, R: torch.Tensor, RX: torch.Tensor, d: int):
    """For each b (C, D): the best A, ``min_A ‖R(φ(b, A) − X)‖²`` and ``σ_min(R N(b))``."""
    C, D = b.shape
    m = RX.shape[-1] // d
    Mb = _design(b)  # (C, m, D)
    N = torch.zeros(C, d * m, d * D, dtype=F64, device=b.device)
    for j in range(d):
        N[:, j * m : (j + 1) * m, j * D : (j + 1) * D] = Mb
    B = R @ N
    U, sv, Vh = torch.linalg.svd(B, full_matrices=False)
    coef = (U.transpose(-1, -2) @ RX.unsqueeze(-1)).squeeze(-1)  # (C, dD)
    alpha = (Vh.transpose(-1, -2) @ (coef / sv.clamp_min(1e-300)).unsqueeze(-1)).squeeze(-1)
    obj = ((RX * RX).sum() - (coef * coef).sum(-1)).clamp_min(0)
    A = alpha.unflatten(-1, (d, D)).transpose(-1, -2)
    return A, obj, sv[:, -1]


def global_gap_bounds(
    X: torch.Tensor,
    d: int,
    H: torch.Tensor | None = None,
    metric: str = "residual",
    rel_tol: float = 0.05,
    initial: int = 8,
    max_cells: int = 2_000_000,
    batch: int = 20_000,
) -> GlobalBounds:
    """Certified global bracket on ``min_{b, A} obj`` by branch and bound over b (small d).

    For fixed b the best A is a linear least-squares problem (variable projection), and the
    profile ``p(b) = min_A obj(b, A)`` is invariant under ``b → c·b`` (c ≠ 0). Every direction
    has a representative on a face ``b_c = 1`` of the cube [−1, 1]^{d+1}, so the search is over
    ``d+1`` faces of dimension d, split into cubes of half-side s (ball radius ``r = s√d``).
    With ``RᵀR`` the metric (identity, or H), ``ρ = ‖R‖_2``, ``σ₀ = σ_min(R N(b₀))`` at a cell's
    centre b₀ and ``‖N(δ)α‖ ≤ √2‖δ‖‖α‖`` (``‖sym(δaᵀ)‖`` in X-coordinates), any b in the cell has
    ``σ_min(R N(b)) ≥ σ' = σ₀ − √2ρr``, an optimal α there has ``‖α‖ ≤ ‖RX‖/σ'`` (R N(b) α is a
    projection of RX), hence

        sqrt(p(b)) ≥ sqrt(p(b₀)) − ε·α_max,   ε = √2 ρ r   (0 when σ' ≤ 0),

    ``α_max = min(‖RX‖/σ', ‖α₀‖ + ε(‖α₀‖/σ' + sqrt(p(b₀))/σ'²))``: the second form is the
    least-squares perturbation bound ``α' − α₀ = (B'ᵀB')⁻¹(Eᵀr₀ − B'ᵀEα₀)`` for ``B' = B₀ + E``,
    ``‖E‖ ≤ ε``, with α₀ the centre's optimum and ``r₀ ⊥ range(B₀)`` its residual
    (``‖r₀‖² = p(b₀)``).

    Cells whose bound is below ``(1 − rel_tol)·upper`` are split (2^d children) until
    ``max_cells`` leaves were evaluated; ``upper`` is the best centre value (attained). The cost
    grows like ``(1/rel_tol)^d``: meant for d ≤ 3.
    """
    X = _f64(X)
    m = _dim_from_X(X, d)
    D = d + 1
    dev = X.device
    if metric == "loss":
        if H is None:
            raise ValueError("metric='loss' needs H")
        H = _f64(H, dev)
        lam, U = torch.linalg.eigh((H + H.T) / 2)
        R = lam.clamp_min(0).sqrt()[:, None] * U.T
    elif metric == "residual":
        R = torch.eye(d * m, dtype=F64, device=dev)
    else:
        raise ValueError(f"metric: 'residual' or 'loss', got {metric!r}")
    RX = R @ X
    nrx = float(RX.norm())
    rho = float(torch.linalg.matrix_norm(R, ord=2))
    # initial cells: per face c, a grid of `initial`^d cubes over [−1, 1]^d
    side = 2.0 / initial
    ticks = -1 + side * (torch.arange(initial, dtype=F64, device=dev) + 0.5)
    grid = torch.cartesian_prod(*([ticks] * d)).reshape(-1, d)
    centres, halves = [], []
    for c in range(D):
        b = torch.ones(grid.shape[0], D, dtype=F64, device=dev)
        b[:, [i for i in range(D) if i != c]] = grid
        centres.append(b)
        halves.append(torch.full((grid.shape[0],), side / 2, dtype=F64, device=dev))
    todo_b, todo_s = torch.cat(centres), torch.cat(halves)
    # the face coordinate of each cell is fixed (= 1); split only the free ones
    todo_face = torch.arange(D, device=dev).repeat_interleave(grid.shape[0])
    upper, best_b, best_A = math.inf, None, None
    leaves_lb: list[torch.Tensor] = []
    pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
    evaluated = 0
    converged = True
    while todo_b.numel() > 0:
        parts = []
        for start in range(0, todo_b.shape[0], batch):
            sl = slice(start, start + batch)
            A, obj, smin = _profile(todo_b[sl], R, RX, d)
            parts.append((A, obj, smin))
            k = int(obj.argmin())
            if float(obj[k]) < upper:
                upper, best_b, best_A = float(obj[k]), todo_b[sl][k].clone(), A[k].clone()
        a0 = torch.cat([p[0] for p in parts]).flatten(-2).norm(dim=-1)
        obj = torch.cat([p[1] for p in parts])
        smin = torch.cat([p[2] for p in parts])
        evaluated += obj.numel()
        eps = math.sqrt(2.0) * rho * todo_s * math.sqrt(d)  # ≥ ‖R N(b − b₀)‖ in the cell
        sp = (smin - eps).clamp_min(1e-300)
        # ‖α'‖ ≤ ‖RX‖/σ'  and  ‖α'‖ ≤ ‖α₀‖ + ε(‖α₀‖/σ' + sqrt(p(b₀))/σ'²)  (LS perturbation)
        amax = torch.minimum(nrx / sp, a0 + eps * (a0 / sp + obj.sqrt() / sp**2))
        root = obj.sqrt() - eps * amax
        lb = torch.where(smin > eps, root.clamp_min(0) ** 2, torch.zeros_like(obj))
        pending.append((todo_b, todo_s, todo_face, lb))
        # decide which of all pending cells to split
        all_b = torch.cat([p[0] for p in pending])
        all_s = torch.cat([p[1] for p in pending])
        all_f = torch.cat([p[2] for p in pending])
        all_lb = torch.cat([p[3] for p in pending])
        split = all_lb < (1 - rel_tol) * upper
        n_split = int(split.sum())
        if n_split == 0:
            leaves_lb.append(all_lb)
            pending = []
            break
        if evaluated + n_split * 2**d > max_cells:
            converged = False
            leaves_lb.append(all_lb)
            pending = []
            break
        pending = [(all_b[~split], all_s[~split], all_f[~split], all_lb[~split])]
        sb, ss, sf = all_b[split], all_s[split] / 2, all_f[split]
        offsets = torch.cartesian_prod(*([torch.tensor([-1.0, 1.0], dtype=F64)] * d))
        offsets = offsets.reshape(-1, d).to(dev)
        kids = []
        for o in offsets:
            kb = sb.clone()
            free = torch.ones(sb.shape[0], D, dtype=torch.bool, device=dev)
            free[torch.arange(sb.shape[0], device=dev), sf] = False
            delta = torch.zeros_like(kb)
            delta[free] = (o[None, :] * ss[:, None]).reshape(-1)
            kids.append(kb + delta)
        todo_b = torch.cat(kids)
        todo_s = ss.repeat(len(offsets))
        todo_face = sf.repeat(len(offsets))
    lower = float(torch.cat(leaves_lb).min()) if leaves_lb else 0.0
    return GlobalBounds(
        lower=min(lower, upper),
        upper=upper,
        b=best_b,
        A=best_A,
        cells=evaluated,
        converged=converged,
    )
