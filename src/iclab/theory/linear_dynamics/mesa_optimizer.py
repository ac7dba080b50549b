"""The mesa-optimizer of one-layer linear causal attention on linear dynamics (Zheng et al. 2024):
the one-GD-step weights Ŵ_t, the moments of the x_1 law, the limit c* of the
trained product ab, the predicted prediction/truth ratio, the data condition for recovery, and a
Monte Carlo check of c*.

Conventions (shared by every function here):

- **Sequences** ``x`` (…, T, d): ``x[..., t-1, :]`` is the paper's ``x_t`` (the paper is 1-based,
  tensors are 0-based); every leading shape is a batch shape. Everything is computed in
  complex128 (real input is promoted) on the input's device; real outputs are float64.
- **Mesa weights.** For 1-based ``t ≥ 2``
  ``Ŵ_t = (c/(t−1)) Σ_{i=1}^{t−1} x_{i+1} x_iᴴ`` and ``ŷ_t = Ŵ_t x_t`` (the prediction of
  ``x_{t+1}``); ``Ŵ_1 = 0``, ``ŷ_1 = 0``. ŷ_T (the prediction of the unseen x_{T+1}) is returned
  too. ``c`` is a float or a (real or complex) tensor broadcastable to the batch shape
  ``x.shape[:-2]``. This is what the one-layer model ``ŷ_t = W^{PV}(E_t E_tᴴ)W^{KQ}e_t/(t−1)``
  (tokens ``e_t = [x_t; x_{t−1}]``, ``x_0 = 0``) gives with ``W^{KQ}_{21} = a·I``,
  ``W^{PV}_{11} = b·I`` and all other blocks zero, for ``c = ab``.
- **One GD step.** ``Ŵ_t`` is one gradient-descent step from ``W = 0`` with step
  ``η = c/(t−1)`` on the in-context least squares ``L_t(W) = ½ Σ_{i<t} ‖x_{i+1} − W x_i‖²``,
  where the gradient of the real function L_t of the complex W is the *real gradient*
  ``∂L/∂Re W + i ∂L/∂Im W = 2 ∂L/∂W̄ = −Σ_{i<t} (x_{i+1} − W x_i) x_iᴴ`` (W̄ the conjugate
  Wirtinger derivative) — exactly what ``torch`` autograd stores in ``W.grad`` for complex W.
- **Loss** (the paper's): ``L(c) = E Σ_{t=2}^{T−1} ½‖ŷ_t − x_{t+1}‖²`` per sequence (T − 2 terms;
  ŷ_1 = 0 and ŷ_T are excluded).
- **Data.** One ``W = diag(e^{iθ_1}, …, e^{iθ_d})`` per sequence, ``θ_j ~ U[0, 2π)`` i.i.d. and
  independent of ``x_1``; ``x_{t+1} = W x_t``.
- **Moments** of ``u_j = |x_{1j}|²`` (:class:`X1Moments`), *averaged over coordinates*:
  ``κ2 = (1/d) Σ_j E u_j``, ``κ4 = (1/d) Σ_j E u_j²``, ``κ6 = (1/d) Σ_j E u_j³``,
  ``κ24 = (1/(d(d−1))) Σ_{j≠k} E u_j u_k²`` (undefined for d = 1, where it never enters). For a
  law with exchangeable coordinates these are ``E|x_{1j}|⁴`` etc. of the paper; the
  averaged form makes the c* formula exact for any law (see :func:`limit_ab`).

Derivation of c* (checked by :func:`optimal_ab_monte_carlo`, tests in
``tests/test_mesa_optimizer.py``). With ``λ_j = e^{iθ_j}``, ``x_{t,j} = λ_j^{t−1} x_{1j}`` and
``μ_k = λ_j λ̄_k`` the c = 1 prediction is, coordinate-wise,
``(Ŵ¹_t x_t)_j = x_{t+1,j} · A_{t,j}``, ``A_{t,j} = u_j + (1/(t−1)) Σ_{k≠j} u_k S_{t,k}``,
``S_{t,k} = Σ_{m=1}^{t−1} μ̄_k^m``. Since ``E μ^m = 0`` (m ≠ 0) and the phases are independent,
``E S = 0``, ``E S_k S̄_l = (t−1) δ_kl``, so per sequence and step
``E Re⟨Ŵ¹_t x_t, x_{t+1}⟩ = d κ4`` and ``E ‖Ŵ¹_t x_t‖² = d κ6 + d(d−1) κ24/(t−1)``. L(c) is
quadratic in c, and summing t = 2..T−1 gives its minimizer

    c* = (T−2) κ4 / [ (T−2) κ6 + (d−1) κ24 H_{T−2} ],    H_N = Σ_{n=1}^N 1/n,

which is the paper's formula (confirmed, no discrepancy). Whether training (a, b) reaches it is
a separate question (the paper's theorem, under its data condition). Monte Carlo minimizer
c_opt ± SE vs c*, d = 5: real Gaussian σ = 1, T = 4: 0.12496 ± 0.00014 vs 0.12500 (n = 2·10⁶);
T = 10: 0.15700 ± 0.00028 vs 0.15726 (10⁶); T = 100: 0.18978 ± 0.00143 vs 0.19191 (10⁵);
all-ones T = 10: 0.424031 ± 0.000100 vs 0.423921 (2·10⁶) — which rejects H_{T−1} (0.4141) and
the T → ∞ value (1); sparse c: 1/c² exactly (every sequence has N_s/D_s = 1/c², SE 0).

Capability. Per sequence the ratio of prediction to truth in coordinate j is exactly
``c·A_{t,j}``; its cross-term vanishes as t → ∞ (``|S_{t,k}| ≤ 2/|1−μ_k|``), leaving
``c*·|x_{1j}|²`` (:func:`predicted_ratio`). Its mean over θ is ``c·u_j`` at *every* t, so the mean
over the law is ``c*·κ2`` (:func:`predicted_mean_ratio`; real Gaussian σ: ``c*σ² → 1/5``).
:func:`recovers_sequence` states the data conditions for exact recovery.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = [
    "LAWS",
    "OptimalAB",
    "X1Moments",
    "diagonal_unitary_sequences",
    "harmonic_number",
    "limit_ab",
    "mesa_loss",
    "mesa_optimizer_prediction",
    "mesa_optimizer_weights",
    "optimal_ab_from_sequences",
    "optimal_ab_monte_carlo",
    "predicted_mean_ratio",
    "predicted_ratio",
    "recovers_sequence",
    "x1_moments",
    "x1_moments_monte_carlo",
]

F64 = torch.float64
C128 = torch.complex128
LAWS = ("gaussian", "sparse", "ones")

#: ``sampler(num, d, generator) -> (num, d)`` real or complex tensor of i.i.d. draws of x_1.
Sampler = Callable[[int, int, "torch.Generator | None"], torch.Tensor]


def _c128(x: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(x).to(dtype=C128)


def _check_x(x: torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.dim() < 2 or x.shape[-1] < 1 or x.shape[-2] < 1:
        raise ValueError(f"x: expected shape (…, T, d) with T, d >= 1, got {tuple(x.shape)}")
    return _c128(x)


def _scale(c, x: torch.Tensor, trailing: int) -> torch.Tensor:
    """``c`` as a complex128 tensor on x's device with ``trailing`` singleton dims appended."""
    if isinstance(c, torch.Tensor):
        c = c.to(device=x.device, dtype=C128)
    else:  # a Python number: straight to complex128 (no float32 detour)
        c = torch.as_tensor(c, dtype=C128, device=x.device)
    try:
        torch.broadcast_shapes(c.shape, x.shape[:-2])
    except RuntimeError:
        raise ValueError(
            f"c: shape {tuple(c.shape)} does not broadcast to the batch shape {tuple(x.shape[:-2])}"
        ) from None
    return c.reshape(c.shape + (1,) * trailing)


