"""``iclab reproduce zheng2024``: Zheng, Huang, Wang, Wu, Zhu & Li (NeurIPS 2024).

One-layer causal linear attention, every entry of ``W^{KQ}`` and ``W^{PV}`` trained by full-batch
gradient descent (the paper's gradient flow, with its learning rates) on a fixed training set of
``m`` linear-dynamics sequences ``x_{t+1} = W x_t`` (W complex diagonal unitary, d = 5, T = 100).

The paper's claims and how each is tested:

- **ab → c*.** From the diagonal initialization ``W^{KQ}_{21} = a0·I``, ``W^{PV}_{11} = b0·I``
  gradient flow on the population loss keeps the form ``{a·I, b·I}`` and the product ab tends
  to the minimizer c* of the diagonal model's population loss
  (:func:`iclab.theory.linear_dynamics.mesa_optimizer.limit_ab`). A training set of m sequences has its own
  minimizer c_opt (:func:`~iclab.theory.linear_dynamics.mesa_optimizer.optimal_ab_from_sequences`), which
  scatters around c* with a sampling error SE(c_opt) ∝ 1/√m (0 for sparse x_1, where every
  sequence gives 1/c²). Rows: the trained ab against c* within 3 SE (the larger of SE(c_opt) at
  the m used and the seed spread) plus a 2% optimization tolerance, for each init, and only
  once the flow has stopped moving.
- **Capability.** Gaussian x_1: the final-step prediction/truth ratio is ``c·κ2`` for the
  diagonal model with ab = c (not 1: the sequence is not recovered), tested with the same c*
  and sampling error as the ab rows plus the test-prompt noise; sparse x_1: the sequence is
  recovered, the final-step MSE → 0.
- **Finite m.** With every entry trained, a finite training set breaks the symmetry that keeps
  the population flow diagonal: the off-diagonal drift is sampling noise of size O(1/√m), and
  it lets ab overshoot its own training set's c_opt. Tested by training the same recipe on m
  and 4m sequences: the drift ratio must be 1/2 and the gap ab − c_opt must shrink at least as
  fast. For all-ones x_1 (outside the paper's data condition) the drift is a population effect:
  it does not shrink with m.
- **A Gaussian (non-diagonal) initialization becomes diagonal**: its off-diagonal drift after a
  long run against the diagonal-init run's on the same training sets. Refuted (with the
  evidence in the note) when gradient descent, monotone in the loss, has already brought the
  training loss below the diagonal-init run's while the drift stays large: it cannot come back.
- A float64 identity: the diagonal model equals the mesa-optimizer (one GD step on the
  in-context least squares).

Gradient flow is discretized with the paper's step sizes, the step length capped at
``STEP_CAP`` (global gradient clipping at ``STEP_CAP / lr``): far from the optimum (large inits)
plain steps diverge; the cap only rescales time along the same flow direction and is inactive
near the limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from itertools import pairwise
from typing import Any

import torch

from iclab.analysis import ReportRow, figures
from iclab.analysis.report import Tolerance, check, compare
from iclab.experiments.experiment import Context, Experiment, Run, configure
from iclab.models.causal_linear_attention import CausalLinearAttention, CausalLinearAttentionConfig
from iclab.tasks.linear_dynamics import LinearDynamicsConfig, LinearDynamicsTask
from iclab.theory.linear_dynamics.mesa_optimizer import (
    limit_ab,
    mesa_optimizer_prediction,
    optimal_ab_from_sequences,
    x1_moments,
)
from iclab.training import TrainResult

DESCRIPTION = "Zheng, Huang, Wang, Wu, Zhu & Li (NeurIPS 2024): mesa-optimization in autoregressive linear attention"

TITLE = "Zheng et al. (2024): mesa-optimization in autoregressively trained linear attention"
D = 5
INITS = ((0.1, 0.1), (0.5, 1.5), (2.0, 2.0))
STEP_CAP = 0.05
# the paper's gradient-flow learning rates per x_1 law and scale
LEARNING_RATES = {
    ("gaussian", 0.5): 1e-3,
    ("gaussian", 1.0): 1e-4,
    ("gaussian", 2.0): 2e-6,
    ("sparse", 0.5): 3e-2,
    ("sparse", 1.0): 1e-3,
    ("sparse", 2.0): 1e-4,
    ("ones", 1.0): 5e-4,
}
# Gaussian x_1: epochs relative to σ = 1 at the paper's learning rates (σ = 0.5 and σ = 2 reach
# their limit more slowly in epochs; measured at m = 500: 95% of c* after 200 epochs)
EPOCH_FACTOR = {0.5: 2.0, 2.0: 3.0}
# The paper's c* (its formula, evaluated at d = 5, T = 100): 0.1919/σ² (Gaussian), 1/c² (sparse).
PAPER_C_STAR_GAUSSIAN = 0.1919
# Optimization tolerances (stated in every threshold): how far from its limit a converged
# discretized flow may stop, relative to the limit.
AB_TOL = 0.02
# stationarity: over the last quarter of the epochs ab moved ≤ this fraction of its total change
CONVERGED = 0.05


@dataclass(frozen=True)
class Budget:
    """Sequences, epochs and scales; ``quick`` fits the reproduction in ≤ 10 CPU minutes."""

    seeds: int
    sequences: int  # m, the full batch (a fixed training set per seed)
    epochs: int  # Gaussian x_1 diagonal-init runs
    sparse_epochs: int
    ones_epochs: int
    gaussian_init_epochs: int
    sigmas: tuple[float, ...]
    cs: tuple[float, ...]
    inits: tuple[tuple[float, float], ...]
    test_size: int
    sparse_seeds: int = 1  # sparse x_1: c_opt = 1/c² for every training set (no sampling error)
    every_init_at_every_scale: bool = True  # False: the three inits at σ = 1 and c = 1 only
    large_m_factor: int = 4  # the drift runs also train on factor·m sequences
    T: int = 100
    init_std: float = 0.1  # the Gaussian initialization

    def inits_at(self, scale: float) -> tuple[tuple[float, float], ...]:
        return self.inits if self.every_init_at_every_scale or scale == 1.0 else self.inits[:1]


QUICK = Budget(
    seeds=2, sequences=500, epochs=200, sparse_epochs=300, ones_epochs=200,
    gaussian_init_epochs=900, sigmas=(0.5, 1.0, 2.0), cs=(0.5, 1.0, 2.0), inits=INITS,
    test_size=1000, every_init_at_every_scale=False,
)  # fmt: skip
# Full: every init at every scale, m = 1000 and 4000, a 5× longer Gaussian-init run.
# Measured 2026-12-01 at 0a94fab (2 cores, the test suite running alongside): 22 runs, 613 s of
# training, 626 s in all (the prediction moments: 3788 s with the stored prefix Gram sums).
# Quick: 117 s alone.
FULL = Budget(
    seeds=2, sequences=1000, epochs=300, sparse_epochs=400, ones_epochs=300,
    gaussian_init_epochs=3000, sigmas=(0.5, 1.0, 2.0), cs=(0.5, 1.0, 2.0), inits=INITS,
    test_size=2000,
)  # fmt: skip


def _tag(law: str, scale: float) -> str:
    return "ones" if law == "ones" else f"{law}_{scale:g}"


def _name(law: str, scale: float, a0: float, b0: float, large: bool = False) -> str:
    return f"{_tag(law, scale)}{'_large_m' if large else ''}_a{a0:g}_b{b0:g}"


GAUSSIAN_INIT = "gaussian_1_gaussian_init"
# The Gaussian-init run leaves the non-diagonal weights slowly (measured at m = 500, lr 1e-4:
# off-diagonal drift 2.47 → 2.42 over epochs 300 → 600): it runs 3× the paper's step (stable:
# along a the curvature b²·D̄ ≈ 1.4e3 allows steps up to 1.4e-3) to reach a longer flow time.
GAUSSIAN_INIT_LR_FACTOR = 3.0


def _run(
    law: str, scale: float, budget: Budget, device: str, *, epochs: int, a0: float = 0.1,
    b0: float = 0.1, init: str = "diagonal", m: int | None = None, name: str | None = None,
    lr_factor: float = 1.0,
) -> Run:  # fmt: skip
    m = m or budget.sequences
    lr = float(f"{LEARNING_RATES[(law, scale)] * lr_factor:.6g}")
    changes: dict[str, Any] = {
        "device": device,
        "n_seeds": budget.sparse_seeds if law == "sparse" else budget.seeds,
        "task.T": budget.T,
        "model.init": init,
        "model.a0": a0,
        "model.b0": b0,
        "model.init_std": budget.init_std,
        "model.trainable": "all",
        "train.lr": lr,
        "train.clip.mode": "global",
        "train.clip.max_norm": STEP_CAP / lr,
        "train.steps": epochs,
        "train.batch_size": m,
        "train.test_size": budget.test_size,
        "train.eval_every": max(1, epochs // 20),
        "train.checkpoint_every": max(1, epochs // 4),
    }
    if law == "gaussian":
        changes["task.sigma"] = scale
    elif law == "sparse":
        changes["task.c"] = scale
    name = name or _name(law, scale, a0, b0, large=m != budget.sequences)
    changes["name"] = name
    return Run(name, configure(f"zheng2024_{law}", changes))


def _large_m(budget: Budget) -> int:
    return budget.sequences * budget.large_m_factor


# ------------------------------------------------------------------------- measurements
def off_diagonal_drift(model: CausalLinearAttention) -> list[float]:
    """Per member: ‖W − Π(W)‖_F / ‖Π(W)‖_F over both matrices, Π the projection onto the
    mesa-optimizer's form {a·I, b·I} (see :meth:`CausalLinearAttention.off_diagonal_drift`)."""
    return model.off_diagonal_drift().tolist()


