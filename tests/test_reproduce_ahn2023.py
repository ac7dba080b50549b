"""``iclab reproduce ahn2023`` on untrained models (every claim must fail) and the report contract;
the CLI (reproduce, train, show, report)."""

import dataclasses
import json
import math

import pytest
import torch
from report_contract import ROW_KEYS

from iclab.experiments.ahn2023 import EXPERIMENT, FULL, QUICK, Budget, Recipe
from iclab.experiments.experiment import run_experiment

# Untrained (0 steps: the run folders hold the initialization), tiny sizes.
ZERO = Recipe(steps=0, batch_size=64, lr=0.01)
UNTRAINED = Budget(
    seeds=2,
    one_layer=ZERO,
    identity=ZERO,
    sweep={1: ZERO, 3: ZERO, 4: dataclasses.replace(ZERO, start_from_layers=3)},
    n_sweep=ZERO,
    layers=(1, 3, 4),
    ns=(10, 20),
    test_size=512,
    tune_size=256,
    theory_samples=20_000,
)


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    out = tmp_path_factory.mktemp("ahn_untrained")
    rows = run_experiment(
        EXPERIMENT, out, budget="tiny", budget_value=UNTRAINED, device="cpu", progress=False
    )
    return out, rows


def test_every_claim_fails_on_untrained_models(untrained):
    _, rows = untrained
    claims = [r for r in rows if r.is_claim]
    assert len(claims) >= 12
    assert [r.quantity for r in claims if r.verdict != "fail"] == []


def test_report_contract_figures_and_rows_from_folders_only(untrained):
    out, rows = untrained
    doc = json.loads((out / "report.json").read_text())
    assert doc["contract"] == 2 and doc["budget"] == "tiny" and doc["seeds"] == [0, 1]
    assert len(doc["rows"]) == len(rows)
    for row in doc["rows"]:
        assert set(row) == ROW_KEYS
        assert row["n_seeds"] == 2 and row["threshold"]
    assert all(r.paper is not None for r in rows)
    md = (out / "report.md").read_text()
    assert "| quantity | theory | paper |" in md
    # exact population losses next to the sample ones: L = 1 has the closed-form optimum
    # a = n/(n+d+1), loss d(d+1)/(n+d+1); L = 3 at n = 10 and 20
    section = md.split("## Exact population losses (L ≤ 3)")[1].split("## ")[0]
    table = [line for line in section.splitlines() if line.startswith("| 1 | 20 |")]
    assert table and f"| {20 / 26:.3g} | – | {5 * 6 / 26:.4g} |" in table[0]
    assert "| 3 | 10 |" in section and "| 3 | 20 |" in section
    # L = 4: the population optimum is only estimated, so the point is plotted, not judged
    assert not [r for r in rows if "L=4" in r.quantity]
    grown = json.loads((out / "runs" / "rotated_L4" / "run.json").read_text())
    assert grown["init_from"]["run_dir"].endswith("rotated_L3_weighted")  # progressive depth
    deep = md.split("## Loss vs layers L")[1].split("## ")[0]
    assert "**L = 4, n = 20: plotted, not judged.**" in deep and "degree 80" in deep
    for fig in ("one_layer_identity_A", "identity_L3_matrices", "loss_vs_layers", "loss_vs_n"):
        assert (out / "figures" / f"{fig}.png").stat().st_size > 1000
    # the analysis reads the run folders only: without training it gives identical rows
    again = run_experiment(
        EXPERIMENT, out, budget="tiny", budget_value=UNTRAINED, device="cpu", progress=False,
        train=False,
    )  # fmt: skip
    # (compared as written to report.json: an untrained model's rows hold NaN, and NaN != NaN)
    assert [r.as_json() for r in again] == [r.as_json() for r in rows]


def test_budgets_declare_typed_runs():
    runs = EXPERIMENT.runs(QUICK, "cpu")
    names = [r.name for r in runs]
    assert len(names) == len(set(names))
    assert {"one_layer_identity", "identity_L3", "rotated_L3", "rotated_L2"} <= set(names)
    full = {r.name: r.config for r in EXPERIMENT.runs(FULL, "cpu")}
    deep = full["rotated_L4"]
    assert deep.model.layers == 4 and deep.train.lr == FULL.sweep[4].lr
    # importance-sampled polishing only where the population optimum is exact (L ≤ 3)
    assert deep.train.polish.tail_scales is None
    assert full["rotated_L3_n10"].train.polish.tail_scales is not None
    assert {"rotated_L3_n10", "rotated_L3_n14"} <= set(full)
    rotated = {r.name: r.config for r in runs}["rotated_L3"]
    polish = rotated.train.polish
    assert polish.steps == QUICK.sweep[3].polish_steps > 0
    assert polish.averaging_steps == QUICK.sweep[3].averaging_steps > 0
    assert polish.batch_size == QUICK.sweep[3].polish_batch
    small = dataclasses.replace(QUICK, layers=(2,), ns=(20,))
    assert "rotated_L2" in {r.name for r in EXPERIMENT.runs(small, "cpu")}