# --------------------------------------------------------------------------- mesa-optimizer
def mesa_optimizer_weights(x: torch.Tensor, c=1.0) -> torch.Tensor:
    """``Ŵ_t`` (…, T, d, d) complex128 for every 1-based t (index t−1; ``Ŵ_1 = 0``):
    ``Ŵ_t = (c/(t−1)) Σ_{i<t} x_{i+1} x_iᴴ`` by a cumulative sum (O(T d²) time and memory)."""
    x = _check_x(x)
    T, d = x.shape[-2:]
    outer = x[..., 1:, :, None] * x[..., :-1, None, :].conj()  # (…, T−1, d, d): x_{i+1} x_iᴴ
    steps = torch.arange(1, T, device=x.device, dtype=F64).reshape(-1, 1, 1)
    W = torch.cumsum(outer, dim=-3) / steps
    W1 = torch.zeros(*x.shape[:-2], 1, d, d, dtype=C128, device=x.device)  # Ŵ_1 = 0
    W = torch.cat([W1, W], dim=-3)
    return _scale(c, x, 3) * W


def mesa_optimizer_prediction(x: torch.Tensor, c=1.0) -> torch.Tensor:
    """``ŷ_t = Ŵ_t x_t`` (…, T, d) complex128 (index t−1 predicts ``x_{t+1}``; ``ŷ_1 = 0``).

    A running sum ``S = Σ_{i<t} x_{i+1} x_iᴴ`` over t: O(T d²) time, O(d²) extra memory per
    sequence (the (…, T, d, d) weights are never formed). Differentiable in x and c.
    """
    x = _check_x(x)
    T, d = x.shape[-2:]
    xt = x.movedim(-2, 0).movedim(-1, 1).contiguous()  # (T, d, …): batch innermost, fast
    xc = xt.conj()
    # S[j, k] = Σ_{i<t} x_{i+1,j} x̄_{i,k}, batch dims last
    S = torch.zeros(d, d, *x.shape[:-2], dtype=C128, device=x.device)
    out = [torch.zeros_like(xt[0])]
    for t in range(1, T):  # 0-based t is the paper's t + 1
        S = S + xt[t, :, None] * xc[t - 1, None, :]
        out.append((S * xt[t, None, :]).sum(1) / t)
    y = torch.stack(out, 0).movedim(1, -1).movedim(0, -2)
    return _scale(c, x, 2) * y