def _drift_ratio(small: TrainResult, large: TrainResult) -> tuple[list[float], ...]:
    """Per-seed drift of the run at m and at the larger m, and their ratio (large / small)."""
    d_small, d_large = off_diagonal_drift(small.model), off_diagonal_drift(large.model)
    ratio = [x / y if y > 0 else math.nan for x, y in zip(d_large, d_small)]
    return d_small, d_large, ratio


def _ab(res: TrainResult) -> list[float]:
    return res.model.ab().double().tolist()


def _converged(res: TrainResult, key: str = "ab") -> tuple[bool, str]:
    """Stationarity of the flow, per seed: over the last quarter of the epochs the logged
    ``key`` (ab, or the training loss) moved by at most ``CONVERGED`` of its total change since
    the first evaluation (or by ≤ 0.1% of its value when it barely moved at all)."""
    series = [m for m in res.metrics if m.get(key)]
    steps = res.config.train.steps
    if steps == 0 or len(series) < 3:
        return False, f"not converged: {key} has no trajectory ({steps} epochs)"
    first, last = series[0], series[-1]
    ref = min(series[1:-1], key=lambda m: abs(m["step"] - 0.75 * steps))
    worst = 0.0
    for x0, xr, x1 in zip(first[key], ref[key], last[key]):
        scale = max(abs(x1 - x0), 1e-3 * abs(x1) / CONVERGED, 1e-300)
        worst = max(worst, abs(x1 - xr) / scale)
    ok = worst <= CONVERGED
    return ok, (
        f"{'converged' if ok else 'not converged'}: {key} must move ≤ {CONVERGED:.0%} of its "
        f"total change over epochs {ref['step']}→{last['step']} (worst {worst:.1%})"
    )


