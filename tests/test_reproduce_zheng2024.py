"""``iclab reproduce zheng2024`` on tiny budgets: the report contract, figures, re-analysis from
the run folders, and untrained models failing every claim row."""

import json
from dataclasses import replace

import pytest
from report_contract import ROW_KEYS

from iclab.config import ConfigError, load_config
from iclab.experiments.experiment import run_experiment
from iclab.experiments.registry import EXPERIMENTS, get_experiment
from iclab.experiments.zheng2024 import EXPERIMENT, Budget

TINY = Budget(
    seeds=2,
    sequences=32,
    epochs=6,
    sparse_epochs=6,
    ones_epochs=6,
    gaussian_init_epochs=8,
    sigmas=(1.0,),
    cs=(1.0,),
    inits=((0.1, 0.1), (2.0, 2.0)),
    test_size=32,
    T=12,
)


def test_report_contract_figures_and_reanalysis(tmp_path):
    rows = run_experiment(
        EXPERIMENT, tmp_path, budget="tiny", budget_value=TINY, device="cpu", progress=False
    )
    doc = json.loads((tmp_path / "report.json").read_text())
    # per law: one ab row per init and the ratio/MSE row; 4 drift rows; the mesa check
    assert len(doc["rows"]) == len(rows) == 2 * (2 + 1) + 4 + 1
    assert all(set(r) == ROW_KEYS for r in doc["rows"])
    assert doc["budget"] == "tiny" and doc["seeds"] == [0, 1]
    mesa = [r for r in doc["rows"] if r["quantity"].startswith("diagonal model = mesa")]
    assert mesa and mesa[0]["verdict"] == "check"  # exact at any budget
    assert all("SE" in r["threshold"] for r in doc["rows"] if r["verdict"] != "check")
    for fig in (
        "gaussian_vs_epoch",
        "sparse_vs_epoch",
        "drift_vs_epoch",
        "ones_weights",
        "gaussian_init_weights",
    ):
        assert (tmp_path / "figures" / f"{fig}.png").stat().st_size > 1000
    again = run_experiment(
        EXPERIMENT, tmp_path, budget="tiny", budget_value=TINY, device="cpu", progress=False,
        train=False,
    )  # fmt: skip
    assert again == rows
    assert "zheng2024" in EXPERIMENTS and get_experiment("zheng2024") is EXPERIMENT


def test_untrained_models_fail_every_claim_row(tmp_path):
    untrained = replace(TINY, epochs=0, sparse_epochs=0, ones_epochs=0, gaussian_init_epochs=0)
    rows = run_experiment(
        EXPERIMENT, tmp_path, budget="tiny", budget_value=untrained, device="cpu", progress=False
    )
    claims = [r for r in rows if r.verdict != "check"]
    assert len(claims) == len(rows) - 1
    assert [r.quantity for r in claims if r.verdict != "fail"] == []


def test_budgets_declare_typed_runs():
    runs = EXPERIMENT.runs(EXPERIMENT.budget("quick"), "cpu")
    names = [r.name for r in runs]
    assert len(names) == len(set(names)) == 2 * (3 + 2) + 4
    cfg = {r.name: r.config for r in runs}["gaussian_1_a0.1_b0.1"]
    assert cfg.model.trainable == "all" and cfg.train.lr == 1e-4 and cfg.train.steps > 0


@pytest.mark.parametrize(
    "override, field",
    [("task.T=2", "task.T"), ("task.d=0", "task.d"), ("task.sigma=0", "task.sigma"),
     ("task.x1=laplace", "task.x1")],
)  # fmt: skip
def test_bad_input_fails_before_any_work(override, field):
    with pytest.raises(ConfigError) as err:
        load_config("zheng2024_gaussian", [override])
    assert field in str(err.value)
