"""``iclab reproduce ahn2023``: Ahn, Cheng, Daneshmand & Sra (NeurIPS 2023), science.md §1.

Five parts, each a set of runs in ``OUT/runs/`` (resumable) plus figures in ``OUT/figures/``:

0. one layer (Theorem 1): full LSA on Σ = I and on a rotated Σ; learned A vs A*, loss vs f*.
1. Σ = I, L = 3, PGD form: A_ℓ, B_ℓ become multiples of I (distance to identity).
2. rotated Σ, L = 3: Σ^{1/2} A_ℓ Σ^{1/2} and B_ℓ become multiples of I; final test loss vs the
   best loss inside the theorem's class (Theorems 3–4).
3. loss vs L = 1..4: trained LSA, L-step GD and L-step Σ⁻¹-preconditioned GD (steps tuned on
   held-out prompts), and the best PGD-class loss.
4. loss vs n: 3-layer LSA, 3-step GD, 3-step PGD, OLS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from iclab.algorithms import ols, preconditioned_gd, tune_gd_step_sizes
from iclab.analysis import (
    ReportRow,
    distance_to_identity,
    figures,
    mean_std,
    relative_error,
    whiten,
)
from iclab.analysis.report import report_row, runs_table, write_report
from iclab.config import load_config
from iclab.theory import best_pgd_scalars, optimal_one_layer_loss, preconditioner_optimum
from iclab.training import TrainResult, train

TITLE = "Ahn et al. (2023): transformers learn to implement preconditioned gradient descent"


# Sweeps over L and n use Adam with per-matrix clipping at a small learning rate: for small n and
# large L the per-prompt loss is heavy-tailed (GD++ is a high-degree polynomial of the sample
# covariance), and Shampoo's larger effective steps were unstable there.
SWEEP = ["train.optimizer=adam", "train.lr=0.005", "train.betas=[0.9, 0.999]"]


@dataclass(frozen=True)
class Budget:
    """Steps and batch sizes; ``quick`` fits the whole reproduction in ~10 CPU minutes."""

    seeds: int
    one_layer: list[str]
    deep: list[str]
    sweep: list[str]
    layers: tuple[int, ...]
    ns: tuple[int, ...]
    test_size: int
    extra: tuple[str, ...] = ()  # overrides applied to every run (e.g. tiny budgets in tests)


QUICK = Budget(
    seeds=3,
    one_layer=["train.test_size=20000"],
    deep=["train.steps=5000", "train.batch_size=10000", "train.test_size=20000"],
    sweep=[*SWEEP, "train.steps=1500", "train.batch_size=4000", "train.test_size=10000"],
    layers=(1, 2, 3, 4),
    ns=(6, 10, 20),
    test_size=10000,
)
FULL = Budget(
    seeds=5,
    one_layer=[],
    deep=[],
    sweep=[*SWEEP, "train.steps=6000", "train.batch_size=10000"],
    layers=(1, 2, 3, 4),
    ns=(4, 6, 8, 10, 12, 14, 16, 18, 20),
    test_size=20000,
)


def _train(
    preset: str, name: str, overrides: list[str], out: Path, device: str, progress: bool
) -> TrainResult:
    cfg = load_config(preset, [f"name={name}", f"device={device}", *overrides])
    return train(cfg, out / "runs" / name, progress=progress)


def _per_seed_test_loss(res: TrainResult) -> list[float]:
    return res.metrics[-1]["test_loss"]


def _baselines(res: TrainResult, layers: int, test_size: int) -> dict[str, list[float]]:
    """Tuned L-step GD / Σ⁻¹-PGD and OLS on the run's own test prompts (per seed)."""
    task = res.task
    f64 = torch.float64
    tune = task.sample(test_size, "tune", 0).to(f64)
    test = task.sample(res.config.train.test_size, "test", 0).to(f64)
    prec = torch.linalg.inv(task.covariance.to(test.x.device, f64))  # (E, d, d)
    out: dict[str, list[float]] = {}
    for label, pre in (("GD", None), ("PGD (Σ⁻¹)", prec)):
        tuned = tune_gd_step_sizes(
            tune.x, tune.y, tune.x_query, tune.y_query, layers, preconditioner=pre
        )
        pred = preconditioned_gd(test.x, test.y, test.x_query, tuned.step_sizes, preconditioner=pre)
        out[label] = (pred.prediction - test.y_query).pow(2).mean(-1).tolist()
    pred = ols(test.x, test.y, test.x_query)
    out["OLS"] = (pred.prediction - test.y_query).pow(2).mean(-1).tolist()
    return out