def _training_optimum(res: TrainResult) -> list:
    """Per seed: :class:`OptimalAB` of the run's own training set (the trainer's batch
    ``(seed, "train", 0)``; the data set is never resampled)."""
    x = res.task.sample(res.config.train.batch_size, "train", 0).x
    return [optimal_ab_from_sequences(x[e].to(torch.complex128)) for e in range(x.shape[0])]


def _final_step(res: TrainResult) -> tuple[torch.Tensor, torch.Tensor]:
    """(ŷ_T, x_{T+1}) on the run's test sequences, (E, n, d) complex128."""
    batch = res.task.sample(res.config.train.test_size, "test", 0)
    with torch.no_grad():
        y = res.model.predict_all(batch.x)[..., -1, :].to(torch.complex128)
    return y, batch.next_state().to(torch.complex128)


def _final_ratio(res: TrainResult) -> tuple[list[float], list[float]]:
    """Per seed: mean over test sequences of mean_j Re(ŷ_{T,j}/x_{T+1,j}), and its SE over
    the sequences."""
    y, truth = _final_step(res)
    per_seq = (y / truth).real.mean(-1)  # Gaussian x_1: every coordinate is nonzero
    n = per_seq.shape[-1]
    return per_seq.mean(-1).tolist(), (per_seq.std(-1) / math.sqrt(n)).tolist()


