"""``iclab reproduce ding2025`` parts (a)–(c) end to end on a tiny budget (report contract,
figures, resume); the theory rows run at full accuracy (they are cheap)."""

import json

from iclab.experiments.ding2025 import Budget, reproduce_ding2025
from iclab.experiments.registry import EXPERIMENTS

TINY = Budget(
    seeds=2,
    states=(2, 3),
    layers=(1, 2),
    accuracy=("train.steps=5", "train.batch_size=64", "train.test_size=128", "train.eval_every=5"),
    one_layer=("train.steps=5", "train.batch_size=64", "train.test_size=256", "train.eval_every=5"),
    dims=(1, 2),
    dimension=(
        "train.steps=5",
        "train.batch_size=64",
        "train.test_size=128",
        "train.eval_every=5",
        "task.n=10",
    ),
    mc_prompts=500,
    multilayer=(
        "train.steps=5",
        "train.batch_size=64",
        "train.test_size=128",
        "train.eval_every=5",
    ),
)


def test_report_contract_theory_rows_and_resume(tmp_path):
    rows = reproduce_ding2025(tmp_path, budget=TINY, device="cpu", progress=False)
    report = json.loads((tmp_path / "report.json").read_text())
    assert len(report) == len(rows) == 2 + 2 + 2 + 1 + 1 + 1 + 2 + 1
    keys = {"quantity", "theory", "trained_mean", "trained_std", "n_seeds", "verdict", "note"}
    assert all(set(r) == keys and r["verdict"] in {"pass", "fail"} for r in report)
    by_name = {r["quantity"].split(":")[0]: r for r in report}
    # the theory rows do not depend on the training budget: they must pass
    realized = by_name["(c) d=1, n=10"]
    assert realized["verdict"] == "pass" and realized["trained_mean"] < 1e-8
    gap = by_name["(c) d=2, n=10"]
    assert gap["verdict"] == "pass" and 0 < gap["theory"] <= gap["trained_mean"]
    recursion = [r for r in report if r["quantity"].startswith("(f) weight recursion")]
    assert recursion and recursion[0]["verdict"] == "pass"  # exact at any training budget
    for fig in (
        "accuracy_vs_layers",
        "one_layer_sparse_vs_dense",
        "loss_vs_dimension",
        "multilayer_prediction",
        "multilayer_objectives",
    ):
        assert (tmp_path / "figures" / f"{fig}.png").stat().st_size > 1000
    assert "## Runs" in (tmp_path / "report.md").read_text()
    again = reproduce_ding2025(tmp_path, budget=TINY, device="cpu", progress=False)
    assert [r.trained_mean for r in again] == [r.trained_mean for r in rows]
    assert "ding2025" in EXPERIMENTS


def test_cli_theory_markov_one_layer(capsys):
    from iclab.cli import main

    assert main(["theory", "markov-one-layer", "--d", "1", "--n", "10", "--p", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "f̃(X*) = 0.353801" in out and "residual" in out  # 121/342, realizable
    assert main(["theory", "markov-one-layer", "--p", "1.5"]) == 2
    assert "--p" in capsys.readouterr().err
    assert main(["theory", "markov-one-layer", "--d", "9"]) == 2