def mesa_loss(x: torch.Tensor, c=1.0) -> torch.Tensor:
    """Per-sequence paper loss ``Σ_{t=2}^{T−1} ½‖ŷ_t − x_{t+1}‖²`` (…,) float64 (requires T ≥ 3)."""
    x = _check_x(x)
    if x.shape[-2] < 3:
        raise ValueError(f"T: must be >= 3, got {x.shape[-2]}")
    r = mesa_optimizer_prediction(x, c)[..., 1:-1, :] - x[..., 2:, :]
    return 0.5 * (r.abs() ** 2).sum(dim=(-1, -2))


# --------------------------------------------------------------------------------- moments
@dataclass(frozen=True)
class X1Moments:
    """Coordinate-averaged moments of ``u_j = |x_{1j}|²`` (module docstring): ``kappa2 = E u``,
    ``kappa4 = E u²``, ``kappa6 = E u³``, ``kappa24 = E u_j u_k²`` (j ≠ k; NaN if unknown, e.g.
    d = 1 by Monte Carlo). ``*_se`` are Monte Carlo standard errors (0 for closed forms);
    ``num_samples`` the Monte Carlo sample size (None for closed forms)."""

    kappa2: float
    kappa4: float
    kappa6: float
    kappa24: float
    kappa2_se: float = 0.0
    kappa4_se: float = 0.0
    kappa6_se: float = 0.0
    kappa24_se: float = 0.0
    num_samples: int | None = None


def _check_d(d) -> int:
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
        raise ValueError(f"d: must be an integer >= 1, got {d!r}")
    return d


def x1_moments(law: str, d: int, sigma: float | None = None, c: float | None = None) -> X1Moments:
    """Closed-form moments of the built-in x_1 laws (real-valued x_1):

    - ``"gaussian"``: ``x_1 ~ N(0, σ² I)`` real: κ2 = σ², κ4 = 3σ⁴, κ6 = 15σ⁶, κ24 = σ²·3σ⁴
      (real is what gives the paper's ``c* → 1/(5σ²)``; a circular complex CN(0, σ²I) would
      give κ4 = 2σ⁴, κ6 = 6σ⁶, κ24 = 2σ⁶ and ``c* → 1/(3σ²)`` — use the Monte Carlo route).
    - ``"sparse"``: ``x_1 = ±c e_k``, k uniform on {1..d}, sign uniform: κ2 = c²/d,
      κ4 = c⁴/d, κ6 = c⁶/d, κ24 = 0 (never two nonzero coordinates).
    - ``"ones"``: ``x_1 = (1, …, 1)``: all moments 1.

    ``sigma`` is required (> 0) for, and only for, "gaussian"; ``c`` (> 0) for "sparse".
    """
    if law not in LAWS:
        raise ValueError(f"law: unknown x_1 law {law!r}; allowed: {', '.join(LAWS)}")
    d = _check_d(d)
    if law != "gaussian" and sigma is not None:
        raise ValueError(f"sigma: only for law 'gaussian', got sigma={sigma!r} for {law!r}")
    if law != "sparse" and c is not None:
        raise ValueError(f"c: only for law 'sparse', got c={c!r} for {law!r}")
    if law == "gaussian":
        if sigma is None or not sigma > 0 or not math.isfinite(sigma):
            raise ValueError(f"sigma: must be a finite number > 0, got {sigma!r}")
        s2 = float(sigma) ** 2
        return X1Moments(s2, 3 * s2**2, 15 * s2**3, 3 * s2**3)
    if law == "sparse":
        if c is None or not c > 0 or not math.isfinite(c):
            raise ValueError(f"c: must be a finite number > 0, got {c!r}")
        c2 = float(c) ** 2
        return X1Moments(c2 / d, c2**2 / d, c2**3 / d, 0.0)
    return X1Moments(1.0, 1.0, 1.0, 1.0)


