"""``iclab reproduce ding2025`` on tiny budgets: untrained models fail every claim row, the
report contract (row keys, figures, identical rows when the analysis re-reads the folders), and
the theory rows that hold at any training budget."""

import dataclasses
import json

from report_contract import ROW_KEYS

from iclab.experiments.ding2025 import EXPERIMENT, Budget
from iclab.experiments.ding2025_transformers import TransformerBudget
from iclab.experiments.experiment import run_experiment
from iclab.experiments.registry import EXPERIMENTS

SMALL = {"train.batch_size": 64, "train.test_size": 256, "train.eval_every": 5}


def _budget(steps: int, transformers: TransformerBudget | None) -> Budget:
    run = {**SMALL, "train.steps": steps, "train.schedule.warmup_steps": 0}
    return Budget(
        seeds=2,
        states=(2, 3),
        layers=(1, 2, 3),
        accuracy=run,
        one_layer=run,
        dims=(1, 2, 3),
        dimension={**run, "task.n": 10},
        multilayer=run,
        mc_dim=2,
        mc_prompts=2000,
        transformers=transformers,
    )


TINY_TF = TransformerBudget(
    seeds=2,
    sizes=("tiny",),
    steps=0,
    batch_size=16,
    test_size=600,
    context_sizes=(1, 20),
    n_train=20,
    warmup_steps=0,
    eval_every=1,
    checkpoint_every=1,
    train_test_size=32,
    resamples=100,
    mixture_n=5,
    mixture_steps=0,
    mixture_test_size=200,
)
UNTRAINED = _budget(0, TINY_TF)
TINY = _budget(5, None)


def _run(tmp_path, budget, **kw):
    return run_experiment(
        EXPERIMENT, tmp_path, budget="tiny", budget_value=budget, device="cpu", progress=False, **kw
    )


def test_untrained_models_fail_every_claim_row(tmp_path):
    rows = _run(tmp_path, UNTRAINED)
    claims = [r for r in rows if r.verdict != "check"]
    assert len(claims) >= 10
    passed = [r.quantity for r in claims if r.verdict != "fail"]
    assert not passed, passed
    # the identities hold whatever the training: the theory and the bounds are checks
    checks = {r.quantity.split(":")[0] for r in rows if r.verdict == "check"}
    assert {"(b) d=1, n=10", "(c) d=2, n=10", "(c) d=1, n=10"} <= checks
    assert any(q.startswith("(f) every layer") for q in checks)


def test_report_contract_figures_and_rereading_folders(tmp_path):
    rows = _run(tmp_path, TINY)
    doc = json.loads((tmp_path / "report.json").read_text())
    assert doc["contract"] == 2 and doc["budget"] == "tiny" and doc["seeds"] == [0, 1]
    assert all(set(r) == ROW_KEYS for r in doc["rows"]) and len(doc["rows"]) == len(rows)
    assert all(r["verdict"] in {"pass", "fail", "refuted", "check"} for r in doc["rows"])
    assert all(r["threshold"] for r in doc["rows"])

    def row(prefix):
        (found,) = [r for r in doc["rows"] if r["quantity"].startswith(prefix)]
        return found

    realized = row("(b) d=1, n=10: X* is realized")
    assert realized["verdict"] == "check" and realized["trained_mean"] < 1e-8
    gap = row("(c) d=2, n=10: every one-layer LSA")
    assert gap["verdict"] == "check" and 0 < gap["theory"] <= gap["trained_mean"]
    assert row("(c) d=2, n=10: Monte Carlo")["verdict"] == "check"
    for fig in (
        "accuracy_vs_layers",
        "one_layer_sparse_vs_dense",
        "loss_vs_dimension",
        "multilayer_prediction",
        "multilayer_objectives",
    ):
        assert (tmp_path / "figures" / f"{fig}.png").stat().st_size > 1000
    md = (tmp_path / "report.md").read_text()
    assert "## Runs" in md and "iclab's question, not the paper's claim" in md
    again = _run(tmp_path, TINY, train=False)
    assert again == rows
    assert "ding2025" in EXPERIMENTS


def test_budgets_declare_typed_runs():
    quick = EXPERIMENT.runs(EXPERIMENT.budget("quick"), "cpu")
    names = [r.name for r in quick]
    assert len(names) == len(set(names))
    acc = [r for r in quick if r.name.startswith("accuracy_")]
    assert len(acc) == 9 and len({r.config.task.dirichlet_alpha for r in acc}) == 1  # one prior
    full = EXPERIMENT.runs(EXPERIMENT.budget("full"), "cpu")
    assert len(full) > len(quick) - 2
    assert dataclasses.asdict(EXPERIMENT.budget("quick"))["seeds"] == 3


def test_cli_theory_markov_one_layer(capsys):
    from iclab.cli import main

    assert main(["theory", "markov-one-layer", "--d", "1", "--n", "10", "--p", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "f̃(X*) = 0.353801" in out and "residual" in out  # 121/342, realizable
    assert main(["theory", "markov-one-layer", "--p", "1.5"]) == 2
    assert "--p" in capsys.readouterr().err
    assert main(["theory", "markov-one-layer", "--d", "9"]) == 2


def test_plateau_is_the_evidence_for_refuted_rows():
    from types import SimpleNamespace

    from iclab.experiments.ding2025 import plateau

    def run(steps, losses):
        cfg = SimpleNamespace(name="r", train=SimpleNamespace(steps=steps))
        metrics = [{"step": 100 * (i + 1), "test_loss": [v, v]} for i, v in enumerate(losses)]
        return SimpleNamespace(config=cfg, metrics=metrics)

    assert plateau(run(400, [0.5, 0.3, 0.2, 0.199]))[0]  # −0.5% over the last quarter
    ok, text = plateau(run(400, [0.5, 0.3, 0.25, 0.2]))  # still falling by 20%
    assert not ok and "+20.0%" in text
    assert not plateau(run(0, [0.5]))[0]  # an untrained model is never evidence