def test_distance_row_adds_sampling_noise_only_at_a_critical_point():
    """A polished run far from the class (one Levenberg–Marquardt step from the init) gets no
    sampling allowance, so its distance to identity fails the row."""
    import types

    from iclab.experiments import ahn2023
    from iclab.experiments.experiment import configure
    from iclab.training import train

    cfg = configure(
        "ahn2023_rotated_L3",
        {"device": "cpu", "n_seeds": 2, "train.steps": 0, "train.test_size": 256,
         "train.compile": False, "train.polish.steps": 1, "train.polish.batch_size": 512},
    )  # fmt: skip
    res = train(cfg, None, progress=False)
    ex = ahn2023.Ahn2023()
    ex._ctx = types.SimpleNamespace(budget=dataclasses.replace(UNTRAINED))
    ex._eigen, ex._theory, ex._noise = {}, {}, {}
    reached = ex._reached(res)
    assert all(dev > ahn2023.TOL_SCALARS for dev in reached.deviation)
    assert ahn2023._distance_from_sampling(res, reached) == [0.0, 0.0]
    row = ahn2023._distance_row(
        "distance", ahn2023._worst_distance_to_identity(res), [0.0, 0.0], paper="p"
    )
    assert row.verdict == "fail"


def test_loss_rows_compare_with_the_theory_weights_on_the_same_prompts():
    """The reference loss is the theory weights' loss on the run's own test prompts: loading a
    model's own matrices gives back its test loss exactly. A model at the theory point passes;
    one whose A_3 is 10% off fails, although with heavy-tailed prompts its own SE is large."""
    from iclab.experiments import ahn2023
    from iclab.experiments.experiment import configure
    from iclab.theory import best_pgd_scalars, pgd_class_matrices, wishart_eigenvalues
    from iclab.training import train

    cfg = configure(
        "ahn2023_rotated_L3",
        {"device": "cpu", "n_seeds": 2, "train.steps": 0, "train.test_size": 4000,
         "train.compile": False},
    )  # fmt: skip
    res = train(cfg, None, progress=False)
    A, B, _ = ahn2023._pgd_matrices(res)
    own = ahn2023._reference(res, A, B)
    ev = ahn2023._evaluate(res)
    assert own.loss == pytest.approx(ev.loss, rel=1e-5)

    best = best_pgd_scalars(3, 5, 20, eigenvalues=wishart_eigenvalues(5, 20, 20_000))
    cov = res.task.covariance.double()
    A_best, B_best = (torch.stack(m) for m in zip(*(pgd_class_matrices(best, c) for c in cov)))
    with torch.no_grad():
        res.model.set_pgd(A_best[:, :, None].float(), B_best[:, :, None].float())
    ref = ahn2023._reference(res, A_best, B_best)
    at_point = ahn2023._evaluate(res)
    kw = dict(theory=best.loss, paper="p", note="n")
    row = ahn2023._loss_row("q", at_point, ref, [best.loss] * 2, **kw)
    assert row.verdict == "pass", row.threshold
    A_off = A_best.clone()
    A_off[:, 2] *= 1.1
    with torch.no_grad():
        res.model.set_pgd(A_off[:, :, None].float(), B_best[:, :, None].float())
    off = ahn2023._evaluate(res)
    assert min(off.loss) > 2 * best.loss
    assert ahn2023._loss_row("q", off, ref, [best.loss] * 2, **kw).verdict == "fail"
    # a seed at no critical point has no reference: NaN, and the row fails
    A_none, B_none = ahn2023._point_matrices([None, (best.a, best.b)], cov.cpu(), 3)
    assert A_none[0].isnan().all() and torch.equal(A_none[1], A_best[1].cpu())
    missing = ahn2023._reference(res, A_none, B_none)
    assert math.isnan(missing.loss[0]) and missing.loss[1] == pytest.approx(ref.loss[1])
    assert ahn2023._loss_row("q", at_point, missing, [best.loss] * 2, **kw).verdict == "fail"
