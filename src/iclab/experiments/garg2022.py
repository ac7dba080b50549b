"""``iclab reproduce garg2022``: Garg, Tsipras, Liang & Valiant (NeurIPS 2022).

A GPT-2-style transformer reads prompts as interleaved tokens ``x_1, y_1, …, x_N`` and predicts
``y_k`` at every ``x_k`` from the ``k`` pairs before it
(:mod:`iclab.models.interleaved_transformer`); one model per function class is trained on the
squared error at every prefix length, with the curriculum of the paper (the effective dimension
and the number of examples grow linearly). Each trained model is then evaluated on fresh prompts
of its class (stream ``"garg2022_eval"``), and on the same prompts every baseline of
:mod:`iclab.algorithms.prefix_baselines` is fitted on every prefix. Errors are squared errors
divided by the zero predictor's expected error ``E[y²]`` (d for linear functions and ReLU
networks, the sparsity k for sparse linear functions, 1 for trees), so 1 means "learned
nothing" and the curves of every class share one scale.

The paper's claims and how each is tested (every comparison is paired: the methods see the same
prompts, and a gap is decided at 3 standard errors over prompts and seeds):

- **linear**: the transformer tracks least squares — least squares is exact from k = d on
  (noise-free labels), and the transformer's error, averaged over k ≥ d + 2 (it reaches its
  floor over the first examples after d, as in the paper's curves), is within 3 SE +
  ``TRACK_TOL`` of it; and it beats 3-NN and averaging at every k ≥ 1.
- **sparse linear** (k non-zero weights): it beats least squares at every k < d where the Lasso
  does (by 3 SE: where a learner can gain from the sparsity at all), and is within 3 SE +
  ``LASSO_TOL`` of the Lasso (α tuned on the evaluation prompts per k, an oracle the transformer
  does not have) averaged over k < d, a band narrower than half of least squares' excess over
  the Lasso (so least squares itself fails it).
- **decision trees**: it beats greedy tree learning and gradient boosting at every evaluated k
  from ``tree_from`` on.
- **two-layer ReLU networks**: it is within ``NET_TOL`` of a two-layer network of the generating
  width trained by Adam on each prefix (averaged over k ≥ 1).
- **distribution shifts** (the linear model, not retrained): skewed covariance, a low-rank
  subspace, scaled inputs, scaled outputs, random and opposite quadrants for the query, and a
  query equal to a context point — the transformer's error stays within 3 SE + ``TRACK_TOL`` of
  least squares' under the same shift (for k ≥ d + 2; at the query, k = n, for the shifts that
  change only the query: opposite quadrants and a context point as query). A row that fails while the in-distribution linear row
  passes is ``refuted``: the model learned its training distribution, and the failure is a
  property of what it learned. A query orthogonal to the context is shown in the figure only:
  there every predictor that ignores the context (an untrained model too) is optimal, so it
  cannot test anything.
- ``check`` rows: the transformer's prediction at every position equals a forward pass on the
  prompt cut after that position (causality of the one-forward evaluation).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from iclab.algorithms.prefix_baselines import (
    DEFAULT_ALPHAS,
    prefix_averaging,
    prefix_decision_tree,
    prefix_gradient_boosting,
    prefix_knn,
    prefix_lasso_path,
    prefix_least_squares,
    prefix_two_layer_net,
)
from iclab.analysis.prefix_curves import PrefixCurves, plot_prefix_curves
from iclab.analysis.report import ReportRow, check, claim
from iclab.experiments.experiment import Context, Experiment, Run, configure
from iclab.tasks.function_class import FunctionClassConfig, FunctionClassTask
from iclab.training import TrainResult

DESCRIPTION = (
    "Garg, Tsipras, Liang & Valiant (NeurIPS 2022): in-context learning of function classes"
)

TITLE = "Garg et al. (2022): what can transformers learn in context? Simple function classes"
EVAL_PURPOSE = "garg2022_eval"
TRACK_TOL = 0.1  # optimization tolerance of "tracks least squares": 10% of the zero predictor's
LASSO_TOL = 0.05  # … of "close to Lasso": least squares' excess over the Lasso, averaged over
# k < d, is only ≈ 0.22 at d = 20 with 3 non-zero weights (measured), and the band must stay under
# half of it
NET_TOL = 0.1  # … of "matches the two-layer network"
Z_SCORE = 3.0
_CHUNK = 500  # prompts per forward pass in evaluation

LS, AVG, KNN, LASSO, TREE, BOOST, NET = (
    "least squares",
    "averaging",
    "3-NN",
    "Lasso (best α)",
    "greedy tree",
    "gradient boosting",
    "2-layer net (Adam)",
)
TRANSFORMER = "transformer"


@dataclass(frozen=True)
class Budget:
    """Sizes of one budget. Every class trains ``steps`` Adam steps of ``batch_size`` prompts
    (``seeds`` models in one tensor program) with the curriculum of the paper scaled to ``d``:
    from ``start_dims`` coordinates and ``start_n`` examples, +1 coordinate and +2 examples every
    ``interval`` steps. ``test_size`` fresh prompts per seed are evaluated; the learners fitted per
    prompt (trees, boosting, the network) see the first ``slow_prompts`` of them at
    ``slow_positions`` prefix lengths only."""

    d: int
    n: int  # context examples per prompt (the query is the (n+1)-th point)
    seeds: int
    layers: int
    heads: int
    width: int
    steps: int
    family_steps: Mapping[str, int] = field(default_factory=dict)  # per-class overrides of steps
    family_n: Mapping[str, int] = field(default_factory=dict)  # per-class overrides of n
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 200
    min_lr_factor: float = 1.0  # < 1: cosine decay to this fraction of lr (1: constant)
    start_dims: int = 2
    start_n: int = 5
    interval: int = 200
    sparsity: int = 2
    tree_depth: int = 4
    net_width: int = 100
    test_size: int = 1000
    slow_prompts: int = 100
    slow_positions: tuple[int, ...] = ()
    net_steps: int = 500
    boost_estimators: int = 100
    workers: int = 2
    resamples: int = 1000
    tree_from: int = 0  # first k of the tree claim (0: n // 2)
    families: tuple[str, ...] = ("linear", "sparse_linear", "decision_tree", "relu_network")
    shifts: Mapping[str, Mapping[str, Any]] = field(
        default_factory=lambda: {
            "skewed covariance": {"x_distribution": "skewed"},
            "low-rank inputs (d/2)": {"x_distribution": "low_rank", "rank": "half"},
            "inputs ×2": {"x_scale": 2.0},
            "outputs ×2": {"y_scale": 2.0},
            "random quadrants": {"quadrants": "random"},
            "opposite quadrants": {"quadrants": "opposite"},
            "query = a context point": {"query": "context_point"},
            "orthogonal query": {"query": "orthogonal"},
        }
    )

    def n_for(self, family: str) -> int:
        return self.family_n.get(family, self.n)

    def slow_at(self, n: int) -> list[int]:
        """Prefix lengths at which the per-prompt learners are fitted, for prompts of n examples."""
        if self.slow_positions:
            return [k for k in self.slow_positions if 1 <= k <= n]
        return sorted({round(1 + i * (n - 1) / 4) for i in range(5)})


#: d = 3 and the small model (3 layers, width 64): with the curriculum and a cosine decay the
#: linear error falls under 0.04 of the zero predictor's within 5000 steps (measured; the
#: whole quick report takes 370 s on 2 cores from a fresh clone, 8f8b17a). Sparse
#: linear functions are left to the full budget: at d = 3 "below least squares for k < d" has
#: only k = 1, 2, and the model stays on a plateau (error ≈ 0.4 from k = 3 on, against the
#: Lasso's 0) after 4000 steps with 1 non-zero weight, and after 6000 steps with 1 or 2 (mean
#: error over k = 1…9: 0.50 and 0.48). Measured 2026-12-01: started from the trained quick
#: linear model, 3000 sparse steps (1 non-zero weight) keep least squares' curve (0.687, 0.453
#: at k = 1, 2 against 0.679, 0.410; the Lasso 0.780, 0.337); at d = 6, n = 10 from scratch
#: 5000 steps learn nothing (error 0.98–1.21 at every k). Trees: 400 prompts for the
#: per-prompt learners, as boosting's per-prompt errors are heavy-tailed (100 prompts left a
#: 0.24 gap at 1.9 SE).
QUICK = Budget(
    d=3,
    n=9,
    seeds=1,
    layers=3,
    heads=4,
    width=64,
    steps=3000,
    family_steps={"linear": 5000, "decision_tree": 4000},
    min_lr_factor=0.1,
    slow_prompts=400,
    families=("linear", "decision_tree", "relu_network"),
)
#: FULL: the paper's sizes. Measured 2026-12-01 on 2 CPU cores: 9.8 s per step of the three
#: seeds at n = 40, 42.6 s at n = 100 (thousands of CPU-hours for 500k steps). Projected from
#: the operation count (≈ 3.1e18 FLOP for the four classes): 29–86 GPU-hours at 10–30 TFLOP/s.
FULL = Budget(
    d=20,
    n=40,
    seeds=3,
    layers=12,
    heads=8,
    width=256,
    steps=500_000,
    lr=1e-4,
    warmup_steps=0,
    start_dims=5,
    start_n=10,
    interval=2000,
    sparsity=3,
    family_n={"decision_tree": 100, "relu_network": 100},
    test_size=1280,
    slow_prompts=200,
    net_steps=1000,
)


def _task_fields(family: str, b: Budget) -> dict[str, Any]:
    extra: dict[str, Any] = {"family": family, "d": b.d, "n": b.n_for(family)}
    if family == "sparse_linear":
        extra["sparsity"] = b.sparsity
    elif family == "decision_tree":
        extra["depth"] = b.tree_depth
    elif family == "relu_network":
        extra["width"] = b.net_width
    return extra


def _run(family: str, b: Budget, device: str) -> Run:
    steps = b.family_steps.get(family, b.steps)
    changes: dict[str, Any] = {f"task.{k}": v for k, v in _task_fields(family, b).items()}
    changes.update(
        {
            "seed": 0,
            "n_seeds": b.seeds,
            "device": device,
            "model.layers": b.layers,
            "model.heads": b.heads,
            "model.width": b.width,
            "model.positions": 2 * (b.n_for(family) + 1),
            "train.steps": steps,
            "train.batch_size": b.batch_size,
            "train.lr": b.lr,
            "train.schedule": (
                {"kind": "constant", "warmup_steps": b.warmup_steps}
                if b.min_lr_factor >= 1
                else {
                    "kind": "cosine",
                    "warmup_steps": b.warmup_steps,
                    "min_factor": b.min_lr_factor,
                }
            ),
            "train.curriculum": {
                "n": {"start": min(b.start_n, b.n_for(family)), "inc": 2, "interval": b.interval},
                "active_dims": {"start": min(b.start_dims, b.d), "inc": 1, "interval": b.interval},
            },
            "train.eval_every": max(steps // 20, 1),
            "train.checkpoint_every": max(steps // 10, 1),
            "train.test_size": min(b.test_size, 512),
        }
    )
    return Run(family, configure(f"garg2022_{family}", changes))


def _null_error(cfg: FunctionClassConfig) -> float:
    """E[y²] of the zero predictor for the class and input law of ``cfg`` (module docstring of
    :mod:`iclab.tasks.function_classes`): tr Σ_x for linear functions and ReLU networks, k·(the
    per-coordinate variance) for sparse ones, 1 for trees; times ``y_scale²``."""
    support = {"gaussian": cfg.d, "skewed": cfg.d, "low_rank": cfg.rank or cfg.d}[
        cfg.x_distribution
    ]
    trace = cfg.x_scale**2 * support
    if cfg.family == "sparse_linear":
        base = cfg.x_scale**2 * (cfg.sparsity or 1) * (support / cfg.d)
    elif cfg.family == "decision_tree":
        base = 1.0
    else:
        base = trace
    return cfg.y_scale**2 * base


def _predict_all(model: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The transformer's predictions (E, B, N) at every position of sequences x, y, in chunks."""
    out = []
    with torch.no_grad():
        for i in range(0, x.shape[1], _CHUNK):
            xs, ys = x[:, i : i + _CHUNK], y[:, i : i + _CHUNK]
            out.append(model(xs[..., :-1, :], ys[..., :-1], xs[..., -1, :]))
    return torch.cat(out, dim=1)


