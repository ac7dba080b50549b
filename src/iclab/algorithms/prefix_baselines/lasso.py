"""Lasso on every prefix, solved exactly for all prompts, prefixes and penalties at once.

For the prefix ``X_i`` (i, d), ``y_i`` (i,) the Lasso solves scikit-learn's objective

    min_w f(w) = (1/(2i))‖y_i − X_i w‖² + α‖w‖₁        (``Lasso(alpha=α, fit_intercept=False)``),

which depends on the prefix only through ``G_i = X_iᵀX_i/i``, ``c_i = X_iᵀy_i/i`` and
``q_i = ‖y_i‖²/i``: ``f(w) = wᵀG_i w/2 − c_iᵀw + q_i/2 + α‖w‖₁``. These come for all prefixes
from cumulative sums, and every (prompt, prefix) pair becomes one row of a single batched problem.

**Solver.** The LARS-Lasso homotopy (:func:`_homotopy`) follows the piecewise-linear solution path
``w(α)`` from ``α = ‖c‖∞`` (where ``w = 0``) down through the grid, one batched linear solve per
path event for all rows at once; it is exact up to round-off (no iteration tolerance), and every
``α`` of the grid comes from the same path. Each result is then **certified** by its duality gap,
computed from ``(G, c, q)`` with the dual point ``θ = s·r/i``, ``r = y − Xw``,
``s = min(1, α/‖Xᵀr/i‖∞)``:

    gap = ‖r‖²/(2i) + α‖w‖₁ − (s·yᵀr/i − s²‖r‖²/(2i))  ≥ f(w) − f(w*),

accepted when ``gap ≤ tol·q_i`` (scikit-learn's stopping rule ``gap < tol·‖y‖²`` on its i-scaled
objective). Rows that fail (a path event lost to round-off; not observed on Gaussian data) are
finished by batched cyclic coordinate descent — scikit-learn's algorithm,
``w_j ← S(c_j − Σ_{k≠j} G_jk w_k, α)/G_jj`` with ``S(z, α) = sign(z)·max(|z| − α, 0)`` — from
the path's point, to the same gap tolerance. Everything is computed in float64 (the event order of
the path is sensitive to round-off; a float32 path often fails the certificate) and returned in
the input dtype, on the input device.

For continuous covariates the Lasso solution is unique with probability one (also for ``i < d``,
where it has at most ``i`` non-zeros), so the predictions are well defined.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch

from iclab.algorithms.prefix_baselines.sequence_shapes import (
    check_counts,
    check_positions,
    check_sequences,
    new_predictions,
)

__all__ = ["DEFAULT_ALPHAS", "prefix_lasso", "prefix_lasso_path"]

DEFAULT_ALPHAS: tuple[float, ...] = (1e-3, 1e-2, 0.1, 1.0)


def _duality_gap(
    G: torch.Tensor, c: torch.Tensor, q: torch.Tensor, w: torch.Tensor, alpha: float
) -> torch.Tensor:
    """Lasso duality gap per row from the prefix moments: G (M, d, d), c, w (M, d), q (M,)."""
    Gw = (G @ w.unsqueeze(-1)).squeeze(-1)
    cw = (c * w).sum(-1)
    r2 = (q - 2 * cw + (w * Gw).sum(-1)).clamp_min(0)  # ‖r‖²/i
    ytr = q - cw  # yᵀr/i
    gmax = (c - Gw).abs().amax(-1)  # ‖Xᵀr/i‖∞
    s = torch.where(gmax > alpha, alpha / gmax.clamp_min(alpha), torch.ones_like(gmax))
    primal = r2 / 2 + alpha * w.abs().sum(-1)
    dual = s * ytr - s * s * r2 / 2
    return primal - dual


def _homotopy(
    G: torch.Tensor, c: torch.Tensor, alphas: list[float], max_events: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact Lasso solutions along the path ``α ↓`` (LARS-Lasso homotopy), batched over rows.

    On a segment of the path with support ``S`` and signs ``σ_S`` the solution is linear in ``α``:
    ``w_S(α) = a − α·b`` with ``G_SS a = c_S``, ``G_SS b = σ_S``, and off ``S`` the correlation is
    ``g_j(α) = c_j − G_jS w_S(α) = p_j + α·r_j``. Starting from ``w = 0`` at ``α = ‖c‖∞`` with the
    maximizing coordinate, each iteration solves for ``(a, b)`` of every unfinished row at once and
    moves its ``α`` to the next event: a coordinate off ``S`` reaching ``|g_j(α)| = α`` joins ``S``
    with ``σ_j = sign g_j``, a coordinate of ``S`` reaching ``w_j(α) = 0`` leaves it. Grid values of
    ``α`` passed on a segment get ``w = a − α·b``. The next event may not undo the last one (a
    coordinate that just joined cannot leave, one that just left cannot rejoin with its old sign;
    round-off in an ill-conditioned ``G_SS``, e.g. ``|S| = i``, could otherwise make it happen at
    once), and events within a relative ``1e-10`` below the
    current ``α`` are skipped; a skipped or mis-ordered event shows up in the caller's duality-gap
    check. ``alphas`` must be sorted in decreasing order.

    Returns ``(W (A, M, d), recorded (A, M))``; rows whose path needs more than ``max_events``
    events leave the remaining ``α`` unrecorded (W = 0 there).
    """
    M, d = c.shape
    A = len(alphas)
    W = torch.zeros(A, M, d, dtype=c.dtype, device=c.device)
    recorded = torch.zeros(A, M, dtype=torch.bool, device=c.device)
    grid = torch.tensor(alphas, dtype=c.dtype, device=c.device)
    cur, first = c.abs().max(-1)
    recorded |= grid.unsqueeze(-1) >= cur  # w = 0 for α ≥ ‖c‖∞
    support = torch.nn.functional.one_hot(first, d).bool() & (cur > 0).unsqueeze(-1)
    sign = torch.sign(c) * support
    rows = torch.arange(M, device=c.device)
    # (join +, join −, leave) moves that would undo the last event: a coordinate that just joined
    # cannot leave, one that just left cannot rejoin with its old sign (it may with the other).
    undo = torch.stack([torch.zeros_like(support), torch.zeros_like(support), support], 0)
    for _ in range(max_events):
        live = cur > alphas[-1]
        if not bool(live.any()):
            break
        rows, cur, support, sign = rows[live], cur[live], support[live], sign[live]
        undo = undo[:, live]
        Ga, ca = G[rows], c[rows]
        m = support.to(c.dtype)
        gs = Ga * (m.unsqueeze(-1) * m.unsqueeze(-2)) + torch.diag_embed(1 - m)
        sol, _ = torch.linalg.solve_ex(gs, torch.stack([ca * m, sign], -1))
        a, b = sol[..., 0] * m, sol[..., 1] * m
        p = ca - (Ga @ a.unsqueeze(-1)).squeeze(-1)
        r = (Ga @ b.unsqueeze(-1)).squeeze(-1)
        limit = (cur * (1 - 1e-10)).unsqueeze(-1)
        cands = torch.stack([p / (1 - r), -p / (1 + r), a / b], 0)  # join +, join −, leave
        allowed = torch.stack([~support, ~support, support], 0) & ~undo
        ok = allowed & torch.isfinite(cands) & (cands > 0) & (cands < limit)
        cands = torch.where(ok, cands, torch.zeros_like(cands))
        nxt, flat = cands.permute(1, 0, 2).reshape(len(rows), 3 * d).max(-1)  # 0: path ends
        on_segment = (grid.unsqueeze(-1) <= cur) & (grid.unsqueeze(-1) >= nxt)
        new = on_segment & ~recorded[:, rows]
        seg = a.unsqueeze(0) - grid[:, None, None] * b.unsqueeze(0)  # (A, rows, d)
        W[:, rows] = torch.where(new.unsqueeze(-1), seg, W[:, rows])
        recorded[:, rows] |= new
        kind, j = flat // d, flat % d
        event = (nxt > 0).unsqueeze(-1) & torch.nn.functional.one_hot(j, d).bool()
        joined = event & (kind < 2).unsqueeze(-1)
        undo = torch.stack([event & ~joined & (sign > 0), event & ~joined & (sign < 0), joined], 0)
        support = torch.where(event, (kind < 2).unsqueeze(-1), support)
        new_sign = torch.where(kind == 0, 1.0, -1.0).to(c.dtype).unsqueeze(-1)
        sign = torch.where(event, new_sign * support, sign)
        cur = nxt
    return W, recorded


