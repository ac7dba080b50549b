"""Best scalar step sizes in the critical-point classes of Ahn et al. Theorems 3–4.

Setting: ``x ~ N(0, Σ)``, ``w ~ N(0, Σ_w)`` with ``Σ_w = Σ⁻¹``, ``y = wᵀx + ε``,
``ε ~ N(0, σ²)``, ``n`` context pairs, loss ``E[(ŷ − y_q)²]`` (no 1/2). The model is the L-layer
LSA of :mod:`iclab.models.lsa` with the **negative readout** and the ``pgd`` (or ``sparse_pgd``)
parametrization, whose layer ℓ maps covariates ``x ← (I − B_ℓ S Aᵀ_ℓ) x`` and label slots
``v ← v − xᵀ A_ℓ (1/n) Xᵀ v`` (both with the covariates *before* the update;
``S = (1/n) XᵀX`` of the current covariates). The classes are

- sparse class (Theorem 3): ``A_ℓ = a_ℓ Σ⁻¹``, ``B_ℓ = 0`` — L steps of GD preconditioned by Σ⁻¹;
- PGD class (Theorem 4): ``A_ℓ = a_ℓ Σ⁻¹``, ``B_ℓ = b_ℓ I``.

Reduction (derived here, checked against the model by Monte Carlo in the tests). Whitening
``x̃ = Σ^{-1/2} x``, ``w̃ = Σ^{1/2} w`` turns every Σ into Σ = I with ``A = aI, B = bI``: the
whitened covariates move as ``x̃ ← (I − a b S̃) x̃``. Let ``λ`` be an eigenvalue of the whitened
sample covariance ``S̃ = (1/n) X̃ᵀX̃`` (X̃ an n×d standard Gaussian matrix) and ``c_ℓ = a_ℓ b_ℓ``:

    g_0 = 1,  g_{ℓ+1} = g_ℓ (1 − c_ℓ λ g_ℓ²)          (covariate shrink factor)
    π_0 = 1,  π_{ℓ+1} = π_ℓ (1 − a_ℓ λ g_ℓ²)          (residual factor)
    F = Σ_ℓ a_ℓ g_ℓ² π_ℓ,   so that 1 − λ F = π_L,

the prediction is ``ŷ = x̃_qᵀ F(S̃) (S̃ w̃ + X̃ᵀε/n)`` and, conditionally on ``X``,

    E[(ŷ − y_q)² | X] = Σ_k [ π_L(λ_k)² + (σ²/n) λ_k F(λ_k)² ] + σ².

The population loss is the expectation of this over the Wishart eigenvalues; it is estimated by
Monte Carlo over ``num_samples`` eigenvalue draws (:func:`wishart_eigenvalues`), with a
standard error. In the sparse class (``b = 0``) ``g ≡ 1`` and ``π_L(λ) = Π_ℓ (1 − a_ℓ λ)``, so the
order of the ``a_ℓ`` does not matter; in the PGD class ``b_L`` (last layer) never reaches the
prediction and is reported as 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from iclab.seeding import make_generator
from iclab.theory.linear_regression.wishart_moments import (
    MAX_EXACT_DEGREE,
    exact_pgd_stationary_point,
    pgd_class_loss_exact,
)

__all__ = [
    "PGDScalars",
    "best_pgd_scalars",
    "pgd_class_loss",
    "pgd_class_matrices",
    "pgd_class_sample_losses",
    "wishart_eigenvalues",
    "wishart_sample",
]

_CHUNK = 50_000  # eigenvalue draws per chunk (bounds memory: chunk · n · d doubles)


def wishart_eigenvalues(d: int, n: int, num_samples: int, seed: int = 0) -> torch.Tensor:
    """Eigenvalues of ``S = (1/n) XᵀX`` for ``num_samples`` independent n×d standard Gaussian X.

    Returns float64 ``(num_samples, d)``, each row ascending; when ``n < d`` the ``d − n``
    smallest are exactly 0. The draw is a deterministic function of ``(d, n, num_samples, seed)``
    (generator ``make_generator("cpu", seed, "wishart", d, n)``, consumed in fixed chunks).
    """
    if d < 1 or n < 1 or num_samples < 1:
        raise ValueError(f"d, n, num_samples: must be >= 1, got {d}, {n}, {num_samples}")
    gen = make_generator("cpu", seed, "wishart", d, n)
    out = torch.empty(num_samples, d, dtype=torch.float64)
    k = min(d, n)
    for start in range(0, num_samples, _CHUNK):
        m = min(_CHUNK, num_samples - start)
        X = torch.randn(m, n, d, generator=gen, dtype=torch.float64)
        # the nonzero spectrum of XᵀX equals that of XXᵀ: use the smaller Gram matrix
        gram = X.transpose(1, 2) @ X if d <= n else X @ X.transpose(1, 2)
        lam = torch.linalg.eigvalsh(gram / n).clamp_min(0.0)[:, -k:]
        out[start : start + m, : d - k] = 0.0
        out[start : start + m, d - k :] = lam
    return out


TAIL_SCALES = (1.0, 1.15, 1.3, 1.5, 1.75)


def wishart_sample(
    d: int, n: int, num_samples: int, seed: int = 0, scales: tuple[float, ...] = TAIL_SCALES
) -> tuple[torch.Tensor, torch.Tensor]:
    """Importance-sampled eigenvalues of ``S = (1/n) XᵀX`` with their likelihood-ratio weights.

    Why: the class's loss per draw is a polynomial of high degree in the eigenvalues (degree 26
    in λ at L = 3, 80 at L = 4), so its expectation is carried by prompts whose largest
    eigenvalue is far out in the Wishart tail: rarer than one in a million at the best step
    sizes of a plain sample. A plain sample never sees them; minimizing its loss gives step sizes
    that are optimal for typical prompts and whose true population loss is far larger (L = 3,
    n = 20: the minimizer over 400000 plain draws scores 6.7e-4 on them; its exact loss is
    0.054, against the exact optimum's 9.61e-4). Weighted draws come much closer, but their
    standard error still understates the error (2M draws put the minimizer of weighted draws at
    8.72e-4 ± 1.4e-5; its exact loss is 1.03e-3): where the exact loss exists (L ≤ 3,
    :func:`~iclab.theory.linear_regression.wishart_moments.pgd_class_loss_exact`) prefer it.

    Defensive mixture: each draw picks a scale ``s`` uniformly from ``scales`` (1.0 included),
    draws ``X = s·Z`` with ``Z`` an n×d standard Gaussian matrix, and gets the weight
    ``p(X)/q(X) = 1 / mean_k(s_k^{−nd} exp(½‖X‖²(1 − 1/s_k²)))``, where ``q`` is the mixture.
    ``mean(weights · f)`` is then an unbiased estimate of ``E[f(λ)]`` for every ``f``, the
    weights are at most ``len(scales)``, and the tail beyond the plain sample's reach is drawn
    often. Returns float64 ``(eigenvalues (num_samples, d) ascending, weights (num_samples,))``,
    a deterministic function of the arguments (generator ``(seed, "wishart_tilted", d, n)``).
    """
    if d < 1 or n < 1 or num_samples < 1:
        raise ValueError(f"d, n, num_samples: must be >= 1, got {d}, {n}, {num_samples}")
    s = torch.as_tensor(scales, dtype=torch.float64)
    if s.dim() != 1 or not bool((s >= 1.0).all()) or not bool((s == 1.0).any()):
        raise ValueError(f"scales: expected values >= 1 that include 1.0, got {list(scales)}")
    gen = make_generator("cpu", seed, "wishart_tilted", d, n)
    lam = torch.empty(num_samples, d, dtype=torch.float64)
    weights = torch.empty(num_samples, dtype=torch.float64)
    k = min(d, n)
    for start in range(0, num_samples, _CHUNK):
        m = min(_CHUNK, num_samples - start)
        pick = torch.randint(s.shape[0], (m,), generator=gen)
        X = torch.randn(m, n, d, generator=gen, dtype=torch.float64) * s[pick][:, None, None]
        sq = X.pow(2).sum((1, 2))
        log_ratio = -n * d * s.log() + 0.5 * sq[:, None] * (1.0 - s.pow(-2))  # log q_k/p
        weights[start : start + m] = torch.exp(
            math.log(s.shape[0]) - torch.logsumexp(log_ratio, dim=1)
        )
        gram = X.transpose(1, 2) @ X if d <= n else X @ X.transpose(1, 2)
        lam[start : start + m, : d - k] = 0.0
        lam[start : start + m, d - k :] = torch.linalg.eigvalsh(gram / n).clamp_min(0.0)[:, -k:]
    return lam, weights


def _phi(
    a: torch.Tensor, c: torch.Tensor | None, lam: torch.Tensor, n: int, noise_var: float
) -> torch.Tensor:
    """Per-eigenvalue loss ``π_L(λ)² + (σ²/n) λ F(λ)²``, elementwise in ``lam`` (any shape).

    ``a``: (L,); ``c``: (L−1,) products ``a_ℓ b_ℓ`` of the first L−1 layers, or None (sparse).
    """
    L = a.shape[0]
    pi = torch.ones_like(lam)
    F = torch.zeros_like(lam) if noise_var > 0 else None
    g2 = None  # g_ℓ²; None stands for 1
    for layer in range(L):
        al = a[layer]
        lam_g2 = lam if g2 is None else lam * g2
        if F is not None:
            F = F + al * (pi if g2 is None else g2 * pi)
        pi = pi * (1.0 - al * lam_g2)
        if c is not None and layer < L - 1:
            shrink2 = (1.0 - c[layer] * lam_g2) ** 2
            g2 = shrink2 if g2 is None else g2 * shrink2
    out = pi**2
    if F is not None:
        out = out + (noise_var / n) * lam * F**2
    return out


def _as_params(
    a: torch.Tensor, b: torch.Tensor | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``a`` and the products ``c = (a·b)[:-1]`` as float64 on ``device`` (None when b is None)."""
    a = torch.as_tensor(a, dtype=torch.float64, device=device)
    if a.dim() != 1 or a.shape[0] < 1:
        raise ValueError(f"a: expected shape (L,), got {tuple(a.shape)}")
    if b is None:
        return a, None
    b = torch.as_tensor(b, dtype=torch.float64, device=device)
    if b.shape != a.shape:
        raise ValueError(f"b: expected shape {tuple(a.shape)}, got {tuple(b.shape)}")
    return a, (a * b)[:-1]


def pgd_class_sample_losses(
    a: torch.Tensor,
    b: torch.Tensor | None,
    eigenvalues: torch.Tensor,
    n: int,
    noise_std: float = 0.0,
) -> torch.Tensor:
    """Conditional loss ``E[(ŷ − y_q)² | X]`` for each eigenvalue draw: shape (num_samples,).

    ``a``, ``b``: (L,) scalars of ``A_ℓ = a_ℓ Σ⁻¹``, ``B_ℓ = b_ℓ I`` (``b=None``: sparse class);
    ``eigenvalues``: (num_samples, d) of the whitened sample covariance. Includes ``σ²``.
    Differentiable in ``a`` and ``b``.
    """
    lam = torch.as_tensor(eigenvalues, dtype=torch.float64)
    a, c = _as_params(a, b, lam.device)
    if lam.dim() != 2:
        raise ValueError(f"eigenvalues: expected shape (num_samples, d), got {tuple(lam.shape)}")
    noise_var = float(noise_std) ** 2
    return _phi(a, c, lam, n, noise_var).sum(-1) + noise_var


def pgd_class_loss(
    a: torch.Tensor,
    b: torch.Tensor | None,
    eigenvalues: torch.Tensor,
    n: int,
    noise_std: float = 0.0,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Monte-Carlo population loss of the PGD class and its standard error.

    ``loss = mean_s Σ_k [π_L(λ_sk)² + (σ²/n) λ_sk F(λ_sk)²] + σ²`` over the rows ``s`` of
    ``eigenvalues`` (num_samples, d), see the module docstring; ``standard_error`` is the sample
    standard deviation of the per-draw terms over ``√num_samples``. ``a``, ``b``: (L,) tensors
    (``b=None`` for the sparse class). Returns 0-dim float64 tensors, ``loss`` differentiable in
    ``a`` and ``b``. Valid for any Σ (the loss is whitening invariant), negative readout.
    ``weights``: (num_samples,) importance weights of the draws (:func:`wishart_sample`); None
    for a plain sample. Only an importance-sampled estimate is trustworthy for L ≥ 2 (see
    :func:`wishart_sample`).
    """
    v = pgd_class_sample_losses(a, b, eigenvalues, n, noise_std)
    if weights is not None:
        v = torch.as_tensor(weights, dtype=torch.float64, device=v.device) * v
    m = v.shape[0]
    if m > 1:
        se = v.detach().std(unbiased=True) / math.sqrt(m)
    else:
        se = torch.full((), math.nan, dtype=torch.float64, device=v.device)
    return v.mean(), se.to(torch.float64)


@dataclass
class PGDScalars:
    """Best scalars of the sparse or PGD class (``A_ℓ = a_ℓ Σ⁻¹``, ``B_ℓ = b_ℓ I``), σ-aware.

    ``loss``/``standard_error``: Monte-Carlo population loss at ``(a, b)`` over the fixed eigen
    sample (mean squared error, includes ``σ²``) and its standard error. ``(a, b)`` minimize that
    sample loss (common random numbers); ``standard_error`` is 0 when ``loss`` is exact (the PGD
    class with L ≤ 3 by default, see :func:`best_pgd_scalars`). A Monte-Carlo loss is optimistic
    for L ≥ 2 by more than its SE, grossly so on a plain sample (see :func:`wishart_sample`), and
    its scalars carry a sampling error of their own (L = 3, n = 20, 200000 weighted draws: a_ℓ
    varies by about ±3% between seeds). ``grad_norm``: gradient norm of the sample loss w.r.t. the free
    parameters ``(a, c = a·b without the last layer)`` at the returned point;
    ``hessian_min_eigenvalue``: smallest Hessian eigenvalue there (> 0: strict local minimum);
    ``converged``: both checks passed. Sparse class: ``b`` is all zeros and ``a`` ascending.
    ``b[-1] = 0`` always (the last covariate update never reaches the prediction).
    """

    a: torch.Tensor
    b: torch.Tensor
    loss: float
    standard_error: float
    grad_norm: float
    hessian_min_eigenvalue: float
    converged: bool
    sparse: bool
    d: int
    n: int
    noise_std: float
    num_samples: int
    seed: int
    accuracy: str = field(default="")

    @property
    def layers(self) -> int:
        return int(self.a.shape[0])

    @property
    def relative_standard_error(self) -> float:
        return self.standard_error / self.loss if self.loss > 0 else float("nan")


# ---------------------------------------------------------------------------- optimization


def _gauss2_compress(
    lam_sorted: torch.Tensor, bin_size: int, tail: int, mass: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes and weights reproducing the empirical measure of ``lam_sorted`` (total mass 1).

    ``mass``: each value's share of the measure (sums to 1; None: 1/N each, a plain sample).
    The ``tail`` smallest and largest values are kept as they are; the rest is cut into bins of
    ``bin_size`` consecutive values, each replaced by its 2-point Gauss rule for the bin's
    (mass-weighted) measure (exact for polynomials of degree ≤ 3 on the bin). Used only to
    locate the optimum quickly; every reported number is computed on the full sample.
    """
    N = lam_sorted.shape[0]
    if mass is None:
        mass = torch.full_like(lam_sorted, 1.0 / N)
    if 2 * (tail + bin_size) >= N:
        return lam_sorted, mass
    mid = lam_sorted[tail : N - tail]
    nb = mid.shape[0] // bin_size
    body = mid[: nb * bin_size].reshape(nb, bin_size)
    rest = mid[nb * bin_size :]
    m = mass[tail : N - tail][: nb * bin_size].reshape(nb, bin_size)
    total = m.sum(1)
    share = m / total[:, None].clamp_min(torch.finfo(m.dtype).tiny)
    mu = (share * body).sum(1)
    u = body - mu[:, None]
    m2 = (share * u**2).sum(1)
    s = m2.sqrt()
    tiny = s <= 1e-14 * (1.0 + mu.abs())
    s_safe = torch.where(tiny, torch.ones_like(s), s)
    gamma = torch.where(tiny, torch.zeros_like(s), (share * u**3).sum(1) / s_safe**3)
    root = (gamma**2 + 4.0).sqrt()
    tp, tm = (gamma + root) / 2.0, (gamma - root) / 2.0
    wp, wm = -tm / (tp - tm), tp / (tp - tm)
    nodes = torch.cat([mu + s * tp, mu + s * tm])
    weights = torch.cat([wp * total, wm * total])
    edge = torch.cat([lam_sorted[:tail], rest, lam_sorted[N - tail :]])
    edge_mass = torch.cat([mass[:tail], mass[tail : N - tail][nb * bin_size :], mass[N - tail :]])
    return torch.cat([nodes, edge]), torch.cat([weights, edge_mass])


class _Objective:
    """Sample loss as a function of θ = (a (L), c (L−1)) or θ = a (sparse)."""

    def __init__(
        self, lam: torch.Tensor, weights: torch.Tensor, L: int, sparse: bool, n: int, var: float
    ) -> None:
        self.lam, self.weights = lam, weights
        self.L, self.sparse, self.n, self.var = L, sparse, n, var

    def split(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.sparse:
            return theta, None
        return theta[: self.L], theta[self.L :]

    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        a, c = self.split(theta)
        return (self.weights * _phi(a, c, self.lam, self.n, self.var)).sum() + self.var

    def residuals(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Residuals ``r`` with ``loss = ‖r‖² + σ²`` and their Jacobian ``J = ∂r/∂θ``.

        Forward-mode by hand: every state carries its value (row 0) and its derivatives with
        respect to the p entries of θ (rows 1..p), shape (1+p, nodes).
        """
        L, p = self.L, theta.numel()
        theta = theta.detach()
        lam = self.lam
        N = lam.shape[0]
        kw = dict(dtype=torch.float64, device=lam.device)

        def const(v: float) -> torch.Tensor:
            out = torch.zeros(1 + p, N, **kw)
            out[0] = v
            return out

        def param(idx: int) -> torch.Tensor:
            e = torch.zeros(1 + p, 1, **kw)
            e[0, 0] = float(theta[idx])
            e[1 + idx, 0] = 1.0
            return e

        def mul(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            out = u[:1] * v  # value·(value, tangents of v)
            out[1:] += u[1:] * v[:1]
            return out

        g2, pi = const(1.0), const(1.0)
        F = const(0.0) if self.var > 0 else None
        for layer in range(L):
            ea = param(layer)
            lam_g2 = g2 * lam
            if F is not None:
                F = F + mul(ea, mul(g2, pi))
            pi = mul(pi, const(1.0) - mul(ea, lam_g2))
            if not self.sparse and layer < L - 1:
                ec = param(L + layer)
                shrink = const(1.0) - mul(ec, lam_g2)
                g2 = mul(g2, mul(shrink, shrink))
        sw = self.weights.sqrt()
        parts = [pi * sw]
        if F is not None:
            parts.append(F * (sw * (self.var / self.n * lam).sqrt()))
        rJ = torch.cat(parts, dim=1)
        return rJ[0], rJ[1:].T


def _value_grad_hess(
    obj: _Objective, theta: torch.Tensor, hessian: bool = True
) -> tuple[float, torch.Tensor, torch.Tensor | None]:
    """Value, gradient and (optionally) the exact Hessian by double backward (θ is tiny)."""
    t = theta.detach().clone().requires_grad_(True)
    val = obj(t)
    (g,) = torch.autograd.grad(val, t, create_graph=hessian)
    if not hessian:
        return float(val.detach()), g.detach(), None
    rows = [
        torch.autograd.grad(g[i], t, retain_graph=i < t.numel() - 1)[0] for i in range(t.numel())
    ]
    H = torch.stack(rows)
    return float(val.detach()), g.detach(), ((H + H.T) / 2).detach()


def _levenberg_marquardt(
    residuals: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    theta0: torch.Tensor,
    max_iter: int = 300,
    rel_tol: float = 1e-14,
) -> torch.Tensor:
    """Levenberg–Marquardt on ``‖r(θ)‖²`` with ``residuals(θ) = (r, J)`` (tiny θ): e.g. the
    least-squares form ``loss = ‖r(θ)‖² + σ²`` (``_Objective.residuals``), or ``r = ∇f`` with
    ``J`` the Hessian, which converges to any stationary point of f, saddles included.

    Stops after ``max_iter`` accepted steps, when no damping lowers ``‖r‖²``, or when a step
    lowers it by less than ``rel_tol`` relative."""
    theta = theta0.detach().clone()
    r, J = residuals(theta)
    val = float(r @ r)
    mu = 1e-3
    for _ in range(max_iter):
        if not math.isfinite(val):
            break
        JtJ = J.T @ J
        g = J.T @ r
        diag = JtJ.diagonal().clamp_min(1e-300)
        accepted = False
        for _ in range(40):
            chol, info = torch.linalg.cholesky_ex(JtJ + mu * torch.diag(diag))
            if int(info) == 0:
                cand = theta - torch.cholesky_solve(g[:, None], chol)[:, 0]
                cr, cJ = residuals(cand)
                cval = float(cr @ cr)
                if math.isfinite(cval) and cval < val:
                    accepted = True
                    break
            mu *= 10.0
            if mu > 1e20:
                break
        if not accepted:
            break
        rel = (val - cval) / max(val, 1e-300)
        theta, r, J, val = cand, cr, cJ, cval
        mu = max(mu / 10.0, 1e-15)
        if rel < rel_tol:
            break
    return theta


def _initial_points(
    L: int,
    sparse: bool,
    lam_sorted: torch.Tensor,
    restarts: int,
    seed: int,
    mass: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """Deterministic starting points (the first ``restarts`` of the list below).

    With ``a₁ = E[λ]/E[λ²]`` (about the best single step): PGD class: geometric step sizes
    ``a_ℓ = f·a₁·q^ℓ`` for ``f ∈ {0.4, 1}``, ``q ∈ {4, 2}`` with covariate shrinkage
    ``c_ℓ = κ a_ℓ``, ``κ ∈ {1, 0.5}`` (together these reached the best minimum found by 30
    random restarts in every configuration tried); sparse class: inverse Chebyshev nodes of the
    bulk spectrum, constant and geometric steps. Then seeded log-normal perturbations of those.
    ``mass``: the values' shares of an importance-weighted sample (None: equal).
    """
    N = lam_sorted.shape[0]
    if mass is None:
        lo = float(lam_sorted[int(0.02 * (N - 1))].clamp_min(1e-3))
        hi = float(lam_sorted[int(0.98 * (N - 1))])
        a1 = float(lam_sorted.mean()) / float((lam_sorted**2).mean())
    else:
        cdf = mass.cumsum(0) / mass.sum()
        at = torch.searchsorted(cdf, torch.tensor([0.02, 0.98], dtype=cdf.dtype, device=cdf.device))
        lo = float(lam_sorted[int(at[0].clamp_max(N - 1))].clamp_min(1e-3))
        hi = float(lam_sorted[int(at[1].clamp_max(N - 1))])
        a1 = float((mass * lam_sorted).sum()) / float((mass * lam_sorted**2).sum())
    k = torch.arange(L, dtype=torch.float64, device=lam_sorted.device)
    points: list[torch.Tensor] = []
    if sparse:
        cheb = (hi + lo) / 2 + (hi - lo) / 2 * torch.cos((2 * k + 1) * math.pi / (2 * L))
        points += [1.0 / cheb, torch.full_like(k, a1)]
        points += [0.4 * a1 * 2.0**k, a1 * 2.0**k]
    else:
        for f in (0.4, 1.0):
            for q in (4.0, 2.0):
                for kappa in (1.0, 0.5):
                    a = f * a1 * q**k
                    points.append(torch.cat([a, kappa * a[:-1]]))
    gen = make_generator("cpu", seed, "pgd_scalars_restart", L, int(sparse))
    base_count = len(points)
    i = 0
    while len(points) < restarts:
        base = points[i % base_count]
        # drawn on the CPU generator, then moved: the same starts on every device
        noise = torch.randn(base.shape, generator=gen, dtype=torch.float64).to(base.device)
        points.append(base * torch.exp(0.5 * noise))
        i += 1
    return points[: max(1, restarts)]


def _search(obj: _Objective, starts: list[torch.Tensor]) -> torch.Tensor:
    """Best local minimum of ``obj`` from ``starts``: 40 LM steps each, then the 3 best to
    convergence."""
    found = []
    for theta0 in starts:
        theta = _levenberg_marquardt(obj.residuals, theta0, max_iter=40, rel_tol=1e-8)
        val = float(obj(theta))
        if math.isfinite(val):
            found.append((val, theta))
    if not found:
        raise RuntimeError("best_pgd_scalars: every start diverged")
    found.sort(key=lambda item: item[0])
    best_theta, best_val = found[0][1], found[0][0]
    for _, theta in found[:3]:
        theta = _levenberg_marquardt(obj.residuals, theta, max_iter=500, rel_tol=1e-15)
        val = float(obj(theta))
        if math.isfinite(val) and val <= best_val:
            best_theta, best_val = theta, val
    return best_theta


def _full_eval(
    obj: _Objective, lam: torch.Tensor, theta: torch.Tensor, weights: torch.Tensor | None = None
) -> tuple[float, float, torch.Tensor]:
    """Sample loss, its standard error and its gradient in θ on the full eigenvalue sample
    (``weights``: the draws' importance weights, None for a plain sample)."""
    t = theta.detach().clone().requires_grad_(True)
    a, c = obj.split(t)
    v = _phi(a, c, lam, obj.n, obj.var).sum(-1)
    if weights is not None:
        v = weights * v
    val = v.mean()
    (g,) = torch.autograd.grad(val, t)
    se = float(v.detach().std()) / math.sqrt(v.shape[0]) if v.shape[0] > 1 else float("nan")
    return float(val.detach()) + obj.var, se, g


def eigen_sample(
    d: int,
    n: int,
    num_samples: int,
    seed: int,
    eigenvalues: torch.Tensor | None,
    weights: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The eigenvalue sample a class computation runs on: the given ``eigenvalues`` with their
    ``weights`` (None: plain), or by default :func:`wishart_sample` (importance-sampled)."""
    if eigenvalues is None:
        if weights is not None:
            raise ValueError("weights: given without eigenvalues")
        return wishart_sample(d, n, num_samples, seed)
    lam = torch.as_tensor(eigenvalues, dtype=torch.float64)
    if lam.dim() != 2 or lam.shape[1] != d:
        raise ValueError(f"eigenvalues: expected shape (num_samples, {d}), got {tuple(lam.shape)}")
    if weights is None:
        return lam, None
    w = torch.as_tensor(weights, dtype=torch.float64, device=lam.device)
    if w.shape != lam.shape[:1] or not bool((w >= 0).all() and w.isfinite().all()):
        raise ValueError(
            f"weights: expected {lam.shape[0]} finite values >= 0, got shape {tuple(w.shape)}"
        )
    return lam, w


def pooled(
    lam: torch.Tensor, weights: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """All eigenvalues of the sample sorted, with each one's share of the pooled measure
    (None for a plain sample: equal shares)."""
    flat, order = lam.reshape(-1).sort()
    if weights is None:
        return flat, None
    mass = weights[:, None].expand_as(lam).reshape(-1)[order]
    return flat, mass / mass.shape[0]  # unbiased: total mass ≈ 1, exactly 1 on average


def _exact_minimum(
    a: torch.Tensor, b: torch.Tensor, d: int, n: int, noise_std: float
) -> tuple[torch.Tensor, torch.Tensor, float, float, float] | None:
    """The strict local minimum of the exact loss Newton reaches from ``(a, b)``, when it is one
    and no worse than ``(a, b)`` itself; else None."""
    ea, eb, loss, grad, eig = exact_pgd_stationary_point(a.tolist(), b.tolist(), d, n, noise_std)
    start = pgd_class_loss_exact(a.tolist(), b.tolist(), d, n, noise_std)
    if not (grad <= 1e-9 * (1.0 + loss) and min(eig) > 0 and loss <= start):
        return None
    kw = dict(dtype=torch.float64, device=a.device)
    return torch.tensor(ea, **kw), torch.tensor(eb, **kw), loss, grad, min(eig)


def best_pgd_scalars(
    layers: int,
    d: int,
    n: int,
    noise_std: float = 0.0,
    sparse: bool = False,
    num_samples: int = 200_000,
    seed: int = 0,
    restarts: int | None = None,
    eigenvalues: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> PGDScalars:
    """Minimize the Monte-Carlo population loss of the sparse (``sparse=True``) or PGD class.

    Common random numbers: one eigenvalue sample (by default the importance-sampled
    :func:`wishart_sample` with ``seed``, whose tail draws make the estimate trustworthy; or the
    given ``eigenvalues`` (num_samples, d) with their importance ``weights`` (num_samples,), None
    for a plain sample such as :func:`wishart_eigenvalues`) defines a smooth sample loss of the free
    parameters ``θ = (a_1..a_L, c_1..c_{L−1})`` (``c_ℓ = a_ℓ b_ℓ``; sparse: ``θ = a``). The loss
    is a sum of squares, so each of ``restarts`` deterministic starting points (default 12 for
    the PGD class, 4 for the sparse class) is optimized by Levenberg–Marquardt (float64, exact
    Jacobian by forward mode) on a moment-matched compression of the pooled eigenvalues (2-point
    Gauss rule per bin of 1024 sorted values, extreme values kept); the best is polished by
    Newton steps on the full sample (gradient from the full sample, Hessian from the
    compression), and every reported number is computed on the full sample. For the PGD class
    the best sparse solution (with ``c = 0``) is always among the starts, so the PGD-class loss
    is never above the sparse-class one on the same sample. The problem is non-convex (deep PGD
    classes have several local minima): the result is the best of the restarts, not a certified
    global minimum. Negative readout; any Σ with ``Σ_w = Σ⁻¹`` (whitening invariance). See
    :class:`PGDScalars` for what is reported. By default (no ``eigenvalues`` given) the PGD class
    with L ≤ 3 is finished by Newton's method on the *exact* population loss
    (:func:`~iclab.theory.linear_regression.wishart_moments.pgd_class_loss_exact`): then ``loss``
    is exact and ``standard_error`` 0. Monte Carlo cannot be trusted there: at L = 3, n = 20 the
    exact optimum is 9.61e-4, the minimizer of 2M importance-sampled draws has exact loss 1.03e-3
    while its draws put it at 8.72e-4 ± 1.4e-5, and the minimizer of plain draws has 0.054.
    """
    if layers < 1:
        raise ValueError(f"layers: must be >= 1, got {layers}")
    if noise_std < 0 or not math.isfinite(noise_std):
        raise ValueError(f"noise_std: must be finite and >= 0, got {noise_std}")
    lam, w = eigen_sample(d, n, num_samples, seed, eigenvalues, weights)
    num_samples = lam.shape[0]
    var = float(noise_std) ** 2
    L = layers
    flat, mass = pooled(lam, w)
    nodes, node_mass = _gauss2_compress(
        flat, bin_size=1024, tail=min(300, flat.shape[0] // 200), mass=mass
    )
    node_mass = node_mass * d  # the pooled measure has mass 1 per eigenvalue, i.e. d per draw

    sparse_obj = _Objective(nodes, node_mass, L, True, n, var)
    theta = _search(sparse_obj, _initial_points(L, True, flat, restarts or 4, seed, mass))
    obj = sparse_obj
    if not sparse and L > 1:
        obj = _Objective(nodes, node_mass, L, False, n, var)
        starts = _initial_points(L, False, flat, restarts or 12, seed, mass)
        starts.append(torch.cat([theta, theta.new_zeros(L - 1)]))
        theta = _search(obj, starts)

    # Newton polish on the full sample (gradient: full sample; Hessian: compression)
    val, se, grad = _full_eval(obj, lam, theta, w)
    for _ in range(4):
        _, _, hess = _value_grad_hess(obj, theta)
        assert hess is not None
        chol, info = torch.linalg.cholesky_ex(hess)
        if int(info) != 0:
            break
        cand = theta - torch.cholesky_solve(grad[:, None], chol)[:, 0]
        cval, cse, cgrad = _full_eval(obj, lam, cand, w)
        if not (math.isfinite(cval) and cval <= val + 1e-15 * abs(val)):
            break
        improved = bool(cgrad.norm() < 0.5 * grad.norm())
        theta, val, se, grad = cand, cval, cse, cgrad
        if not improved:
            break
    _, _, hess = _value_grad_hess(obj, theta)
    assert hess is not None
    hmin = float(torch.linalg.eigvalsh(hess).min())
    gnorm = float(grad.norm())

    a, c = obj.split(theta)
    b = torch.zeros_like(a)
    if obj.sparse:
        a = a.sort().values
    else:
        b[:-1] = c / a[:-1]
    converged = gnorm <= 1e-8 * (1.0 + val) and hmin > 0
    kind = "plain" if w is None else "importance-sampled"
    accuracy = (
        f"Monte-Carlo estimate over {num_samples} {kind} Wishart eigenvalue draws (seed {seed}): "
        f"population loss = {val:.6g} ± {se:.2g} (1 SE, relative {se / val:.2g}); "
        f"(a, b) minimize this sample loss (gradient norm {gnorm:.2g}, smallest Hessian "
        f"eigenvalue {hmin:.3g}); their distance to the population minimizer is O(1/√samples)."
    )
    if eigenvalues is None and not sparse and 3**L - 1 <= MAX_EXACT_DEGREE:
        # the exact loss exists (L ≤ 3): Newton on it from the sample's optimum
        exact = _exact_minimum(a, b, d, n, float(noise_std))
        if exact is not None:
            a, b, val, gnorm, hmin = exact
            se, converged = 0.0, True
            accuracy = (
                f"exact population loss (Wishart trace moments, rational arithmetic) = {val:.6g}; "
                f"(a, b): Newton on the exact loss from the minimizer of {num_samples} "
                f"{kind} draws (seed {seed}); gradient norm {gnorm:.2g}, smallest Hessian "
                f"eigenvalue {hmin:.3g}."
            )
    return PGDScalars(
        a=a.detach(), b=b.detach(), loss=val, standard_error=se, grad_norm=gnorm,
        hessian_min_eigenvalue=hmin, converged=bool(converged), sparse=sparse, d=d, n=n,
        noise_std=float(noise_std), num_samples=num_samples, seed=seed, accuracy=accuracy,
    )  # fmt: skip


def pgd_class_matrices(
    scalars: PGDScalars | tuple[torch.Tensor, torch.Tensor | None], covariance: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Matrices ``A_ℓ = a_ℓ Σ⁻¹`` and ``B_ℓ = b_ℓ I``, each ``(…, L, d, d)`` float64.

    ``scalars``: a :class:`PGDScalars` or a pair ``(a, b)`` of (L,) tensors (``b=None``: zeros).
    ``covariance``: Σ of shape ``(…, d, d)``, positive definite. Load into a negative-readout
    ``pgd`` :class:`~iclab.models.LinearSelfAttention` with
    ``model.set_pgd(A[None, :, None], B[None, :, None])`` (shape (E, L, H, d, d)); for
    ``sparse_pgd`` pass only ``A`` (valid when ``b = 0``).
    """
    if isinstance(scalars, PGDScalars):
        a, b = scalars.a, scalars.b
    else:
        a, b = scalars
    cov = torch.as_tensor(covariance, dtype=torch.float64)
    a = torch.as_tensor(a, dtype=torch.float64, device=cov.device)
    b = torch.zeros_like(a) if b is None else torch.as_tensor(b, dtype=torch.float64)
    b = b.to(cov.device)
    if a.dim() != 1 or b.shape != a.shape:
        raise ValueError(f"scalars: a and b must have shape (L,), got {a.shape} and {b.shape}")
    d = cov.shape[-1]
    if cov.dim() < 2 or cov.shape[-2] != d:
        raise ValueError(f"covariance: expected shape (..., d, d), got {tuple(cov.shape)}")
    chol = torch.linalg.cholesky(cov)
    eye = torch.eye(d, dtype=torch.float64, device=cov.device)
    inv = torch.cholesky_solve(eye.expand_as(cov), chol)
    inv = (inv + inv.transpose(-1, -2)) / 2
    A = a[:, None, None] * inv.unsqueeze(-3)
    B = (b[:, None, None] * eye).expand(*cov.shape[:-2], a.shape[0], d, d).clone()
    return A, B