def _sequences(task: FunctionClassTask, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    batch = task.sample(size, EVAL_PURPOSE)
    x = torch.cat([batch.x, batch.x_query.unsqueeze(-2)], dim=-2)
    y = torch.cat([batch.y, batch.y_query.unsqueeze(-1)], dim=-1)
    return x, y


def _shifted_task(result: TrainResult, changes: Mapping[str, Any]) -> FunctionClassTask:
    data = result.config.task.model_dump()
    data.update(
        {k: (v if v != "half" else max(result.config.task.d // 2, 1)) for k, v in changes.items()}
    )
    if data.get("query") == "orthogonal":
        data["n"] = max(data["d"] - 1, 1)  # an orthogonal query needs fewer points than d
    cfg = FunctionClassConfig.model_validate(data)
    return FunctionClassTask(
        cfg, result.config.seeds, device=result.task.device, dtype=result.task.dtype
    )


class Garg2022(Experiment[Budget]):
    name = "garg2022"
    title = TITLE
    budgets: ClassVar[dict[str, Budget]] = {"quick": QUICK, "full": FULL}

    def runs(self, budget: Budget, device: str = "auto") -> list[Run]:
        return [_run(f, budget, device) for f in budget.families]

    # ----------------------------------------------------------------- evaluation
    def curves(
        self, result: TrainResult, b: Budget, task: FunctionClassTask | None = None
    ) -> PrefixCurves:
        """Prefix curves of the transformer and the class's baselines on fresh prompts."""
        task = task or result.task
        family = task.config.family
        x, y = _sequences(task, b.test_size)
        curves = PrefixCurves(_null_error(task.config))
        curves.add(TRANSFORMER, _predict_all(result.model, x, y), y)
        baselines: dict[str, Callable[[], torch.Tensor]] = {
            LS: lambda: prefix_least_squares(x, y),
        }
        if family in ("linear", "sparse_linear", "relu_network"):
            baselines[AVG] = lambda: prefix_averaging(x, y)
        baselines[KNN] = lambda: prefix_knn(x, y, k=3)
        if family == "sparse_linear":
            baselines[LASSO] = lambda: _best_lasso(x, y)
        slow = b.slow_at(task.config.n)
        xs, ys = x[:, : b.slow_prompts], y[:, : b.slow_prompts]
        if family == "decision_tree":
            baselines[TREE] = lambda: _pad(
                prefix_decision_tree(xs, ys, positions=slow, workers=b.workers), x.shape[1]
            )
            baselines[BOOST] = lambda: _pad(
                prefix_gradient_boosting(
                    xs, ys, n_estimators=b.boost_estimators, positions=slow, workers=b.workers
                ),
                x.shape[1],
            )
        if family == "relu_network":
            baselines[NET] = lambda: _pad(
                prefix_two_layer_net(
                    xs, ys, width=task.config.width or 100, steps=b.net_steps, positions=slow
                ),
                x.shape[1],
            )
        for name, fit in baselines.items():
            curves.add(name, fit(), y)
        return curves

    # ----------------------------------------------------------------- analysis
    def analyze(self, ctx: Context[Budget]) -> list[ReportRow]:
        b = ctx.budget
        rows: list[ReportRow] = []
        panels: dict[str, PrefixCurves] = {}
        linear_ok = False
        results = {f: ctx.runs[f] for f in b.families}
        for family, result in results.items():
            curves = self.curves(result, b)
            panels[family.replace("_", " ")] = curves
            family_rows = CLAIMS[family](curves, result.config.task, b)
            if family == "linear":  # the shift rows lean on the in-distribution tracking row
                linear_ok = family_rows[0].verdict == "pass"
            rows += family_rows
            rows.append(_causality_row(family, result))
        shift_panels: dict[str, PrefixCurves] = {}
        if "linear" in results:
            for label, changes in b.shifts.items():
                task = _shifted_task(results["linear"], changes)
                curves = self.curves(results["linear"], b, task)
                shift_panels[label] = curves
                if task.config.query != "orthogonal":
                    rows.append(_shift_row(label, curves, task.config, linear_ok))
        ctx.figures.mkdir(parents=True, exist_ok=True)
        marks = {k: float(results[f].config.task.d) for k, f in zip(panels, results, strict=True)}
        plot_prefix_curves(
            panels, ctx.figures / "error_vs_examples.png", resamples=b.resamples, marks=marks
        )
        ctx.sections.append(
            "## Error vs number of in-context examples\n\n"
            "Squared error divided by the zero predictor's, mean over test prompts and seeds with "
            "95% bootstrap bands (dotted: k = d). The per-prompt learners are fitted on the first "
            f"{b.slow_prompts} prompts of each seed at k ∈ {b.slow_at(b.n)} (n = {b.n}), scaled to "
            "each class's n.\n\n"
            "![](figures/error_vs_examples.png)"
        )
        if shift_panels:
            d = results["linear"].config.task.d
            plot_prefix_curves(
                shift_panels,
                ctx.figures / "linear_shifts.png",
                resamples=b.resamples,
                marks=dict.fromkeys(shift_panels, float(d)),
            )
            ctx.sections.append(
                "## Linear functions under distribution shifts\n\n"
                "The linear model, not retrained, on shifted prompts, against least squares on "
                "the same prompts. An orthogonal query (prompts of d − 1 examples) is shown but "
                "not tested: predicting 0 is optimal there, which any context-blind predictor "
                "does.\n\n![](figures/linear_shifts.png)"
            )
        return rows


def _pad(pred: torch.Tensor, size: int) -> torch.Tensor:
    """Predictions (E, b, N) of the first b prompts, padded with NaN to (E, size, N)."""
    out = pred.new_full((pred.shape[0], size, pred.shape[2]), float("nan"))
    out[:, : pred.shape[1]] = pred
    return out


def _best_lasso(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The Lasso path's predictions with, at each position, the α of least mean squared error on
    these prompts (an oracle choice, as the paper tunes α on its evaluation)."""
    path = prefix_lasso_path(x, y, DEFAULT_ALPHAS)  # (A, E, B, N)
    err = (path - y).square().mean((1, 2))  # (A, N)
    best = err.argmin(0)  # (N,)
    return path.gather(0, best.view(1, 1, 1, -1).expand(1, *path.shape[1:])).squeeze(0)


EXPERIMENT = Garg2022()


# --------------------------------------------------------------------------- claim rows
def _span(ks: list[int]) -> str:
    return f"k ∈ [{ks[0]}, {ks[-1]}]" if ks == list(range(ks[0], ks[-1] + 1)) else f"k ∈ {ks}"


def _beats(
    quantity: str,
    curves: PrefixCurves,
    losers: tuple[str, ...],
    ks: list[int],
    *,
    paper: str,
    note: str = "",
) -> ReportRow:
    """The transformer's error is below each of ``losers``' at every k of ``ks``, each gap
    decided at ``Z_SCORE`` paired standard errors."""
    worst: tuple[float, str, int] | None = None
    ok = True
    for loser in losers:
        for k in curves.positions(TRANSFORMER, loser):
            if k not in ks:
                continue
            gap = curves.paired_gap(loser, TRANSFORMER, [k])
            margin = gap.mean - Z_SCORE * gap.se
            ok &= margin > 0
            if worst is None or margin < worst[0]:
                worst = (margin, loser, k)
    if worst is None:
        raise ValueError(f"{quantity}: no position evaluated by every method in {ks}")
    tested = sorted({k for lo in losers for k in curves.positions(TRANSFORMER, lo) if k in ks})
    values = curves.per_seed(TRANSFORMER, tested).tolist()
    margin, who, at = worst
    threshold = (
        f"at every {_span(tested)} and for each of {', '.join(losers)}: error(baseline) − "
        f"error(transformer) > {Z_SCORE:g}·SE (paired over prompts and seeds); smallest margin "
        f"{margin:.3g} (vs {who} at k = {at})"
    )
    means = ", ".join(f"{n} {float(curves.per_seed(n, tested).mean()):.3g}" for n in losers)
    return claim(
        quantity,
        values,
        ok,
        threshold,
        paper=paper,
        note=f"mean error over {_span(tested)}: transformer {sum(values) / len(values):.3g}, {means}. {note}".strip(),
    )


def _within(
    quantity: str,
    curves: PrefixCurves,
    other: str,
    ks: list[int],
    tol: float,
    *,
    paper: str,
    note: str = "",
    evidence: str | None = None,
    rival: str | None = None,
) -> ReportRow:
    """The transformer's error averaged over ``ks`` is at most ``other``'s + Z·SE + ``tol``.

    Power: the band must be narrower than half of the excess error, over ``other``, of the zero
    predictor (error 1), or of ``rival`` when given (a learner the claim sets apart from
    ``other``, e.g. least squares from the Lasso): a model at the band's edge is still closer
    to ``other`` than to it."""
    ks = [k for k in ks if k in curves.positions(TRANSFORMER, other)]
    gap = curves.paired_gap(TRANSFORMER, other, ks)
    bound = Z_SCORE * gap.se + tol
    values = curves.per_seed(TRANSFORMER, ks).tolist()
    reference = float(curves.per_seed(other, ks).mean())
    level = 1.0 if rival is None else float(curves.per_seed(rival, ks).mean())
    power = level - reference
    ok = gap.mean <= bound and 2 * bound < power
    threshold = (
        f"mean over {_span(ks)} of error(transformer) − error({other}) ≤ {Z_SCORE:g}·SE({gap.se:.2g}) "
        f"+ {tol:g} (optimization tolerance, in units of the zero predictor's error) = "
        f"{bound:.3g}; measured {gap.mean:.3g}. Power: the band must be under half the "
        f"{'zero predictor' if rival is None else rival}'s excess over {other} ({power:.3g})"
    )
    return claim(
        quantity,
        values,
        ok,
        threshold,
        theory=reference,
        paper=paper,
        note=f"theory column: {other}'s mean error on the same prompts. {note}".strip(),
        evidence=evidence if gap.mean > bound else None,  # inconclusive is never refuted
    )


def _linear_rows(curves: PrefixCurves, task: FunctionClassConfig, b: Budget) -> list[ReportRow]:
    d, n = task.d, task.n
    return [
        _within(
            f"linear (d={d}): transformer error ≈ least squares for k ≥ d + 2",
            curves,
            LS,
            list(range(d + 2, n + 1)),
            TRACK_TOL,
            paper="tracks least squares: error ≈ 0 once k ≥ d (d = 20)",
            note="least squares is exact once k ≥ d (noise-free labels); the transformer's "
            "error reaches its floor over the first examples after d, so the row averages k ≥ d + 2",
        ),
        _beats(
            f"linear (d={d}): transformer below 3-NN and averaging at every k",
            curves,
            (KNN, AVG),
            list(range(1, n + 1)),
            paper="beats 3-NN and averaging (one gradient step) at every number of examples",
        ),
    ]


def _sparse_rows(curves: PrefixCurves, task: FunctionClassConfig, b: Budget) -> list[ReportRow]:
    d, s = task.d, task.sparsity
    # "below least squares for k < d" is a claim about using sparsity: it is tested where a
    # learner that uses it (the Lasso) is itself below least squares. At k = 1 no learner gains
    # much (d = 3, one non-zero weight: least squares 0.68, the Bayes posterior mean 0.49,
    # the best-α Lasso 0.78), and the row must not demand a gap nothing can show.
    ks = [k for k in range(1, d) if k in curves.positions(LASSO, LS)]
    gains = {k: curves.paired_gap(LS, LASSO, [k]) for k in ks}
    where = [k for k, g in gains.items() if g.mean - Z_SCORE * g.se > 0]
    name = f"sparse linear (d={d}, {s} non-zero): transformer below least squares for k < d"
    paper = "beats least squares, which cannot use sparsity, below d examples (d = 20, k = 3)"
    if where:
        below = _beats(
            name,
            curves,
            (LS,),
            where,
            paper=paper,
            note=f"tested at the k < d where the Lasso is below least squares by {Z_SCORE:g}·SE",
        )
    else:
        below = claim(
            name,
            curves.per_seed(TRANSFORMER, ks).tolist(),
            False,
            f"no k < d where the Lasso is below least squares by {Z_SCORE:g}·SE: at this d and "
            "sparsity the claim cannot be tested",
            paper=paper,
        )
    return [
        below,
        _within(
            f"sparse linear (d={d}, {s} non-zero): transformer within tolerance of the Lasso for k < d",
            curves,
            LASSO,
            list(range(1, d)),
            LASSO_TOL,
            rival=LS,
            paper="nearly matches the Lasso",
            note=f"α tuned per k on these prompts over {len(DEFAULT_ALPHAS)} values (an oracle); "
            "averaged over k < d, where sparsity matters: from k = d on least squares is exact "
            "too, and an average over every k lets least squares itself pass",
        ),
    ]


def _tree_rows(curves: PrefixCurves, task: FunctionClassConfig, b: Budget) -> list[ReportRow]:
    start = b.tree_from or task.n // 2
    return [
        _beats(
            f"decision trees (depth {task.depth}, d={task.d}): transformer below greedy trees and "
            f"boosting for k ≥ {start}",
            curves,
            (TREE, BOOST),
            list(range(start, task.n + 1)),
            paper="beats greedy tree learning and XGBoost (depth 4, d = 20)",
            note=f"gradient boosting: scikit-learn, {b.boost_estimators} trees of depth 3 "
            "(XGBoost in the paper); greedy tree: fully grown",
        )
    ]


def _relu_rows(curves: PrefixCurves, task: FunctionClassConfig, b: Budget) -> list[ReportRow]:
    return [
        _within(
            f"ReLU networks (width {task.width}, d={task.d}): transformer within tolerance of a "
            "2-layer net trained on each prefix",
            curves,
            NET,
            list(range(1, task.n + 1)),
            NET_TOL,
            paper="comparable to a 2-layer network trained by gradient descent on the examples",
            note=f"the network: width {task.width}, {b.net_steps} full-batch Adam steps per prefix",
        )
    ]


CLAIMS: dict[str, Callable[[PrefixCurves, FunctionClassConfig, Budget], list[ReportRow]]] = {
    "linear": _linear_rows,
    "sparse_linear": _sparse_rows,
    "decision_tree": _tree_rows,
    "relu_network": _relu_rows,
}


def _shift_row(
    label: str, curves: PrefixCurves, task: FunctionClassConfig, trained_ok: bool
) -> ReportRow:
    d, n = task.d, task.n
    at_query = task.query == "context_point" or task.quadrants == "opposite"
    ks = [n] if at_query else list(range(d + 2, n + 1))
    evidence = (
        "the same model passes the in-distribution row (error ≈ least squares for k ≥ d + 2), so "
        "it learned its training law; the excess error under this shift is a property of what it "
        "learned"
        if trained_ok
        else None
    )
    where = "at the query (k = n)" if at_query else "for k ≥ d + 2"
    return _within(
        f"linear, {label}: transformer error ≈ least squares {where}",
        curves,
        LS,
        ks,
        TRACK_TOL,
        paper="in-context learning survives shifts between training and test prompts and "
        "between the examples and the query",
        evidence=evidence,
    )


def _causality_row(family: str, result: TrainResult, prompts: int = 4) -> ReportRow:
    """Prediction at position k of one forward = the last prediction on the prompt cut after k."""
    task = result.task
    x, y = _sequences(task, prompts)
    model = result.model
    with torch.no_grad():
        full = model(x[..., :-1, :], y[..., :-1], x[..., -1, :])
        errs = []
        for k in range(x.shape[-2]):
            cut = model(x[..., :k, :], y[..., :k], x[..., k, :])[..., -1]
            errs.append(float((cut - full[..., k]).abs().max()))
    scale = float(full.abs().max()) or 1.0
    return check(
        f"{family.replace('_', ' ')}: prediction at every k from one forward = forward on the "
        "prompt cut after k",
        max(errs) / scale,
        1e-5,
        note=f"{prompts} prompts per seed, every k; relative to the largest |prediction|",
    )