def reproduce_ahn2023(
    out: Path,
    *,
    quick: bool = False,
    device: str = "auto",
    progress: bool = True,
    budget: Budget | None = None,
) -> list[ReportRow]:
    budget = budget or (QUICK if quick else FULL)
    out.mkdir(parents=True, exist_ok=True)
    figs = out / "figures"
    seeds = [f"n_seeds={budget.seeds}", *budget.extra]
    rows: list[ReportRow] = []
    sections: list[str] = []

    # ---------------------------------------------------------------- 0. one layer, Theorem 1
    curves = {}
    for cov in ("identity", "rotated"):
        res = _train(
            f"ahn2023_one_layer_{cov}",
            f"one_layer_{cov}",
            seeds + budget.one_layer,
            out,
            device,
            progress,
        )
        task = res.task
        n, sigma = task.config.n, task.config.noise_std
        a_star = preconditioner_optimum(
            task.covariance, task.weight_covariance, n, sigma
        )  # (E,d,d)
        f_star = optimal_one_layer_loss(task.covariance, task.weight_covariance, n, sigma)
        learned = res.model.preconditioners().detach()[:, 0, 0].double().cpu()
        err = relative_error(learned, a_star).tolist()
        loss = _per_seed_test_loss(res)
        f_mean = float(torch.as_tensor(f_star).mean())
        rel = [
            abs(v - fs) / fs
            for v, fs in zip(loss, torch.as_tensor(f_star).expand(len(loss)).tolist())
        ]
        rows.append(
            report_row(
                f"1-layer test loss, Σ={cov} (theory f*)",
                f_mean,
                loss,
                max(rel) < 0.05,
                f"max relative gap {max(rel):.2%} (pass < 5%)",
            )
        )
        rows.append(
            report_row(
                f"1-layer ‖A − A*‖_F/‖A*‖_F, Σ={cov}", 0.0, err, max(err) < 0.05, "pass < 5%"
            )
        )
        figures.matrix_heatmaps(
            [learned[0], a_star[0], learned[0] - a_star[0]],
            ["learned A (seed 0)", "A* (Theorem 1)", "difference"],
            figs / f"one_layer_{cov}_A.png",
            suptitle=f"one layer, Σ = {cov}",
        )
        curves[f"1 layer, Σ={cov}"] = res.metrics
    figures.loss_curves(curves, figs / "one_layer_loss.png", title="one-layer LSA vs Theorem 1")
    sections.append(
        "## One layer (Theorem 1)\n\n![](figures/one_layer_identity_A.png)\n"
        "![](figures/one_layer_rotated_A.png)\n![](figures/one_layer_loss.png)"
    )

    # ---------------------------------------------------------------- 1-2. three layers
    deep = {}
    for cov in ("identity", "rotated"):
        res = _train(f"ahn2023_{cov}_L3", f"{cov}_L3", seeds + budget.deep, out, device, progress)
        deep[cov] = res
        A = res.model.preconditioners().detach()[:, :, 0].double().cpu()  # (E, L, d, d)
        B = res.model.covariate_transforms().detach()[:, :, 0].double().cpu()
        cov_t = res.task.covariance[:, None]  # (E, 1, d, d)
        A_w = whiten(A, cov_t) if cov == "rotated" else A
        L = A.shape[1]
        # B of the last layer never reaches the prediction (zero gradient): leave it out.
        dist = torch.cat([distance_to_identity(A_w), distance_to_identity(B[:, : L - 1])], dim=1)
        worst = dist.max(dim=1).values.tolist()
        label = "Σ^{1/2}A_ℓΣ^{1/2}, B_ℓ" if cov == "rotated" else "A_ℓ, B_ℓ"
        rows.append(
            report_row(
                f"max distance to identity of {label} (Σ={cov}, L=3)",
                0.0,
                worst,
                max(worst) < 0.05,
                "‖M − (tr M/d)I‖_F/‖M‖_F, B_L excluded; pass < 0.05",
            )
        )
        theory = best_pgd_scalars(
            L, res.task.config.d, res.task.config.n, res.task.config.noise_std
        )
        loss = _per_seed_test_loss(res)
        ok = mean_std(loss)[0] <= 1.5 * theory.loss
        rows.append(
            report_row(
                f"3-layer test loss, Σ={cov} (theory: best PGD-class loss)",
                theory.loss,
                loss,
                ok,
                f"pass ≤ 1.5× theory; theory ± {theory.standard_error:.1e} (MC)",
            )
        )
        if cov == "rotated":
            logs = [float(torch.log(torch.tensor(v))) for v in loss]
            rows.append(
                report_row(
                    "final log test loss, rotated Σ, L=3",
                    float(torch.log(torch.tensor(theory.loss))),
                    logs,
                    mean_std(logs)[0] <= math.log(1e-3),
                    "paper ≈ −7 after 100k steps; pass ≤ log 1e-3 = −6.91",
                )
            )
        mats = [A_w[0, i] for i in range(L)] + [B[0, i] for i in range(L - 1)]
        titles = [f"{'Σ½AΣ½' if cov == 'rotated' else 'A'} layer {i + 1}" for i in range(L)]
        titles += [f"B layer {i + 1}" for i in range(L - 1)]
        figures.matrix_heatmaps(
            mats,
            titles,
            figs / f"{cov}_L3_matrices.png",
            suptitle=f"3-layer LSA, Σ = {cov} (seed 0)",
        )
        sections.append(f"## Three layers, Σ = {cov}\n\n![](figures/{cov}_L3_matrices.png)")
    figures.loss_curves(
        {f"L=3, Σ={c}": r.metrics for c, r in deep.items()},
        figs / "three_layer_loss.png",
        theory={"best PGD-class loss": best_pgd_scalars(3, 5, 20).loss},
        title="3-layer LSA (PGD form)",
    )
    sections.append("![](figures/three_layer_loss.png)")

    # ---------------------------------------------------------------- 3-4. sweeps over L and n
    def run_at(L: int, n: int) -> TrainResult:
        if (L, n) == (3, 20):
            return deep["rotated"]
        name = f"rotated_L{L}" if n == 20 else f"rotated_L{L}_n{n}"
        over = [*seeds, *budget.sweep, f"model.layers={L}", f"task.n={n}"]
        return _train("ahn2023_rotated_L3", name, over, out, device, progress)

    for label, points, fig, xlabel, title in (
        ("L", [(L, 20) for L in budget.layers], "loss_vs_layers", "layers L", "rotated Σ, n = 20"),
        ("n", [(3, n) for n in budget.ns], "loss_vs_n", "context size n", "rotated Σ, L = 3"),
    ):
        series: dict[str, list[tuple[float, float]]] = {}
        for L, n in points:
            res = run_at(L, n)
            base = _baselines(res, L, budget.test_size)
            lsa = _per_seed_test_loss(res)
            theory = best_pgd_scalars(L, res.task.config.d, n)
            curves = {"trained LSA": lsa, f"{'L' if label == 'L' else L}-step GD (tuned)": base["GD"],
                      f"{'L' if label == 'L' else L}-step PGD Σ⁻¹ (tuned)": base["PGD (Σ⁻¹)"],
                      "OLS": base["OLS"]}  # fmt: skip
            for k, v in curves.items():
                series.setdefault(k, []).append(mean_std(v))
            series.setdefault("best PGD class (theory)", []).append((theory.loss, 0.0))
            gd, pgd, ls = (mean_std(base[k])[0] for k in ("GD", "PGD (Σ⁻¹)", "OLS"))
            rows.append(
                report_row(
                    f"loss vs {label}: L={L}, n={n}, trained LSA (theory: best PGD class)",
                    theory.loss,
                    lsa,
                    mean_std(lsa)[0] <= gd,
                    f"tuned {L}-step GD {gd:.3g}, {L}-step PGD {pgd:.3g}, OLS {ls:.3g}; pass: LSA ≤ GD",
                )
            )
        x = [p[0] if label == "L" else p[1] for p in points]
        series_ms = {
            k: (tuple(m for m, _ in v), tuple(sd for _, sd in v)) for k, v in series.items()
        }
        figures.loss_versus(x, series_ms, figs / f"{fig}.png", xlabel=xlabel, title=title)
        sections.append(f"## Loss vs {xlabel}\n\n![](figures/{fig}.png)")

    quick_note = (
        "Quick budget: shorter runs and smaller batches than the presets. Rows whose thresholds "
        "need converged training (distance to identity, loss vs theory) can fail here and pass "
        "with the full budget (`iclab reproduce ahn2023 --out DIR`)."
    )
    sections.append(runs_table(out / "runs", quick_note if budget is QUICK else ""))
    write_report(out, TITLE + (" (quick)" if quick else ""), rows, sections)
    return rows