def _coordinate_descent(
    G: torch.Tensor,
    c: torch.Tensor,
    q: torch.Tensor,
    w: torch.Tensor,
    alpha: float,
    tol: float,
    max_sweeps: int,
    check_every: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched cyclic coordinate descent from ``w`` (M, d); returns ``(w, converged (M,))``."""
    M, d = w.shape
    w = w.clone()
    converged = torch.zeros(M, dtype=torch.bool, device=w.device)
    rows = torch.arange(M, device=w.device)
    diag = G.diagonal(dim1=-2, dim2=-1)
    Ga, ca, qa, da, wa = G, c, q, diag, w.clone()
    sweeps = 0
    while rows.numel() > 0:
        gap = _duality_gap(Ga, ca, qa, wa, alpha)
        done = gap <= tol * qa
        w[rows] = wa
        converged[rows[done]] = True
        if sweeps >= max_sweeps or bool(done.all()):
            break
        if bool(done.any()):
            keep = ~done
            rows, Ga, ca, qa, da, wa = rows[keep], Ga[keep], ca[keep], qa[keep], da[keep], wa[keep]
        pos = da > 0
        safe = torch.where(pos, da, torch.ones_like(da))
        g = ca - (Ga @ wa.unsqueeze(-1)).squeeze(-1)  # Xᵀr/i, refreshed against drift
        for _ in range(check_every):
            for j in range(d):
                old = wa[:, j]
                rho = g[:, j] + da[:, j] * old
                new = torch.sign(rho) * torch.relu(rho.abs() - alpha) / safe[:, j]
                new = torch.where(pos[:, j], new, torch.zeros_like(new))
                g -= Ga[:, j, :] * (new - old).unsqueeze(-1)  # G symmetric: row j = column j
                wa[:, j] = new
        sweeps += check_every
    return w, converged


def prefix_lasso_path(
    x: torch.Tensor,
    y: torch.Tensor,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    *,
    positions: Sequence[int] | None = None,
    tol: float | None = None,
    max_events: int | None = None,
    max_sweeps: int = 100_000,
    check_every: int = 10,
) -> torch.Tensor:
    """Lasso prefix predictions ``x_iᵀŵ_i(α)`` for each ``α`` of a grid (module docstring).

    Matches ``sklearn.linear_model.Lasso(alpha=α, fit_intercept=False)`` fitted on each prefix
    (exact path, certified to ``tol``; scikit-learn's own coordinate descent is the less precise
    side). Rows that still fail the certificate after ``max_sweeps`` coordinate-descent sweeps keep
    their last iterate and raise a ``RuntimeWarning``.

    Args:
        x: (E, B, N, d) covariates.
        y: (E, B, N) labels.
        alphas: penalties ``α > 0``.
        positions: prefix lengths to evaluate (default all).
        tol: relative duality-gap tolerance of the certificate, ``gap ≤ tol·‖y_i‖²/i``
            (default 1e-12).
        max_events: maximum homotopy events per row (default ``20·d``).
        max_sweeps: maximum coordinate-descent sweeps per ``α``.
        check_every: sweeps between duality-gap checks.

    Returns:
        (A, E, B, N) predictions, ``A = len(alphas)`` in the given order (NaN at positions not
        evaluated, 0 at position 0).
    """
    N, d = check_sequences(x, y)
    alphas = [float(a) for a in alphas]
    if not alphas or not all(math.isfinite(a) and a > 0 for a in alphas):
        raise ValueError(f"alphas: expected finite numbers > 0, got {alphas!r}")
    max_events = 20 * d if max_events is None else max_events
    check_counts(max_events=max_events, max_sweeps=max_sweeps, check_every=check_every)
    tol = 1e-12 if tol is None else float(tol)
    if not (math.isfinite(tol) and tol > 0):
        raise ValueError(f"tol: expected a finite number > 0, got {tol!r}")
    pos = check_positions(positions, N)
    out = new_predictions(x, pos).unsqueeze(0).repeat(len(alphas), 1, 1, 1)
    fit = [i for i in pos if i > 0]
    if not fit:
        return out
    idx = torch.tensor(fit, device=x.device)
    out64, x, y = out.double(), x.double(), y.double()  # the solver works in float64
    count = idx.to(x.dtype)
    # Inclusive sums up to row i−1 = exclusive sums up to row i.
    gram = torch.cumsum(x.unsqueeze(-1) * x.unsqueeze(-2), dim=-3)[..., idx - 1, :, :]
    G = gram / count[:, None, None]  # (E, B, P, d, d)
    c = torch.cumsum(y.unsqueeze(-1) * x, dim=-2)[..., idx - 1, :] / count[:, None]
    q = torch.cumsum(y * y, dim=-1)[..., idx - 1] / count
    shape = G.shape[:3]
    G, c, q = G.reshape(-1, d, d), c.reshape(-1, d), q.reshape(-1)
    x_query = x[..., idx, :].reshape(-1, d)
    order = sorted(range(len(alphas)), key=lambda k: -alphas[k])
    W, recorded = _homotopy(G, c, [alphas[k] for k in order], max_events)
    not_converged = 0
    for slot, a in enumerate(order):
        w = W[slot]
        gap = _duality_gap(G, c, q, w, alphas[a])
        bad = ~(recorded[slot] & (gap <= tol * q))
        if bool(bad.any()):  # rare: finish those rows by coordinate descent from there
            w_bad, converged = _coordinate_descent(
                G[bad], c[bad], q[bad], w[bad], alphas[a], tol, max_sweeps, check_every
            )
            w = w.clone()
            w[bad] = w_bad
            not_converged += int((~converged).sum())
        out64[a][..., idx] = (w * x_query).sum(-1).reshape(shape)
    if not_converged:
        warnings.warn(
            f"prefix_lasso_path: {not_converged} (prompt, prefix, alpha) problems did not reach "
            f"tol = {tol:g} within {max_sweeps} sweeps",
            RuntimeWarning,
            stacklevel=2,
        )
    return out64.to(out.dtype)


def prefix_lasso(
    x: torch.Tensor,
    y: torch.Tensor,
    alpha: float = 0.1,
    *,
    positions: Sequence[int] | None = None,
    tol: float | None = None,
    max_events: int | None = None,
    max_sweeps: int = 100_000,
    check_every: int = 10,
) -> torch.Tensor:
    """Lasso prefix predictions for one ``α``: (E, B, N); see :func:`prefix_lasso_path`."""
    return prefix_lasso_path(
        x,
        y,
        [alpha],
        positions=positions,
        tol=tol,
        max_events=max_events,
        max_sweeps=max_sweeps,
        check_every=check_every,
    )[0]