def x1_moments_monte_carlo(
    sampler: Sampler,
    d: int,
    num: int,
    generator: torch.Generator | None = None,
    batch: int = 100_000,
) -> X1Moments:
    """Monte Carlo :class:`X1Moments` of a user-given law: ``sampler(n, d, generator)`` returns
    (n, d) i.i.d. draws of x_1 (real or complex), called in chunks of at most ``batch``.

    Each draw gives the coordinate-averaged statistics (``mean_j u_j``, ``mean_j u_j²``,
    ``mean_j u_j³``, ``mean_{j≠k} u_j u_k²``); the moments are their sample means and the
    standard errors ``std/√num`` (draws are i.i.d.; coordinates within a draw may be dependent).
    """
    d = _check_d(d)
    if num < 2 or batch < 1:
        raise ValueError(f"num: must be >= 2 (and batch >= 1), got num={num}, batch={batch}")
    stats = []
    done = 0
    while done < num:
        n = min(batch, num - done)
        x = torch.as_tensor(sampler(n, d, generator))
        if x.shape != (n, d):
            raise ValueError(f"sampler: expected shape ({n}, {d}), got {tuple(x.shape)}")
        u = x.abs().to(F64) ** 2 if x.is_complex() else x.to(F64) ** 2
        s1, s2, s3 = u.sum(-1), (u**2).sum(-1), (u**3).sum(-1)
        cross = (s1 * s2 - s3) / (d * (d - 1)) if d > 1 else torch.full_like(s1, math.nan)
        stats.append(torch.stack([s1 / d, s2 / d, s3 / d, cross], dim=-1))
        done += n
    s = torch.cat(stats)
    m, se = s.mean(0), s.std(0) / math.sqrt(num)
    return X1Moments(*(float(v) for v in m), *(float(v) for v in se), num_samples=num)


# ------------------------------------------------------------------------------- the limit
def harmonic_number(n: int) -> float:
    """``H_n = Σ_{k=1}^n 1/k`` (H_0 = 0); exact summation up to 10⁶, asymptotic series beyond."""
    if n < 0:
        raise ValueError(f"n: must be >= 0, got {n}")
    if n <= 1_000_000:
        return math.fsum(1.0 / k for k in range(1, n + 1))
    return math.log(n) + 0.5772156649015329 + 1 / (2 * n) - 1 / (12 * n**2) + 1 / (120 * n**4)


def limit_ab(T: int | float, d: int, moments: X1Moments) -> float:
    """The minimizer over c = ab of the paper's population loss of the diagonal model,

        ``c* = (T−2) κ4 / [ (T−2) κ6 + (d−1) κ24 H_{T−2} ]``

    (the paper's limit of the trained ab; verified here, see the module
    docstring). With the coordinate-averaged moments of :class:`X1Moments` it holds for any x_1
    law independent of the phases, exchangeable or not. ``T = math.inf`` gives the limit
    ``κ4/κ6`` (``H_N/N → 0``): real Gaussian σ → ``1/(5σ²)``; sparse c: ``1/c²`` for every T.
    """
    d = _check_d(d)
    infinite = isinstance(T, float) and math.isinf(T) and T > 0
    if not infinite and (isinstance(T, bool) or not isinstance(T, int) or T < 3):
        raise ValueError(f"T: must be an integer >= 3 (or math.inf), got {T!r}")
    if not moments.kappa6 > 0:
        raise ValueError(f"moments: kappa6 must be > 0 (x_1 = 0 a.s.?), got {moments.kappa6}")
    if infinite:
        return moments.kappa4 / moments.kappa6
    cross = 0.0
    if d > 1:
        if not math.isfinite(moments.kappa24):
            raise ValueError(f"moments: kappa24 must be finite for d > 1, got {moments.kappa24}")
        cross = (d - 1) * moments.kappa24 * harmonic_number(T - 2)
    return (T - 2) * moments.kappa4 / ((T - 2) * moments.kappa6 + cross)


