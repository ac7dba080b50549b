"""``iclab reproduce garg2022`` on tiny budgets: report contract, figures, re-analysis from the run
folders, untrained models failing every claim row; the prefix-curve statistics and the
normalisers against Monte Carlo."""

import json
import math
from dataclasses import replace

import pytest
import torch
from report_contract import ROW_KEYS

from iclab.analysis.prefix_curves import PrefixCurves
from iclab.experiments.experiment import run_experiment
from iclab.experiments.garg2022 import (
    EXPERIMENT,
    TRANSFORMER,
    Budget,
    _null_error,
    _shifted_task,
)
from iclab.experiments.registry import EXPERIMENTS, get_experiment
from iclab.tasks.function_class import FunctionClassConfig, FunctionClassTask

TINY = Budget(
    d=3,
    n=6,
    seeds=1,
    layers=1,
    heads=1,
    width=8,
    steps=20,
    test_size=60,
    slow_prompts=4,
    net_steps=20,
    boost_estimators=5,
    workers=1,
    resamples=50,
    interval=5,
    start_dims=1,
    start_n=2,
)


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("garg")
    rows = run_experiment(
        EXPERIMENT, out, budget="tiny", budget_value=TINY, device="cpu", progress=False
    )
    return out, rows


def test_report_contract_figures_and_reanalysis(tiny_report):
    out, rows = tiny_report
    doc = json.loads((out / "report.json").read_text())
    assert all(set(r) == ROW_KEYS for r in doc["rows"])
    # linear 2 + sparse 2 + trees 1 + nets 1 claims, a causality check per class, and 7 shifts
    # (the orthogonal query is shown, not tested)
    assert len(rows) == 6 + 4 + 7
    checks = [r for r in rows if r.quantity.endswith("cut after k")]
    assert len(checks) == 4 and all(r.verdict == "check" for r in checks)
    assert all("SE" in r.threshold for r in rows if r.verdict != "check")
    for fig in ("error_vs_examples", "linear_shifts"):
        assert (out / "figures" / f"{fig}.png").stat().st_size > 1000
    again = run_experiment(
        EXPERIMENT, out, budget="tiny", budget_value=TINY, device="cpu", progress=False,
        train=False,
    )  # fmt: skip
    assert again == rows
    assert "garg2022" in EXPERIMENTS and get_experiment("garg2022") is EXPERIMENT


def test_untrained_models_fail_every_claim_row(tmp_path):
    untrained = replace(TINY, steps=0, test_size=400, slow_prompts=40, n=8)
    rows = run_experiment(
        EXPERIMENT, tmp_path, budget="tiny", budget_value=untrained, device="cpu", progress=False
    )
    claims = [r for r in rows if r.verdict != "check"]
    assert len(claims) == 13
    assert all(r.verdict == "fail" for r in claims), [(r.quantity, r.verdict) for r in claims]


def test_runs_are_typed_configs_of_the_class_presets():
    runs = EXPERIMENT.runs(replace(TINY, sparsity=2, tree_depth=2, net_width=7))
    tasks = {r.name: r.config.task for r in runs}
    assert set(tasks) == {"linear", "sparse_linear", "decision_tree", "relu_network"}
    assert tasks["sparse_linear"].sparsity == 2 and tasks["decision_tree"].depth == 2
    assert tasks["relu_network"].width == 7
    for r in runs:
        assert r.config.task.d == 3 and r.config.task.n == 6
        assert r.config.model.positions == 14 and r.config.train.curriculum is not None


@pytest.mark.parametrize(
    "changes",
    [
        {"family": "linear"},
        {"family": "sparse_linear", "sparsity": 2},
        {"family": "relu_network", "width": 20},
        {"family": "decision_tree", "depth": 3},
        {"family": "linear", "x_distribution": "skewed"},
        {"family": "linear", "x_distribution": "low_rank", "rank": 2},
        {"family": "sparse_linear", "sparsity": 2, "x_distribution": "low_rank", "rank": 3},
        {"family": "linear", "x_scale": 2.0, "y_scale": 0.5},
    ],
)
def test_null_error_is_the_mean_squared_label(changes):
    cfg = FunctionClassConfig.model_validate({"d": 5, "n": 4, **changes})
    batch = FunctionClassTask(cfg, [0], dtype=torch.float64).sample(40000, "mc")
    y2 = batch.y.square().flatten()
    mc, se = float(y2.mean()), float(y2.std()) / math.sqrt(y2.numel())
    assert abs(mc - _null_error(cfg)) < 4 * se + 1e-12, (mc, se, _null_error(cfg))


def test_shifted_task_keeps_seeds_and_fits_the_orthogonal_query(tiny_report):
    out, _ = tiny_report
    from iclab.experiments.experiment import RunSet

    result = RunSet(out / "runs", "cpu")["linear"]
    task = _shifted_task(result, {"query": "orthogonal"})
    assert task.config.n == 2 and task.seeds == result.task.seeds  # n < d = 3
    low = _shifted_task(result, {"x_distribution": "low_rank", "rank": "half"})
    assert low.config.rank == 1


