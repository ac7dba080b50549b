"""``iclab reproduce ding2025``: Ding, Lu, Lu, Nowicki & Gao (NeurIPS 2025), science.md §3.

(a) accuracy (prediction rounded to a state) of L-layer LSA vs L = 1..3 for |S| ∈ {2, 3, 4},
    with the Bayes predictor (posterior mode) as the ceiling;
(b) one layer, sparse (b, A) vs dense parametrization, loss curves with the closed-form floor
    f̃(X*) (d = 1);
(c) d = 1..10: one trained sparse layer vs the Monte Carlo reparametrized optimum f̃(X*), the gap
    vs d, and the d = 2 non-realizability certificate;
(d) softmax transformers vs classic baselines and the Bayes predictor, accuracy vs the number of
    in-context chains (:mod:`iclab.experiments.ding2025_transformers`);
(e) attention vs sequence similarity on prompts that mix kernels (same module);
(f) the multi-layer reading: each layer of a trained label_row LSA as a preconditioned gradient
    step on the square loss plus a linear term, plus a rank-one step on a cubic
    (:mod:`iclab.theory.markov_multilayer`), verified on the trained model, objectives per layer.

Runs go to ``OUT/runs`` (resumable), figures to ``OUT/figures``; ``report.md`` / ``report.json``
follow the contract of every reproduction.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from iclab.analysis import ReportRow, figures, mean_std
from iclab.analysis.report import report_row, runs_table, write_report
from iclab.config import load_config
from iclab.tasks.markov_chain import MarkovChainTask
from iclab.theory.markov_bayes import markov_bayes
from iclab.theory.markov_multilayer import label_row_reading
from iclab.theory.markov_one_layer import (
    global_gap_bounds,
    non_realizability_certificate,
    one_layer_optimum_d1,
    one_layer_optimum_exact,
    optimum_monte_carlo,
    realizable_d1,
    recover_parameters,
)
from iclab.training import TrainResult, train

THEORY_N = 10  # context chains of the exact realizability checks (part c)
TITLE = "Ding et al. (2025): optimality and NP-hardness of transformers on Markov chains"


@dataclass(frozen=True)
class Budget:
    """Steps, batch and Monte Carlo sizes; ``quick`` fits the reproduction in ~10 CPU minutes."""

    seeds: int
    states: tuple[int, ...]
    layers: tuple[int, ...]
    accuracy: tuple[str, ...]  # overrides for part (a)
    one_layer: tuple[str, ...]  # overrides for part (b)
    dims: tuple[int, ...]
    dimension: tuple[str, ...]  # overrides for part (c)
    mc_prompts: int  # Monte Carlo prompts per member for X* (part c); scaled up with d·m
    multilayer: tuple[str, ...] = ()  # overrides for part (f)
    transformers: str | None = None  # "quick" / "full" budget of parts (d), (e); None skips them
    extra: tuple[str, ...] = field(default_factory=tuple)


QUICK = Budget(
    seeds=3,
    states=(2, 3, 4),
    layers=(1, 2, 3),
    accuracy=("train.steps=300", "train.batch_size=1000", "train.test_size=5000",
              "train.eval_every=100", "train.schedule.warmup_steps=20"),
    one_layer=("train.steps=600", "train.test_size=50000"),
    dims=(1, 2, 3, 4, 6, 8, 10),
    dimension=("train.steps=300", "train.eval_every=100", "train.test_size=5000"),
    mc_prompts=20000,
    multilayer=("train.steps=400", "train.batch_size=1000", "train.test_size=4000",
                "train.eval_every=100", "train.schedule.warmup_steps=20"),
    transformers="quick",
)  # fmt: skip
FULL = Budget(
    seeds=5,
    states=(2, 3, 4),
    layers=(1, 2, 3),
    accuracy=(),
    one_layer=(),
    dims=tuple(range(1, 11)),
    dimension=(),
    mc_prompts=100000,
    transformers="full",
)


def _train(preset: str, name: str, overrides, out: Path, device: str, progress: bool):
    cfg = load_config(preset, [f"name={name}", f"device={device}", *overrides])
    return train(cfg, out / "runs" / name, progress=progress)


class BayesLedger:
    """Every trained model's squared error against the Bayes predictor's on the same prompts.

    The Bayes posterior mean minimizes the expected squared error, so no model may beat it
    beyond noise: :meth:`row` checks the paired difference of every recorded run (z > −3).
    """

    def __init__(self) -> None:
        self.entries: list[tuple[str, float, float]] = []  # (run, mean difference, its SE)

    def record(self, name: str, pred: torch.Tensor, test) -> None:
        bayes = markov_bayes(test).mean
        y = test.y_query.double()
        diff = (pred.detach().double() - y).pow(2) - (bayes - y).pow(2)  # (E, B), per prompt
        flat = diff.flatten()
        self.entries.append((name, float(flat.mean()), float(flat.std() / math.sqrt(flat.numel()))))

    def row(self) -> ReportRow:
        worst = min(self.entries, key=lambda e: e[1] / max(e[2], 1e-300))
        z = [e[1] / max(e[2], 1e-300) for e in self.entries]
        return report_row(
            f"no trained LSA beats the Bayes predictor's squared error ({len(self.entries)} runs)",
            0.0,
            [e[1] for e in self.entries],
            min(z) > -3,
            f"trained − Bayes squared error on the same prompts, mean over runs; the closest run "
            f"is {worst[0]} ({worst[1]:+.4f} ± {worst[2]:.4f}); pass: every z > −3",
        )


@torch.no_grad()
def _evaluate(
    res: TrainResult, ledger: BayesLedger | None = None
) -> tuple[torch.Tensor, torch.Tensor, object]:
    """Per-seed accuracy and squared error of the trained model on its own test prompts (the
    stream ``(seed, "test", 0)``), and those prompts in float64; records the run in ``ledger``."""
    test = res.task.sample(res.config.train.test_size, "test", 0)
    pred = res.model(test.x, test.y, test.x_query).double()
    S = res.task.config.states
    acc = (pred.round().clamp(0, S - 1) == test.y_query.double()).double().mean(-1)
    mse = (pred - test.y_query.double()).pow(2).mean(-1)
    test = test.to(torch.float64)
    if ledger is not None:
        ledger.record(res.config.name, pred, test)
    return acc, mse, test


def _part_a(
    out: Path, budget: Budget, device: str, progress: bool, base: list[str], ledger: BayesLedger
):
    rows: list[ReportRow] = []
    panels = []
    for S in budget.states:
        accs, bayes_acc = {}, None
        for L in budget.layers:
            res = _train(
                "ding2025_markov_lsa", f"accuracy_S{S}_L{L}",
                [*base, f"task.states={S}", f"model.layers={L}", *budget.accuracy],
                out, device, progress,
            )  # fmt: skip
            acc, _, test = _evaluate(res, ledger)
            accs[L] = acc.tolist()
            if bayes_acc is None:
                bay = markov_bayes(test)
                bayes_acc = (bay.mode == test.y_query.long()).double().mean(-1)  # (E,)
        b_mean = float(bayes_acc.mean())
        n_test = test.y_query.shape[-1]
        se = math.sqrt(max(b_mean * (1 - b_mean), 1e-12) / n_test)
        first, last = budget.layers[0], budget.layers[-1]
        a_first, a_last = mean_std(accs[first])[0], mean_std(accs[last])[0]
        paper = " (paper, |S|=3: ≈0.55 at L=1 → 0.98 at L=3)" if S == 3 else ""
        rows.append(
            report_row(
                f"(a) |S|={S}: accuracy of {last}-layer LSA (theory: Bayes accuracy)",
                b_mean,
                accs[last],
                a_last > a_first and max(accs[last]) <= b_mean + 3 * se,
                f"L={first}: {a_first:.3f} → L={last}: {a_last:.3f}; Bayes {b_mean:.3f}{paper}; "
                "pass: rises with L and never beats Bayes (+3 SE)",
            )
        )
        panels.append(
            {
                "title": f"|S| = {S}",
                "series": {
                    "trained LSA": (
                        [mean_std(accs[L])[0] for L in budget.layers],
                        [mean_std(accs[L])[1] for L in budget.layers],
                    )
                },
                "lines": {"Bayes (posterior mode)": b_mean},
            }
        )
    figures.loss_grid(
        budget.layers, [panels], out / "figures" / "accuracy_vs_layers.png", xlabel="layers L",
        logy=False, ylabel="accuracy", suptitle="(a) next-state accuracy vs depth",
    )  # fmt: skip
    return rows, ["## (a) Accuracy vs depth\n\n![](figures/accuracy_vs_layers.png)"]


def _part_b(
    out: Path, budget: Budget, device: str, progress: bool, base: list[str], ledger: BayesLedger
):
    rows: list[ReportRow] = []
    curves = {}
    floor = None
    for form in ("sparse", "dense"):
        res = _train(
            f"ding2025_one_layer_{form}", f"one_layer_{form}", [*base, *budget.one_layer],
            out, device, progress,
        )  # fmt: skip
        cfg = res.task.config
        if floor is None:
            floor = one_layer_optimum_d1(cfg.initial_prob, cfg.n).loss_star
        _, mse, test = _evaluate(res, ledger)
        # the squared error has variance ≤ E[e⁴]; its SE on this test set
        n_test = test.y_query.shape[-1]
        rel = [(v - floor) / floor for v in mse.tolist()]
        rows.append(
            report_row(
                f"(b) one layer, {form} form, d=1: test loss (theory: closed-form f̃(X*))",
                floor,
                mse.tolist(),
                max(abs(r) for r in rel) <= 0.02,
                f"max |loss − f̃(X*)|/f̃(X*) = {max(abs(r) for r in rel):.2%} on {n_test} "
                "test prompts per seed; pass ≤ 2%",
            )
        )
        curves[f"{form} (b, A)" if form == "sparse" else "dense (P, Q)"] = res.metrics
    figures.loss_curves(
        curves, out / "figures" / "one_layer_sparse_vs_dense.png",
        theory={"f̃(X*) (closed form)": floor}, title="(b) one layer, d = 1",
    )  # fmt: skip
    return rows, ["## (b) Sparse vs dense one layer\n\n![](figures/one_layer_sparse_vs_dense.png)"]


def _realizability(p: float, n: int, d: int) -> tuple[list[ReportRow], str]:
    """Theory rows on the exact X* (quadrature): d = 1 realizes it; d = 2 gets a certified gap."""
    opt = one_layer_optimum_exact(p, n, d)
    if d == 1:
        rec = recover_parameters(opt.X_star, d, H=opt.H)
        row = report_row(
            f"(c) d=1, n={n}: X* realized by recovered (b, A) (theory: residual 0)",
            0.0,
            [rec.residual],
            bool(realizable_d1(opt.X_star)) and rec.residual < 1e-8,
            f"X₂² − 4X₁X₃ = {float(opt.X_star[1] ** 2 - 4 * opt.X_star[0] * opt.X_star[2]):.4f} "
            "≥ 0; pass: ‖φ(b, A) − X*‖ < 1e-8",
        )
        return [
            row
        ], f"d = 1: X* = {opt.X_star.tolist()} is realizable (residual {rec.residual:.1e}). "
    cert = non_realizability_certificate(opt.X_star, d, opt.H)
    rec = recover_parameters(opt.X_star, d, H=opt.H, minimize="loss")
    bounds = global_gap_bounds(opt.X_star, d, opt.H, metric="loss", rel_tol=0.02)
    row = report_row(
        f"(c) d=2, n={n}: certified loss gap of the best one-layer LSA over f̃(X*) (theory: > 0)",
        bounds.lower,
        [rec.loss_gap],
        cert.fires and bounds.lower > 0 and bounds.lower <= rec.loss_gap + 1e-12,
        f"certified bracket [{bounds.lower:.5f}, {bounds.upper:.5f}] (branch and bound); per-column "
        f"certificate fires: {cert.fires}; ALS finds {rec.loss_gap:.5f}",
    )
    text = (
        f"d = 2: the exact X* (quadrature) is not realizable — the column matrices have "
        f"eigenvalues {[[round(v, 3) for v in r] for r in cert.eigenvalues.tolist()]} (a column "
        "sym(b aᵀ) has at most one eigenvalue of each sign); every one-layer LSA loses between "
        f"{bounds.lower:.5f} and {bounds.upper:.5f} in loss relative to f̃(X*) = {opt.loss_star:.5f}."
    )
    return [row], text


def _part_c(
    out: Path, budget: Budget, device: str, progress: bool, base: list[str], ledger: BayesLedger
):
    rows: list[ReportRow] = []
    trained, optimum, optimum_se, gaps = [], [], [], []
    cert_text = ""
    for d in budget.dims:
        res = _train(
            "ding2025_dimension", f"dimension_d{d}", [*base, f"task.d={d}", *budget.dimension],
            out, device, progress,
        )  # fmt: skip
        _, mse, _ = _evaluate(res, ledger)
        cfg = res.task.config
        m = (d + 1) * (d + 2) // 2
        mc_task = MarkovChainTask(cfg, [10_000 + d], device=res.task.device, dtype=torch.float64)
        prompts = max(budget.mc_prompts, 20 * d * m)
        opt = optimum_monte_carlo(mc_task, prompts, batch=min(prompts, 20000))
        trained.append(mean_std(mse.tolist()))
        optimum.append(opt.loss_star)
        optimum_se.append(opt.loss_star_se)
        gaps.append([v - opt.loss_star for v in mse.tolist()])
        tol = 3 * math.hypot(opt.loss_star_se, mean_std(mse.tolist())[1] / math.sqrt(len(mse)))
        rows.append(
            report_row(
                f"(c) d={d}: one trained sparse layer vs f̃(X*) (theory, Monte Carlo)",
                opt.loss_star,
                mse.tolist(),
                min(mse.tolist()) >= opt.loss_star - tol,
                f"gap {mean_std(gaps[-1])[0]:+.4f}; f̃(X*) ± {opt.loss_star_se:.1e} (SE, "
                f"{opt.fresh_prompts} fresh prompts); pass: f̃(X*) lower-bounds the LSA",
            )
        )
        if d in (1, 2):  # on the exact X* at n = 10 (quadrature; n = 100 takes ~1 min more)
            rows_d, text = _realizability(cfg.initial_prob, THEORY_N, d)
            rows += rows_d
            cert_text += text
    g_first, g_last = mean_std(gaps[0])[0], mean_std(gaps[-1])[0]
    rows.append(
        report_row(
            f"(c) gap to f̃(X*) at d={budget.dims[-1]} vs d={budget.dims[0]} (paper: grows with d)",
            None,
            gaps[-1],
            g_last > g_first,
            f"gap d={budget.dims[0]}: {g_first:+.4f}, d={budget.dims[-1]}: {g_last:+.4f}",
        )
    )
    figures.loss_versus(
        list(budget.dims),
        {
            "trained sparse LSA": ([t[0] for t in trained], [t[1] for t in trained]),
            "f̃(X*) (Monte Carlo)": (optimum, optimum_se),
        },
        out / "figures" / "loss_vs_dimension.png",
        xlabel="chain length − 1 (d)",
        title="(c) one layer vs the reparametrized optimum",
        logy=False,
    )
    section = "## (c) Loss vs d\n\n![](figures/loss_vs_dimension.png)"
    if cert_text:
        section += "\n\n" + cert_text
    return rows, [section]


def _part_f(
    out: Path, budget: Budget, device: str, progress: bool, base: list[str], ledger: BayesLedger
):
    res = _train(
        "ding2025_multilayer", "multilayer", [*base, *budget.multilayer], out, device, progress
    )
    test = res.task.sample(res.config.train.test_size, "test", 0).to(torch.float64)
    model = copy.deepcopy(res.model).to(torch.float64)
    rd = label_row_reading(model.value_row, model.query_columns, test.x, test.y, test.x_query)
    with torch.no_grad():
        pred = model(test.x, test.y, test.x_query)
    ledger.record(res.config.name, pred, test)
    err = (pred - rd.prediction[..., -1]).abs().amax(-1)  # (E,)
    L = res.config.model.layers
    rows = [
        report_row(
            f"(f) weight recursion w_ℓ+1 = w_ℓ − Γ∇R + c + 2R·γα reproduces the trained {L}-layer "
            "LSA (theory: 0)",
            0.0,
            err.tolist(),
            float(err.max()) < 1e-9,
            "max |model − recursion| over test prompts (float64); pass < 1e-9",
        )
    ]
    eig = torch.linalg.eigvals(rd.preconditioner).real  # (E, L, d)
    descent = (rd.objective_1[..., 1] < rd.objective_1[..., 0]).double().mean(1)  # (E, L)
    rows.append(
        report_row(
            "(f) layer preconditioners Γ_ℓ are positive semi-definite (a descent reading)",
            None,
            eig.amin((-1, -2)).tolist(),
            bool((eig >= -1e-6).all()),
            f"eigenvalues of Γ_ℓ in [{float(eig.min()):.3g}, {float(eig.max()):.3g}]; share of "
            f"prompts whose J₁ decreases, per layer: "
            f"{[round(v, 2) for v in descent.mean(0).tolist()]}",
        )
    )
    layers = list(range(L + 1))
    icl = ((rd.prediction - test.y_query.unsqueeze(-1)) ** 2).mean(1)  # (E, L+1)

    def ms(t: torch.Tensor) -> tuple[list[float], list[float]]:  # (E, K) -> mean, std over E
        return t.mean(0).tolist(), (t.std(0) if t.shape[0] > 1 else 0 * t[0]).tolist()

    steps = list(range(1, L + 1))
    panels = [[
        {"title": "query prediction x_qᵀw_ℓ", "series": {"test loss": ms(icl),
                                                         "square loss R(w_ℓ)": ms(rd.square_loss.mean(1))}},
        {"title": "layer ℓ's own objectives, before → after its step",
         "series": {"J₁ before": ms(rd.objective_1[..., 0].mean(1)),
                    "J₁ after": ms(rd.objective_1[..., 1].mean(1)),
                    "cubic J₂ before": ms(rd.objective_2[..., 0].mean(1)),
                    "cubic J₂ after": ms(rd.objective_2[..., 1].mean(1))}},
        {"title": "size of each term of the step",
         "series": {"−Γ∇R": ms(rd.gradient_term.norm(dim=-1).mean(1)),
                    "linear c": ms(rd.linear_term.norm(dim=-1).mean(1)),
                    "cubic 2Rγα": ms(rd.cubic_term.norm(dim=-1).mean(1))}},
    ]]  # fmt: skip
    # the first panel is indexed by ℓ = 0..L, the others by layer 1..L: two figures
    figures.loss_grid(
        layers, [panels[0][:1]], out / "figures" / "multilayer_prediction.png",
        xlabel="layers applied ℓ", logy=False, ylabel="value",
        suptitle="(f) the in-context predictor after each layer",
    )  # fmt: skip
    figures.loss_grid(
        steps, [panels[0][1:]], out / "figures" / "multilayer_objectives.png",
        xlabel="layer ℓ", logy=False, ylabel="value",
        suptitle="(f) each layer as preconditioned gradient steps (mean ± std over seeds)",
    )  # fmt: skip
    text = (
        "## (f) Multi-layer reading\n\nEvery layer of a label_row LSA moves all label slots by "
        "x_mᵀv_ℓ, so the query's prediction after ℓ layers is x_qᵀw_ℓ with "
        "w_ℓ+1 = w_ℓ − Γ_ℓ∇R(w_ℓ) + c_ℓ + 2R(w_ℓ)Σ_h γ_h α_h (derivation and proofs in "
        "`iclab.theory.markov_multilayer`): a preconditioned gradient step on the square loss "
        "plus a linear term, J₁ = R + pᵀw, and a rank-one preconditioned step on a cubic J₂. "
        "The paper's single 'cubic penalty' holds only with its own rank-one preconditioner; "
        "the trained preconditioners need not be positive semi-definite (row above).\n\n"
        "![](figures/multilayer_prediction.png)\n![](figures/multilayer_objectives.png)"
    )
    return rows, [text]


def reproduce_ding2025(
    out: Path,
    *,
    quick: bool = False,
    device: str = "auto",
    progress: bool = True,
    budget: Budget | None = None,
) -> list[ReportRow]:
    budget = budget or (QUICK if quick else FULL)
    out.mkdir(parents=True, exist_ok=True)
    base = [f"n_seeds={budget.seeds}", *budget.extra]
    rows: list[ReportRow] = []
    sections: list[str] = []
    ledger = BayesLedger()
    for part in (_part_a, _part_b, _part_c, _part_f):
        r, s = part(out, budget, device, progress, base, ledger)
        rows += r
        sections += s
    rows.append(ledger.row())
    if budget.transformers is not None:
        from iclab.experiments import ding2025_transformers as dt

        tb = {"quick": dt.QUICK, "full": dt.FULL}[budget.transformers]
        for part in (dt.part_d, dt.part_e):
            r, s = part(out, tb, device, progress)
            rows += r
            sections += s
    quick_note = (
        "Quick budget: fewer steps, seeds and dimensions than the presets; rows that need "
        "converged training can fail here and pass with `iclab reproduce ding2025 --out DIR`."
    )
    sections.append(runs_table(out / "runs", quick_note if quick else ""))
    write_report(out, TITLE + (" (quick)" if quick else ""), rows, sections)
    return rows


__all__ = ["FULL", "QUICK", "Budget", "reproduce_ding2025"]