def predicted_ratio(c_star, x1: torch.Tensor) -> torch.Tensor:
    """Asymptotic prediction/truth ratio per coordinate and sequence: ``c*·|x_{1j}|²`` (…, d)
    float64, for ``x1`` (…, d) and ``c_star`` a float or a tensor broadcastable to ``x1[..., 0]``.

    Exactly, at step t the ratio ``ŷ_{t,j}/x_{t+1,j}`` of the diagonal model with ab = c is
    ``c(|x_{1j}|² + (1/(t−1)) Σ_{k≠j} |x_{1k}|² S_{t,k})`` with the bounded phase sum S_{t,k}
    (module docstring): the cross term is O(1/t) per sequence and has mean zero over the phases.
    """
    x1 = torch.as_tensor(x1)
    u = x1.abs().to(F64) ** 2
    c = torch.as_tensor(c_star, dtype=F64, device=u.device)
    return c.unsqueeze(-1) * u if c.dim() else c * u


def predicted_mean_ratio(c_star: float, moments: X1Moments) -> float:
    """Mean over the law (and phases, at any t) of the per-coordinate ratio: ``c*·κ2``
    (real Gaussian σ: ``c*σ²``, → 0.2 as T → ∞; sparse c: ``c*c²/d`` counting the zero
    coordinates as ratio 0 — on the nonzero coordinate it is ``c*c² = 1``)."""
    return float(c_star) * moments.kappa2


def recovers_sequence(moments: X1Moments, *, asymptotic: bool = False, rtol: float = 1e-9) -> bool:
    """Whether the diagonal model with ``ab = c*`` recovers the sequence, from the moments.

    Let ``u_j = |x_{1j}|²``. By Cauchy–Schwarz (over draws and coordinates)
    ``κ4² ≤ κ2 κ6``, with equality iff ``u_j ∈ {0, r}`` a.s. for one common ``r > 0`` (all
    coordinates of all draws have the same modulus where nonzero), and then ``κ4/κ6 = 1/r``.

    - ``asymptotic=True``: T → ∞ and t ~ T. ``c* → κ4/κ6`` and the ratio tends to
      ``c*·u_j``, which is 1 on every nonzero coordinate iff ``κ4² = κ2 κ6``. Satisfied by
      sparse ±c·e_k and by all-ones, not by the Gaussian (κ4² = 9σ⁸ < 15σ⁸ = κ2κ6). (For
      all-ones this is about the *diagonal* model only: the paper reports that training there grows
      off-diagonal blocks, and at finite T, c* = (T−2)/((T−2)+(d−1)H_{T−2}) < 1.)
    - ``asymptotic=False`` (default): exact recovery ``ŷ_t = x_{t+1}`` for every t ≥ 2 of a.e.
      sequence, at any finite T ≥ 3. Needs in addition that no two coordinates are nonzero
      together (else the cross term ``u_k S_{t,k}/(t−1)`` is nonzero for a.e. phase, already at
      t = 2 where ``|S| = 1``), i.e. ``κ24 = 0``; then ``c* = κ4/κ6 = 1/r`` for every T. Only
      laws supported on ``{z·e_k : |z|² = r}`` qualify — sparse ±c·e_k (r = c²) does, all-ones
      and Gaussian do not.

    The equalities are tested with relative tolerance ``rtol`` (Monte Carlo moments need a
    tolerance of a few standard errors).
    """
    k2, k4, k6, k24 = moments.kappa2, moments.kappa4, moments.kappa6, moments.kappa24
    if not (k2 > 0 and k6 > 0):
        raise ValueError(f"moments: kappa2, kappa6 must be > 0, got {k2}, {k6}")
    cs = abs(k4 * k4 - k2 * k6) <= rtol * k2 * k6
    if asymptotic:
        return bool(cs)
    return bool(cs and abs(k24) <= rtol * k6)


