"""Critical points of the PGD class of Ahn et al. (Theorem 4), not only its best point.

The class is ``A_ℓ = a_ℓ Σ⁻¹``, ``B_ℓ = b_ℓ I`` (``Σ_w = Σ⁻¹``, negative readout); its population
loss is a smooth function of ``θ = (a_1..a_L, c_1..c_{L−1})`` with ``c_ℓ = a_ℓ b_ℓ``, estimated by
Monte Carlo over Wishart eigenvalues exactly as in :mod:`iclab.theory.linear_regression.multilayer` (same sample,
same reduction). That function is not convex: besides the minimum returned by
:func:`~iclab.theory.linear_regression.multilayer.best_pgd_scalars` it has other stationary points (local minima
and saddles), and gradient-based training inside or near the class can stop at one of them.
At ``Σ = I``, ``L = 3``, ``n = 20`` for instance the 3-layer model trained with Adam by the paper's
authors ends near ``a ≈ (0.71, 2.65, 7.1)``, ``b ≈ (0.34, 0.34)``, next to a strict local minimum
of the exact population loss (:mod:`iclab.theory.linear_regression.wishart_moments`) at
``a = (0.717, 2.649, 7.163)``, ``b = (0.341, 0.345)`` with loss 1.30e-3 (the paper reports
≈ 1.25e-3), while the best point of the class is ``a = (0.338, 2.091, 8.568)``,
``b = (0.878, 0.578)`` with exact loss 9.61e-4. On plain draws, which miss the rare prompts that
carry the loss, the best point moves to ``a ≈ (0.38, 2.41, 9.63)`` with a sample loss ≈ 6.7e-4
and an exact loss of 0.054. The search below runs on Monte-Carlo draws (importance-sampled by
default); its values are estimates.

:func:`pgd_critical_points` lists the stationary points: from many deterministic starting points
it runs (i) Levenberg–Marquardt descent on the loss (finds local minima) and (ii) damped Newton
on the gradient, i.e. Levenberg–Marquardt on ``‖∇f(θ)‖²`` with the Hessian as Jacobian (also
finds saddles), on a moment-matched compression of the eigenvalue sample; every candidate whose
gradient vanishes is polished by Newton steps on the **full** sample (exact gradient and Hessian
by double backward), deduplicated, and classified by the number of negative Hessian eigenvalues
(its Morse index: 0 = local minimum). The index does not depend on the coordinates (``θ`` or
``(a, b)``, whenever every ``a_ℓ ≠ 0``), by Sylvester's law of inertia.

:func:`project_to_class` reads the scalars ``a_ℓ = tr(Σ^{1/2} A_ℓ Σ^{1/2})/d`` and
``b_ℓ = tr(B_ℓ)/d`` off trained matrices, and :func:`nearest_critical_point` says which critical
point a trained model reached.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from iclab.seeding import make_generator
from iclab.theory.linear_regression.multilayer import (
    _full_eval,
    _gauss2_compress,
    _initial_points,
    _levenberg_marquardt,
    _Objective,
    _value_grad_hess,
    eigen_sample,
    pooled,
)

__all__ = [
    "CriticalPoint",
    "critical_point_near",
    "nearest_critical_point",
    "pgd_critical_points",
    "project_to_class",
]


@dataclass(frozen=True)
class CriticalPoint:
    """A stationary point of the PGD-class population loss (Monte Carlo, float64).

    ``a``, ``b``: (L,) scalars (``b[-1] = 0``: the last covariate update never reaches the
    prediction); ``theta``: ``(a, c = a·b without the last layer)``; ``loss``/``standard_error``:
    sample loss at the point and its Monte-Carlo standard error; ``grad_norm``: gradient norm in
    ``θ`` on the full sample; ``hessian_eigenvalues``: ascending, in ``θ``; ``index``: number of
    negative Hessian eigenvalues (0: local minimum).
    """

    a: torch.Tensor
    b: torch.Tensor
    theta: torch.Tensor
    loss: float
    standard_error: float
    grad_norm: float
    hessian_eigenvalues: torch.Tensor
    index: int

    @property
    def kind(self) -> str:
        return "local minimum" if self.index == 0 else f"saddle (index {self.index})"

    def describe(self) -> str:
        a = ", ".join(f"{v:.3g}" for v in self.a.tolist())
        b = ", ".join(f"{v:.3g}" for v in self.b[:-1].tolist())
        return (
            f"a = ({a}), b = ({b}), loss {self.loss:.4g} ± {self.standard_error:.1g} ({self.kind})"
        )


def _gradient_residuals(obj: _Objective):
    """``θ ↦ (∇f(θ), ∇²f(θ))``: Levenberg–Marquardt on these residuals is damped Newton on the
    gradient and converges to any stationary point, saddles included."""

    def residuals(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, g, H = _value_grad_hess(obj, theta)
        assert H is not None
        return g, H

    return residuals


def _starts(
    L: int, flat: torch.Tensor, count: int, seed: int, mass: torch.Tensor | None = None
) -> list[torch.Tensor]:
    """The deterministic starts of :func:`best_pgd_scalars` plus log-uniform random ones
    (``a_ℓ`` over [0.05, 30], ``c_ℓ = κ a_ℓ`` with ``κ`` over [0.05, 2])."""
    base = _initial_points(L, False, flat, 8, seed, mass)
    gen = make_generator("cpu", seed, "pgd_critical_points", L)
    out = list(base)
    while len(out) < count:
        # drawn on the CPU generator, then moved: the same starts on every device
        u = torch.rand(2 * L - 1, generator=gen, dtype=torch.float64).to(flat.device)
        a = torch.exp(math.log(0.05) + u[:L] * math.log(30 / 0.05)).sort().values
        kappa = torch.exp(math.log(0.05) + u[L:] * math.log(2 / 0.05))
        out.append(torch.cat([a, kappa * a[:-1]]))
    return out[:count]


class _Landscape:
    """The PGD-class loss on one eigenvalue sample: a compression for the search and the full
    sample for every reported number."""

    def __init__(
        self, sample: tuple[torch.Tensor, torch.Tensor | None], L: int, n: int, var: float
    ) -> None:
        lam, self.w = sample
        self.lam, self.L, self.n, self.var = lam, L, n, var
        d = lam.shape[1]
        self.flat, self.mass = pooled(lam, self.w)
        nodes, weights = _gauss2_compress(
            self.flat, bin_size=1024, tail=min(300, self.flat.shape[0] // 200), mass=self.mass
        )
        self.obj = _Objective(nodes, weights * d, L, False, n, var)

    def search(self, theta0: torch.Tensor, descent: bool) -> torch.Tensor | None:
        """A stationary point of the compressed loss from ``theta0`` (None if none was found)."""
        if descent:
            theta = _levenberg_marquardt(self.obj.residuals, theta0, max_iter=300, rel_tol=1e-15)
        else:
            theta = _levenberg_marquardt(
                _gradient_residuals(self.obj), theta0, max_iter=200, rel_tol=0.0
            )
        if not bool(torch.isfinite(theta).all()):
            return None
        val, g, _ = _value_grad_hess(self.obj, theta)
        if not (math.isfinite(val) and float(g.norm()) < 1e-5 * (1.0 + abs(val))):
            return None
        return theta

    def polish(self, theta: torch.Tensor, grad_tol: float) -> CriticalPoint | None:
        """Newton steps with the full-sample gradient (Hessian from the compression, which
        matches the full one to the compression's accuracy); the point if the full-sample
        gradient vanishes there."""
        L = self.L
        val, se, g = _full_eval(self.obj, self.lam, theta, self.w)
        _, _, H = _value_grad_hess(self.obj, theta)
        for _ in range(8):
            if float(g.norm()) <= 1e-14 * (1.0 + val):
                break
            try:
                cand = theta - torch.linalg.solve(H, g)
            except RuntimeError:
                break
            cval, cse, cg = _full_eval(self.obj, self.lam, cand, self.w)
            if not (math.isfinite(cval) and float(cg.norm()) < float(g.norm())):
                break
            theta, val, se, g = cand, cval, cse, cg
            _, _, H = _value_grad_hess(self.obj, theta)
        a = theta[:L]
        if not (float(g.norm()) <= grad_tol * (1.0 + val) and bool((a.abs() > 1e-8).all())):
            return None
        eig = torch.linalg.eigvalsh(H)
        b = theta.new_zeros(L)
        b[:-1] = theta[L:] / a[:-1]
        return CriticalPoint(
            a=a.clone(), b=b, theta=theta.clone(), loss=val, standard_error=se,
            grad_norm=float(g.norm()), hessian_eigenvalues=eig,
            index=int((eig < -1e-9 * eig.abs().max()).sum()),
        )  # fmt: skip


def pgd_critical_points(
    layers: int,
    d: int,
    n: int,
    noise_std: float = 0.0,
    num_samples: int = 200_000,
    seed: int = 0,
    starts: int = 48,
    eigenvalues: torch.Tensor | None = None,
    grad_tol: float = 1e-9,
    weights: torch.Tensor | None = None,
) -> list[CriticalPoint]:
    """Stationary points of the PGD-class population loss, sorted by loss (best first).

    Search on a moment-matched compression of the eigenvalue sample (see the module docstring)
    from ``starts`` deterministic starting points, each by descent and by Newton on the
    gradient; distinct candidates are polished on the full sample (``num_samples``
    importance-sampled Wishart draws with ``seed``, or ``eigenvalues`` with their ``weights``,
    see :func:`~iclab.theory.linear_regression.multilayer.wishart_sample`) and kept when the full-sample gradient norm is at most
    ``grad_tol·(1 + loss)`` and every ``a_ℓ`` is non-zero; points closer than 1e-4 (relative)
    are merged. Requires ``layers ≥ 2`` (one layer has a single, global minimum). Not a
    certified complete list: a critical point with a tiny basin can be missed.
    """
    if layers < 2:
        raise ValueError(f"layers: must be >= 2, got {layers}")
    sample = eigen_sample(d, n, num_samples, seed, eigenvalues, weights)
    land = _Landscape(sample, layers, n, float(noise_std) ** 2)
    candidates: list[torch.Tensor] = []
    for theta0 in _starts(layers, land.flat, starts, seed, land.mass):
        for descent in (True, False):
            theta = land.search(theta0, descent)
            if theta is not None and not any(_close(theta, c, 1e-6) for c in candidates):
                candidates.append(theta)
    found: list[CriticalPoint] = []
    for theta in candidates:
        point = land.polish(theta, grad_tol)
        if point is not None and not any(_close(point.theta, p.theta) for p in found):
            found.append(point)
    found.sort(key=lambda p: p.loss)
    return found


def critical_point_near(
    a: torch.Tensor,
    b: torch.Tensor,
    d: int,
    n: int,
    noise_std: float = 0.0,
    num_samples: int = 200_000,
    seed: int = 0,
    eigenvalues: torch.Tensor | None = None,
    grad_tol: float = 1e-9,
    weights: torch.Tensor | None = None,
) -> CriticalPoint | None:
    """The critical point a trained model with scalars ``(a, b)`` (each (L,), e.g. read off it by
    :func:`project_to_class`) sits at or next to.

    Two searches start from ``(a, b)``: descent on the loss (reaches the local minimum whose
    basin holds the point) and damped Newton on the gradient (reaches a nearby critical point of
    any kind, e.g. a saddle where training stalled); of the points they reach (polished on the
    full sample) the one closer to the start, coordinate-wise in ``θ`` relative terms, is
    returned. None when neither reaches a stationary point. The search runs on the device of the
    eigenvalue sample (the CPU for the default Wishart draw), where the point is returned."""
    a = torch.as_tensor(a, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64)
    L = a.shape[0]
    if L < 2 or b.shape != a.shape:
        raise ValueError(f"a, b: expected equal shapes (L,) with L >= 2, got {a.shape}, {b.shape}")
    if not bool(torch.isfinite(a).all() and torch.isfinite(b).all()):
        return None
    sample = eigen_sample(d, n, num_samples, seed, eigenvalues, weights)
    land = _Landscape(sample, L, n, float(noise_std) ** 2)
    start = torch.cat([a, (a * b)[:-1]]).to(land.lam.device)  # the search runs on λ's device
    best: CriticalPoint | None = None
    for descent in (True, False):
        theta = land.search(start, descent)
        point = None if theta is None else land.polish(theta, grad_tol)
        if point is not None and (best is None or _gap(start, point) < _gap(start, best)):
            best = point
    return best


def _gap(theta: torch.Tensor, p: CriticalPoint) -> float:
    return float(((theta - p.theta).abs() / p.theta.abs()).max())


def _close(u: torch.Tensor, v: torch.Tensor, rel: float = 1e-4) -> bool:
    return float((u - v).norm()) <= rel * float(v.norm())


def project_to_class(
    A: torch.Tensor, B: torch.Tensor, covariance: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scalars of trained PGD-form matrices: ``a_ℓ = tr(Σ^{1/2} A_ℓ Σ^{1/2})/d = tr(Σ A_ℓ)/d``,
    ``b_ℓ = tr(B_ℓ)/d``.

    ``A``, ``B``: ``(…, L, d, d)``; ``covariance``: Σ broadcasting as ``(…, 1, d, d)``. Returns
    float64 ``(…, L)`` each; ``b[..., -1]`` is set to 0 (the last ``B`` never reaches the
    prediction, so training leaves it at its initialization).
    """
    A = torch.as_tensor(A, dtype=torch.float64)
    B = torch.as_tensor(B, dtype=torch.float64)
    cov = torch.as_tensor(covariance, dtype=torch.float64).to(A.device)
    d = A.shape[-1]
    a = (cov @ A).diagonal(dim1=-2, dim2=-1).sum(-1) / d
    b = B.diagonal(dim1=-2, dim2=-1).sum(-1) / d
    b = b.clone()
    b[..., -1] = 0.0
    return a, b


def nearest_critical_point(
    a: torch.Tensor, b: torch.Tensor, points: list[CriticalPoint]
) -> tuple[int, float]:
    """Index into ``points`` of the critical point closest to scalars ``(a, b)`` (each (L,)),
    and the relative distance ``‖θ − θ_p‖/‖θ_p‖`` in ``θ = (a, a·b)`` coordinates."""
    a = torch.as_tensor(a, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64)
    theta = torch.cat([a, (a * b)[:-1]])
    dist = [
        float((theta.to(p.theta.device) - p.theta).norm()) / float(p.theta.norm()) for p in points
    ]
    i = min(range(len(points)), key=dist.__getitem__)
    return i, dist[i]