def test_prefix_curves_paired_gap_and_partial_prompts():
    g = torch.Generator().manual_seed(0)
    y = torch.randn(2, 50, 4, generator=g, dtype=torch.float64)
    a = y + 0.1 * torch.randn(2, 50, 4, generator=g, dtype=torch.float64)
    b = y + 0.3 * torch.randn(2, 50, 4, generator=g, dtype=torch.float64)
    curves = PrefixCurves(scale=2.0)
    curves.add(TRANSFORMER, a, y)
    curves.add("b", b, y)
    slow = b.clone()
    slow[:, 10:] = float("nan")
    slow[..., 1] = float("nan")
    curves.add("slow", slow, y)
    assert curves.positions("slow") == [0, 2, 3] and curves.prompts("slow") == 10
    assert curves.prompts(TRANSFORMER) == 50
    gap = curves.paired_gap("b", TRANSFORMER, [2, 3])
    diff = (((b - y) ** 2 - (a - y) ** 2) / 2.0)[..., 2:4].mean(-1)  # (E, B)
    assert gap.per_seed == pytest.approx(diff.mean(-1).tolist())
    prompt_se = diff.std(-1) / math.sqrt(50)
    noise = math.sqrt(float(prompt_se.square().mean()) / 2)
    spread = float(diff.mean(-1).std()) / math.sqrt(2)
    assert gap.se == pytest.approx(max(noise, spread))
    part = curves.paired_gap("slow", TRANSFORMER, [2])  # only the first 10 prompts pair up
    ref = (((b - y) ** 2 - (a - y) ** 2) / 2.0)[:, :10, 2].mean(-1)
    assert part.per_seed == pytest.approx(ref.tolist())
    mean, lo, hi = curves.band("slow", resamples=200)
    assert math.isnan(mean[1]) and bool((lo[[0, 2, 3]] <= mean[[0, 2, 3]]).all())
    assert bool((mean[[0, 2, 3]] <= hi[[0, 2, 3]]).all())
    with pytest.raises(ValueError, match="predictions"):
        curves.add("bad", a[..., :3], y)


def _curves(tf_error: float, other_error: float, other: str, prompts: int = 400, n: int = 9):
    """Synthetic curves: per-prompt errors with the given means (exponential noise, paired)."""
    g = torch.Generator().manual_seed(1)
    noise = torch.rand(1, prompts, n + 1, generator=g, dtype=torch.float64)
    curves = PrefixCurves(scale=1.0)
    zeros = torch.zeros(1, prompts, n + 1, dtype=torch.float64)
    curves.add(TRANSFORMER, (2 * tf_error * noise).sqrt(), zeros)
    curves.add(other, (2 * other_error * noise.flip(1)).sqrt(), zeros)
    return curves


@pytest.mark.parametrize(
    ("tf", "ls", "trained_ok", "verdict"),
    [
        (0.03, 0.0, True, "pass"),
        (0.03, 0.0, False, "pass"),
        (0.5, 0.0, True, "refuted"),  # the model learned its law; the shift breaks it
        (0.5, 0.0, False, "fail"),  # an unconverged model proves nothing
        (0.95, 0.9, True, "fail"),  # a band that cannot tell the zero predictor apart: no power
    ],
)
def test_shift_rows_refute_only_for_a_trained_model_and_need_power(tf, ls, trained_ok, verdict):
    from iclab.experiments.garg2022 import LS, _shift_row

    cfg = FunctionClassConfig.model_validate({"d": 3, "n": 9, "x_scale": 2.0})
    row = _shift_row("inputs ×2", _curves(tf, ls, LS), cfg, trained_ok)
    assert row.verdict == verdict, row.threshold


@pytest.mark.parametrize(
    ("tf", "other", "ok"), [(0.3, 0.6, True), (0.6, 0.6, False), (0.7, 0.6, False)]
)
def test_beats_needs_a_gap_of_three_standard_errors_at_every_k(tf, other, ok):
    from iclab.experiments.garg2022 import _beats

    row = _beats("q", _curves(tf, other, "rival"), ("rival",), list(range(1, 10)), paper="p")
    assert (row.verdict == "pass") is ok and "smallest margin" in row.threshold


def test_full_budget_uses_the_paper_sizes():
    from iclab.experiments.garg2022 import FULL

    runs = {r.name: r.config for r in EXPERIMENT.runs(FULL, device="cpu")}
    assert {n: c.task.n for n, c in runs.items()} == {
        "linear": 40,
        "sparse_linear": 40,
        "decision_tree": 100,
        "relu_network": 100,
    }
    for c in runs.values():
        assert c.task.d == 20 and c.model.layers == 12 and c.model.width == 256
        assert c.model.positions == 2 * (c.task.n + 1) and c.train.steps == 500_000
    assert runs["sparse_linear"].task.sparsity == 3


@pytest.mark.parametrize(
    ("learner", "verdicts"),
    [("lasso", ("pass", "pass")), ("ls", ("fail", "fail")), ("zero", ("fail", "fail"))],
)
def test_sparse_rows_pass_for_a_learner_that_uses_sparsity(learner, verdicts):
    """On real sparse prompts (d = 12, one non-zero weight): a learner that predicts as the Lasso
    does passes both rows; least squares (no use of sparsity) and the zero predictor fail both."""
    from iclab.algorithms.prefix_baselines import prefix_least_squares
    from iclab.experiments.garg2022 import LASSO, LS, _best_lasso, _sequences, _sparse_rows

    cfg = FunctionClassConfig.model_validate(
        {"family": "sparse_linear", "d": 12, "n": 14, "sparsity": 1}
    )
    x, y = _sequences(FunctionClassTask(cfg, [0]), 300)
    ls, lasso = prefix_least_squares(x, y), _best_lasso(x, y)
    curves = PrefixCurves(_null_error(cfg))
    model = {"lasso": lasso, "ls": ls, "zero": torch.zeros_like(y)}[learner]
    for name, pred in ((TRANSFORMER, model), (LS, ls), (LASSO, lasso)):
        curves.add(name, pred, y)
    rows = _sparse_rows(curves, cfg, replace(TINY, d=12, n=14))
    assert tuple(r.verdict for r in rows) == verdicts, [r.threshold for r in rows]
    assert "k ∈ [" in rows[0].threshold  # tested on a range of k < d, not nowhere