def _final_relative_mse(res: TrainResult) -> list[float]:
    """Per seed: mean ‖ŷ_T − x_{T+1}‖² / mean ‖x_{T+1}‖² on the test sequences."""
    y, truth = _final_step(res)
    return (
        (y - truth).abs().square().sum(-1).mean(-1) / truth.abs().square().sum(-1).mean(-1)
    ).tolist()


def _mesa_check(c: float) -> float:
    """max |diagonal model − mesa-optimizer| on random sequences in float64."""
    cfg = LinearDynamicsConfig(d=D, T=40, x1="gaussian")
    x = LinearDynamicsTask(cfg, [0], dtype=torch.float64).sample(64, "mesa_check").x
    a = math.sqrt(abs(c))
    model = CausalLinearAttention(
        D, CausalLinearAttentionConfig(init="diagonal", a0=a, b0=math.copysign(a, c)), [0],
        dtype=torch.float64,
    )  # fmt: skip
    with torch.no_grad():
        diff = model.predict_all(x) - mesa_optimizer_prediction(x, c)
    return float(diff.abs().max())


def _all_converged(runs: list[TrainResult], keys: tuple[str, ...]) -> tuple[bool, str]:
    """:func:`_converged` for every run and key, with the worst case spelled out."""
    results = [(_converged(r, k), r.config.name, k) for r in runs for k in keys]
    ok = all(c for (c, _), _, _ in results)
    return ok, "; ".join(f"{name}: {why}" for (_, why), name, _ in results)


def _and_converged(row: ReportRow, ok: bool, why: str) -> ReportRow:
    """A claim row that also requires the run to have converged (else ``fail``)."""
    row = replace(row, threshold=f"{row.threshold}; and {why}")
    if not ok and row.verdict != "fail":
        row = replace(row, verdict="fail")
    return row


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.3g}" for v in values)


