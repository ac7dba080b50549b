"""``iclab reproduce zheng2024`` end to end on a tiny budget: runs, figures, report, resume."""

import json

import pytest

from iclab.config import ConfigError, load_config
from iclab.experiments.registry import EXPERIMENTS
from iclab.experiments.zheng2024 import Budget, reproduce_zheng2024

TINY = Budget(
    seeds=1,
    sequences=32,
    epochs=6,
    sigmas=(1.0,),
    cs=(1.0,),
    inits=((0.1, 0.1), (2.0, 2.0)),
    test_size=32,
    extra=("task.T=12",),
)


def test_report_contract_figures_and_resume(tmp_path):
    rows = reproduce_zheng2024(tmp_path, budget=TINY, device="cpu", progress=False)
    report = json.loads((tmp_path / "report.json").read_text())
    # per law: one ab row per init + ratio/MSE row; ones, Gaussian init, mesa check
    assert len(report) == len(rows) == 2 * (2 + 1) + 1 + 3
    keys = {"quantity", "theory", "trained_mean", "trained_std", "n_seeds", "verdict", "note"}
    assert all(set(r) == keys and r["verdict"] in {"pass", "fail"} for r in report)
    mesa = [r for r in report if r["quantity"].startswith("diagonal model = mesa-optimizer")]
    assert mesa and mesa[0]["verdict"] == "pass"  # exact at any budget
    for fig in ("ab_vs_epoch", "ratio_vs_epoch", "mse_vs_epoch", "ones_weights"):
        assert (tmp_path / "figures" / f"{fig}.png").stat().st_size > 1000
    metrics = (tmp_path / "runs" / "sparse_1_diagonal_a0.1_b0.1" / "metrics.jsonl").read_text()
    first = json.loads(metrics.splitlines()[0])
    assert {"ab", "final_ratio", "final_mse"} <= set(first)
    again = reproduce_zheng2024(tmp_path, budget=TINY, device="cpu", progress=False)
    assert [r.trained_mean for r in again] == [r.trained_mean for r in rows]
    assert "zheng2024" in EXPERIMENTS


@pytest.mark.parametrize(
    "override, field",
    [("task.T=2", "task.T"), ("task.d=0", "task.d"), ("task.sigma=0", "task.sigma"),
     ("task.x1=laplace", "task.x1")],
)  # fmt: skip
def test_bad_input_fails_before_any_work(override, field):
    with pytest.raises(ConfigError) as err:
        load_config("zheng2024_gaussian", [override])
    assert field in str(err.value)