# --------------------------------------------------------------------- Monte Carlo check
@dataclass(frozen=True)
class OptimalAB:
    """Monte Carlo minimizer over c of ``L(c) = E Σ_{t=2}^{T−1} ½‖c Ŵ¹_t x_t − x_{t+1}‖²``.

    Per sequence s: ``N_s = Σ_t Re⟨Ŵ¹_t x_t, x_{t+1}⟩``, ``D_s = Σ_t ‖Ŵ¹_t x_t‖²``; L is
    quadratic, ``L(c) = E[½Σ‖x_{t+1}‖²] − c E N + ½ c² E D``, so ``c_opt = N̄/D̄``.
    ``c_opt_se`` is the delta-method (ratio estimator) standard error
    ``std(N_s − c_opt D_s)/(√n D̄)``. ``numerator``/``denominator`` are N̄, D̄."""

    c_opt: float
    c_opt_se: float
    numerator: float
    denominator: float
    num_sequences: int


def _ratio_terms(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N_s, D_s) of :class:`OptimalAB` for sequences x (…, T, d), flattened to (n,)."""
    y = mesa_optimizer_prediction(x)[..., 1:-1, :]
    target = x[..., 2:, :]
    N = (y * target.conj()).real.sum(dim=(-1, -2))
    D = (y.abs() ** 2).sum(dim=(-1, -2))
    return N.reshape(-1), D.reshape(-1)


def _optimal_ab(N: torch.Tensor, D: torch.Tensor) -> OptimalAB:
    n = N.numel()
    Nm, Dm = float(N.mean()), float(D.mean())
    c = Nm / Dm
    se = float((N - c * D).std()) / (math.sqrt(n) * Dm)
    return OptimalAB(c, se, Nm, Dm, n)


def optimal_ab_from_sequences(x: torch.Tensor) -> OptimalAB:
    """:class:`OptimalAB` from given i.i.d. sequences ``x`` (…, T, d) (all leading dims pooled;
    T ≥ 3, at least 2 sequences) — e.g. from another task sampler or another W law."""
    x = _check_x(x)
    if x.shape[-2] < 3:
        raise ValueError(f"T: must be >= 3, got {x.shape[-2]}")
    N, D = _ratio_terms(x)
    if N.numel() < 2:
        raise ValueError(f"x: need at least 2 sequences, got {N.numel()}")
    return _optimal_ab(N, D)


def diagonal_unitary_sequences(
    x1: torch.Tensor, T: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Sequences (n, T, d) complex128 with ``x_t = W^{t−1} x_1``, ``W = diag(e^{iθ})``,
    ``θ_j ~ U[0, 2π)`` i.i.d. per sequence (powers computed as ``e^{i(t−1)θ}``, no drift).

    θ is drawn on the generator's device (x1's without one) and moved to x1's: a CPU generator
    gives the same sequences for x1 on any device."""
    x1 = _c128(x1)
    n, d = x1.shape
    device = generator.device if generator is not None else x1.device
    theta = torch.rand(n, d, generator=generator, dtype=F64, device=device).to(x1.device)
    theta = 2 * math.pi * theta
    angles = torch.arange(T, dtype=F64, device=x1.device)[:, None] * theta[:, None, :]
    return torch.polar(torch.ones_like(angles), angles) * x1[:, None, :]


def optimal_ab_monte_carlo(
    sampler: Sampler,
    T: int,
    d: int,
    num_sequences: int,
    generator: torch.Generator | None = None,
    batch: int = 20_000,
) -> OptimalAB:
    """Monte Carlo :class:`OptimalAB` on the paper's data: x_1 from ``sampler(n, d, generator)``
    (real or complex (n, d)), then one ``W = diag(e^{iθ})``, ``θ ~ U[0, 2π)^d``, per sequence
    (drawn from ``generator`` after x_1, chunk by chunk of ``batch`` sequences). Computed on the
    generator's device. An independent check of :func:`limit_ab` (no moment formula used)."""
    d = _check_d(d)
    if isinstance(T, bool) or not isinstance(T, int) or T < 3:
        raise ValueError(f"T: must be an integer >= 3, got {T!r}")
    if num_sequences < 2 or batch < 1:
        raise ValueError(
            f"num_sequences: must be >= 2 (and batch >= 1), got {num_sequences}, {batch}"
        )
    device = generator.device if generator is not None else torch.device("cpu")
    Ns, Ds = [], []
    done = 0
    while done < num_sequences:
        n = min(batch, num_sequences - done)
        x1 = torch.as_tensor(sampler(n, d, generator)).to(device)
        if x1.shape != (n, d):
            raise ValueError(f"sampler: expected shape ({n}, {d}), got {tuple(x1.shape)}")
        N, D = _ratio_terms(diagonal_unitary_sequences(x1, T, generator))
        Ns.append(N)
        Ds.append(D)
        done += n
    return _optimal_ab(torch.cat(Ns), torch.cat(Ds))