# ---------------------------------------------------------------------------- experiment
class Zheng2024(Experiment[Budget]):
    name = "zheng2024"
    title = TITLE
    budgets = {"quick": QUICK, "full": FULL}  # noqa: RUF012

    def runs(self, budget: Budget, device: str = "auto") -> list[Run]:
        out = []
        for law, scales, epochs in (
            ("gaussian", budget.sigmas, None),
            ("sparse", budget.cs, budget.sparse_epochs),
        ):
            for scale in scales:
                for a0, b0 in budget.inits_at(scale):
                    n = epochs or round(budget.epochs * EPOCH_FACTOR.get(scale, 1))
                    out.append(_run(law, scale, budget, device, epochs=n, a0=a0, b0=b0))
        large = _large_m(budget)
        out.append(_run("gaussian", 1.0, budget, device, epochs=budget.epochs, m=large))
        out.append(_run("ones", 1.0, budget, device, epochs=budget.ones_epochs))
        out.append(_run("ones", 1.0, budget, device, epochs=budget.ones_epochs, m=large))
        out.append(
            _run(
                "gaussian",
                1.0,
                budget,
                device,
                epochs=budget.gaussian_init_epochs,
                init="gaussian",
                name=GAUSSIAN_INIT,
                lr_factor=GAUSSIAN_INIT_LR_FACTOR,
            )
        )
        return out

    def analyze(self, ctx: Context[Budget]) -> list[ReportRow]:
        b = ctx.budget
        rows: list[ReportRow] = []
        ab_panels: list[list[dict]] = []
        curve_panels: list[dict] = []
        for law, scales in (("gaussian", b.sigmas), ("sparse", b.cs)):
            panels = []
            for scale in scales:
                new_rows, panel, curve = self._law_rows(ctx, law, scale)
                rows += new_rows
                panels.append(panel)
                curve_panels.append(curve)
            ab_panels.append(panels)
        rows += self._drift_rows(ctx)
        rows.append(
            check(
                "diagonal model = mesa-optimizer (one GD step on the in-context OLS), float64",
                _mesa_check(0.19),
                1e-10,
                note="max |ŷ_model − Ŵ_t x_t| on 64 random sequences, T = 40, ab = 0.19",
            )
        )
        self._figures(ctx, ab_panels, curve_panels)
        return rows

    # ------------------------------------------------------------------ ab and capability
    def _law_rows(self, ctx: Context[Budget], law: str, scale: float):
        b = ctx.budget
        sym = "σ" if law == "gaussian" else "c"
        kw = {"sigma": scale} if law == "gaussian" else {"c": scale}
        moments = x1_moments(law, D, **kw)
        c_star = limit_ab(b.T, D, moments)
        paper = (
            round(PAPER_C_STAR_GAUSSIAN / scale**2, 4)
            if law == "gaussian" and b.T == 100
            else (1 / scale**2 if law == "sparse" else None)
        )
        rows: list[ReportRow] = []
        series: dict[str, tuple[list[float], None]] = {}
        inits = b.inits_at(scale)
        first = ctx.runs[_name(law, scale, *inits[0])]
        opt = _training_optimum(first)  # every init of a scale trains on the same sets
        se_opt = [o.c_opt_se for o in opt]
        c_opts = ", ".join(f"{o.c_opt:.4g} ± {o.c_opt_se:.2g}" for o in opt)
        for a0, b0 in inits:
            res = ctx.runs[_name(law, scale, a0, b0)]
            ab = _ab(res)
            conv, why = _converged(res)
            hist = [m for m in res.metrics if "ab" in m]
            series[f"({a0:g}, {b0:g})"] = ([sum(m["ab"]) / len(m["ab"]) for m in hist], None)
            rerun = law == "gaussian" and scale == 1.0 and (a0, b0) == (0.1, 0.1)
            row = compare(
                f"{law} x_1 ({sym}={scale:g}), init ({a0:g}, {b0:g}): trained ab vs the "
                "population limit c*",
                ab,
                c_star,
                "≈",
                Tolerance(k=3, rel=AB_TOL),
                prompt_se=se_opt,
                paper=paper,
                note=f"all weights trained, {res.config.train.steps} epochs, m = "
                f"{res.config.train.batch_size}; SE: the larger of the seed spread and the "
                f"sampling error of the training-set minimizer c_opt per seed ({c_opts})"
                + ("; the paper's code re-run (m = 10000, 150 epochs): ab 0.195" if rerun else ""),
            )
            rows.append(_and_converged(row, conv, why))
        panel = {
            "title": f"{law}, {sym} = {scale:g}",
            "series": series,
            "lines": {
                "c* (theory)": c_star,
                "c_opt (training sets, mean)": sum(o.c_opt for o in opt) / len(opt),
            },
        }
        conv, why = _converged(first)
        hist = [m for m in first.metrics if "final_ratio" in m]
        if law == "gaussian":
            ratio, ratio_se = _final_ratio(first)
            theory = c_star * moments.kappa2
            se = [math.hypot(r, moments.kappa2 * o.c_opt_se) for r, o in zip(ratio_se, opt)]
            row = compare(
                f"gaussian x_1 (σ={scale:g}): final-step prediction/truth ratio (theory "
                "c*·σ², the same c* as the ab rows)",
                ratio,
                theory,
                "≈",
                Tolerance(k=3, rel=AB_TOL),
                prompt_se=se,
                paper="≈ c*σ² ≈ 0.19–0.2: the sequence is not recovered",
                note=f"init ({inits[0][0]:g}, {inits[0][1]:g}); mean over "
                f"{first.config.train.test_size} test sequences and the coordinates of "
                "Re(ŷ_T,j/x_T+1,j); SE: test-prompt noise ⊕ σ²·SE(c_opt)"
                + ("; the paper's code re-run: 0.185" if scale == 1.0 else ""),
            )
            rows.append(_and_converged(row, conv, why))
            curve = {
                "title": f"ratio, Gaussian σ = {scale:g}",
                "logy": False,
                "series": {"trained": ([_mean(m["final_ratio"]) for m in hist], None)},
                "lines": {"theory c*σ²": theory},
            }
        else:
            rel_mse = _final_relative_mse(first)
            bound = AB_TOL**2
            row = compare(
                f"sparse x_1 (c={scale:g}): final-step MSE / E‖x_T+1‖² (theory 0: the "
                "sequence is recovered)",
                rel_mse,
                0.0,
                "≤",
                Tolerance(k=3, abs=bound),
                paper="→ 0: the sequence is recovered",
                note=f"init ({inits[0][0]:g}, {inits[0][1]:g}); for the diagonal model the "
                f"relative error is (1 − ab·c²)²: the ab tolerance {AB_TOL:.0%} allows "
                f"{bound:.1e}",
            )
            rows.append(_and_converged(row, conv, why))
            curve = {
                "title": f"final-step MSE, sparse c = {scale:g}",
                "logy": True,
                "series": {"trained": ([max(_mean(m["final_mse"]), 1e-12) for m in hist], None)},
            }
        return rows, panel, curve

    # ------------------------------------------------------------------- off-diagonal drift
    def _drift_rows(self, ctx: Context[Budget]) -> list[ReportRow]:
        b = ctx.budget
        k = b.large_m_factor
        m, large = b.sequences, _large_m(b)
        rows: list[ReportRow] = []
        small_run = ctx.runs[_name("gaussian", 1.0, 0.1, 0.1)]
        large_run = ctx.runs[_name("gaussian", 1.0, 0.1, 0.1, large=True)]
        d_small, d_large, ratio = _drift_ratio(small_run, large_run)
        # linear response: at equal flow time (same epochs and lr) the drift is ∝ the
        # training-set noise, 1/√m, whether or not it has stopped growing; ab must have settled
        converged, both = _all_converged([small_run, large_run], ("ab",))
        row = compare(
            f"Gaussian x_1 (σ=1), diagonal init, all weights trained: off-diagonal drift at "
            f"m = {large} / at m = {m} (theory 1/√{k}: finite-sample noise; the population flow "
            "keeps the diagonal form)",
            ratio,
            1 / math.sqrt(k),
            "≈",
            Tolerance(k=3, rel=0.2),
            paper="the flow keeps the diagonal form (drift 0); the paper's code re-run at "
            "m = 10000: drift ≈ 0.08",
            note=f"drift ‖W − Π(W)‖/‖Π(W)‖ (Π: the mesa form a·I, b·I) per seed: m = {m}: "
            f"{_fmt(d_small)}; m = {large}: {_fmt(d_large)}; optimization tolerance 20% (the "
            "drift responds non-linearly to the noise at the smaller m)",
        )
        rows.append(_and_converged(row, converged, both))
        # finite m also biases ab above its training set's c_opt (the off-diagonal part helps
        # fit that set): the gap must shrink with m at least as fast as the drift
        gaps = []
        for res in (small_run, large_run):
            opt = _training_optimum(res)
            gaps.append([a - o.c_opt for a, o in zip(_ab(res), opt)])
        shrink = [g2 / g1 if g1 != 0 else math.nan for g1, g2 in zip(*gaps)]
        row = compare(
            f"Gaussian x_1 (σ=1): gap ab − c_opt (trained ab vs the minimizer of its own "
            f"training set's loss, diagonal model) at m = {large} / at m = {m} (theory: a "
            f"finite-m effect, ≤ 1/√{k})",
            shrink,
            1 / math.sqrt(k),
            "≤",
            Tolerance(k=3),
            paper=None,
            note=f"gap per seed: m = {m}: {_fmt(gaps[0])}; m = {large}: {_fmt(gaps[1])} "
            "(c_opt: the diagonal model's exact minimizer on the seed's training set)",
        )
        rows.append(_and_converged(row, converged, both))
        ones = ctx.runs[_name("ones", 1.0, 0.1, 0.1)]
        ones_large = ctx.runs[_name("ones", 1.0, 0.1, 0.1, large=True)]
        o_small, o_large, o_ratio = _drift_ratio(ones, ones_large)
        conv_ones, why_ones = _all_converged([ones, ones_large], ("ab",))
        row = compare(
            f"all-ones x_1, diagonal init: off-diagonal drift at m = {large} / at m = {m} "
            f"(theory: a population effect, ratio 1, against 1/√{k} for sampling noise)",
            o_ratio,
            1.0,
            "≈",
            Tolerance(k=3, rel=0.2),
            paper="outside the data condition the off-diagonal blocks grow: not vanilla GD",
            note=f"drift per seed: m = {m}: {_fmt(o_small)}; m = {large}: {_fmt(o_large)}; "
            f"ab {_fmt(_ab(ones))} (the diagonal-only optimum is 0.826; the paper's code "
            "re-run: 0.858)",
        )
        rows.append(_and_converged(row, conv_ones, why_ones))
        gauss = ctx.runs[GAUSSIAN_INIT]
        g_drift = off_diagonal_drift(gauss.model)
        conv, why = _all_converged([gauss], ("off_diagonal", "train_loss"))
        floor = _mean(d_small)
        # Refutation: gradient descent (monotone in the loss, checked on the logged trajectory)
        # has brought the training loss below that of the diagonal-init run on the same sets,
        # the best near-diagonal solution the flow finds: it cannot come back up to it, so the
        # weights will not become diagonal, however long the run.
        g_hist = [m["train_loss"] for m in gauss.metrics if m.get("train_loss")]
        d_loss = small_run.metrics[-1].get("train_loss") or []
        g_loss = g_hist[-1] if g_hist else []
        monotone = len(g_hist) >= 2 and all(
            b_ <= a_ * (1 + 1e-6) for x, y in pairwise(g_hist) for a_, b_ in zip(x, y)
        )
        below = bool(g_loss and d_loss) and all(g < d for g, d in zip(g_loss, d_loss))
        evidence = (
            f"the training loss decreased monotonically to {_fmt(g_loss)}, below the "
            f"diagonal-init run's {_fmt(d_loss)} on the same training sets, while the "
            f"off-diagonal drift stays at {_fmt(g_drift)} (diagonal init: {floor:.3g}): "
            "gradient descent cannot climb back to the near-diagonal solution, so wherever the "
            "flow from this initialization ends, it is a better-fitting non-diagonal point"
            if monotone and below
            else None
        )
        g_ratio = [g / f if f > 0 else math.nan for g, f in zip(g_drift, d_small)]
        row = compare(
            f"Gaussian init (std {b.init_std:g}), Gaussian x_1 (σ=1), "
            f"{gauss.config.train.steps} epochs: off-diagonal drift / the diagonal-init run's on "
            "the same training sets (theory: becomes diagonal, ratio ≤ 1 up to finite-m noise)",
            g_ratio,
            1.0,
            "≤",
            Tolerance(k=3, rel=0.5),
            paper="a standard Gaussian initialization still becomes diagonal",
            note=f"drift per seed: Gaussian init {_fmt(g_drift)}, diagonal init {_fmt(d_small)}; "
            f"ab {_fmt(_ab(gauss))}; lr {gauss.config.train.lr:g} ({GAUSSIAN_INIT_LR_FACTOR:g}× "
            "the paper's, a longer flow time); optimization tolerance 50%: the two runs stop at "
            "different finite-m minimizers",
            evidence=evidence,
        )
        rows.append(
            _and_converged(
                row,
                conv or evidence is not None,
                f"{why}; training loss {_fmt(g_loss or [])} vs the diagonal init's {_fmt(d_loss or [])}",
            )
        )
        self._heatmaps(ctx, ones, gauss)
        self._drift_figure(
            ctx,
            {
                f"Gaussian σ=1, m = {m}": small_run,
                f"Gaussian σ=1, m = {large}": large_run,
                f"all-ones, m = {m}": ones,
                f"all-ones, m = {large}": ones_large,
                f"Gaussian init, m = {m}": gauss,
            },
        )
        return rows

    # ------------------------------------------------------------------------ figures
    def _figures(self, ctx: Context[Budget], ab_panels, curve_panels) -> None:
        """ab vs epoch (Gaussian and sparse grids), ratio and MSE vs epoch; skipped for
        untrained runs (no trajectories)."""
        b = ctx.budget
        figs, links = ctx.figures, []
        for law, scales, panels in (
            ("gaussian", b.sigmas, ab_panels[0]),
            ("sparse", b.cs, ab_panels[1]),
        ):
            ref = ctx.runs[_name(law, scales[0], *b.inits[0])]
            steps = [m["step"] for m in ref.metrics if "ab" in m]
            lengths = {len(s[0]) for p in panels for s in p["series"].values()}
            curves = [p for p in curve_panels if p["logy"] == (law == "sparse")]
            lengths |= {len(p["series"]["trained"][0]) for p in curves}
            if len(steps) < 2 or lengths != {len(steps)}:
                continue
            figures.loss_grid(
                steps, [panels, curves], figs / f"{law}_vs_epoch.png", xlabel="epoch",
                logy=law == "sparse", ylabel="ab / ratio" if law == "gaussian" else "ab / MSE",
                suptitle=f"{law} x_1: ab (three inits; all weights trained) and "
                + ("the final-step prediction/truth ratio" if law == "gaussian" else "the final-step MSE"),
            )  # fmt: skip
            links.append(f"![](figures/{law}_vs_epoch.png)")
        if links:
            ctx.sections.append("## ab, ratio and MSE vs epoch\n\n" + "\n".join(links))

    def _drift_figure(self, ctx: Context[Budget], runs: dict[str, TrainResult]) -> None:
        """Off-diagonal drift vs epoch (mean over seeds, log scale) of the drift runs."""
        import matplotlib.pyplot as plt

        curves = {}
        for label, res in runs.items():
            hist = [m for m in res.metrics if m.get("off_diagonal")]
            if len(hist) >= 2:
                curves[label] = (
                    [m["step"] for m in hist],
                    [_mean(m["off_diagonal"]) for m in hist],
                )
        if not curves:
            return
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, (x, y) in curves.items():
            ax.plot(x, [max(v, 1e-12) for v in y], marker="o", ms=3, label=label)
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("‖W − Π(W)‖ / ‖Π(W)‖")
        ax.set_title("off-diagonal drift (mean over seeds)")
        ax.legend(fontsize=7)
        figures.save_figure(fig, ctx.figures / "drift_vs_epoch.png")
        ctx.sections.append("## Off-diagonal drift vs epoch\n\n![](figures/drift_vs_epoch.png)")

    def _heatmaps(self, ctx: Context[Budget], ones: TrainResult, gauss: TrainResult) -> None:
        for res, tag in ((ones, "ones"), (gauss, "gaussian_init")):
            kq, pv = (w.detach()[0].abs().double().cpu() for w in res.model.projected_weights())
            figures.matrix_heatmaps(
                [kq, pv], ["|W^KQ| (seed 0)", "|W^PV| (seed 0)"],
                ctx.figures / f"{tag}_weights.png", suptitle=f"{res.config.name}: learned weights",
            )  # fmt: skip
        ctx.sections.append(
            "## Outside the data condition, and a non-diagonal start\n\n"
            "![](figures/ones_weights.png)\n![](figures/gaussian_init_weights.png)"
        )


EXPERIMENT = Zheng2024()

__all__ = [
    "EXPERIMENT",
    "FULL",
    "INITS",
    "LEARNING_RATES",
    "QUICK",
    "Budget",
    "Zheng2024",
    "off_diagonal_drift",
]
