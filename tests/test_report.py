"""The report contract v2 and the experiment shape (runs declared apart from the analysis)."""

import datetime as dt
import json
from typing import ClassVar

import pytest
from report_contract import ROW_KEYS

from iclab.analysis.report import (
    ReportRow,
    Tolerance,
    check,
    claim,
    compare,
    read_report,
    standard_error,
    write_report,
)
from iclab.experiments.experiment import (
    Context,
    Experiment,
    Run,
    configure,
    run_experiment,
)


def test_standard_error_takes_the_larger_of_seed_spread_and_prompt_noise():
    assert standard_error([1.0, 1.0, 1.0]) == 0.0
    assert standard_error([1.0, 3.0]) == pytest.approx(2**0.5 / 2**0.5)  # std √2 over √2
    # three equal seeds still carry their test prompts' noise
    assert standard_error([1.0, 1.0, 1.0], prompt_se=[0.3, 0.3, 0.3]) == pytest.approx(0.3 / 3**0.5)


@pytest.mark.parametrize(
    ("relation", "values", "ok"),
    [
        ("≈", [1.0, 1.02, 0.98], True),
        ("≈", [1.5, 1.52, 1.48], False),
        ("≤", [0.5, 0.5, 0.5], True),
        ("≤", [1.2, 1.2, 1.2], False),
        ("≥", [1.2, 1.2, 1.2], True),
        ("≥", [0.5, 0.5, 0.5], False),
    ],
)
def test_compare_decides_each_relation(relation, values, ok):
    row = compare("q", values, 1.0, relation, Tolerance(k=3, rel=0.05))
    assert row.verdict == ("pass" if ok else "fail")
    assert "SE" in row.threshold and row.n_seeds == 3


def test_compare_fails_on_nan_and_refutes_only_with_evidence():
    assert compare("q", [float("nan")], 1.0, "≈", Tolerance(rel=10)).verdict == "fail"
    row = compare("q", [2.0, 2.0], 1.0, "≈", Tolerance(rel=0.01), evidence="converged, 5 SE off")
    assert row.verdict == "refuted" and "converged" in row.note
    # evidence never turns a pass into anything else
    assert compare("q", [1.0], 1.0, "≈", Tolerance(), evidence="x").verdict == "pass"


def test_one_sided_threshold_states_its_bound():
    row = compare("q", [-3.8, -3.9, -3.7], -3.884, "≤", Tolerance(k=3, abs=0.1))
    # the tolerance 3·SE + 0.1 is positive; the bound the mean is held to is target + tolerance
    assert row.threshold.endswith("i.e. mean ≤ -3.611") and row.verdict == "pass"
    assert compare("q", [0.3, 0.31], 0.2, "≥", Tolerance(k=3)).threshold.endswith("mean ≥ 0.185")


def test_compare_without_power_cannot_pass():
    # one diverged seed: the mean is off, but so wide an SE would let anything through
    row = compare("q", [1.0, 1.0, 25.0], 1.0, "≈", Tolerance(k=3))
    assert row.verdict == "fail" and "inconclusive" in row.threshold
    assert compare("q", [1.0, 1.1, 0.9], 1.0, "≈", Tolerance(k=3)).verdict == "pass"
    row = compare("q", [0.0, 0.0, 9.0], 0.0, "≈", Tolerance(k=3), max_tolerance=0.1)
    assert row.verdict == "fail"
    # evidence cannot turn an inconclusive row into a refutation ...
    row = compare("q", [0.5, 1.0, 9.0], 1.0, "≤", Tolerance(k=3), evidence="converged")
    assert row.verdict == "fail" and "inconclusive" in row.threshold
    # ... but a mean outside even the too-wide tolerance violates the claim: refuted stands
    row = compare("q", [14.0, 16.0, 22.0], 1.0, "≤", Tolerance(k=3), evidence="converged")
    assert row.verdict == "refuted" and "outside even that" in row.threshold
    assert compare("q", [14.0, 16.0, 22.0], 1.0, "≤", Tolerance(k=3)).verdict == "fail"


def test_check_rows_are_identities_and_fail_when_broken():
    assert check("model = recursion", [1e-16, 2e-16], 1e-12).verdict == "check"
    assert check("model = recursion", [1e-3], 1e-12).verdict == "fail"
    assert claim("trend", [1.0], False, "slope > 0 at 3 SE").verdict == "fail"


def test_row_rejects_unknown_verdict():
    with pytest.raises(ValueError, match="verdict"):
        ReportRow("q", None, None, 1.0, 0.0, 1, "", "maybe")  # type: ignore[arg-type]


def test_write_and_read_report(tmp_path):
    rows = [
        compare("a", [1.0, 1.0], 1.0, "≈", Tolerance(rel=0.1), paper=1.1),
        check("b", 1e-16, 1e-12),
        compare("c", [3.0], 1.0, "≤", Tolerance(), paper="claim in words"),
    ]
    write_report(tmp_path, "T", rows, ["## extra"])
    doc = json.loads((tmp_path / "report.json").read_text())
    assert doc["contract"] == 2 and doc["summary"] == {
        "pass": 1,
        "fail": 1,
        "refuted": 0,
        "check": 1,
    }
    assert all(set(r) == ROW_KEYS for r in doc["rows"])
    assert read_report(tmp_path / "report.json") == rows
    md = (tmp_path / "report.md").read_text()
    assert "| quantity | theory | paper |" in md and "**FAIL**" in md and "## extra" in md
    assert "- **pass**: 1 of 2 claim rows" in md


class _OneRun(Experiment[int]):
    name = "toy"
    title = "toy experiment"
    budgets: ClassVar[dict[str, int]] = {"quick": 5, "full": 10}

    def runs(self, budget, device="auto"):
        changes = {
            "device": device,
            "n_seeds": 2,
            "train.steps": budget,
            "train.batch_size": 64,
            "train.test_size": 64,
            "train.compile": False,
            "train.eval_every": 5,
        }
        return [Run("one", configure("ahn2023_one_layer_identity", changes))]

    def analyze(self, ctx: Context[int]):
        res = ctx.runs["one"]
        ctx.sections.append("## toy section")
        loss = res.metrics[-1]["test_loss"]
        return [compare("test loss", loss, 1.1538, "≈", Tolerance(rel=0.5))]


def test_run_experiment_trains_then_analyses_folders(tmp_path):
    rows = run_experiment(_OneRun(), tmp_path, budget="quick", device="cpu", progress=False)
    doc = json.loads((tmp_path / "report.json").read_text())
    assert doc["budget"] == "quick" and doc["seeds"] == [0, 1] and "torch" in doc["versions"]
    assert doc["extra"]["runs"] == 1 and doc["wall_s"] >= 0
    run_wall = json.loads((tmp_path / "runs" / "one" / "run.json").read_text())["wall_s"]
    assert doc["extra"]["runs_trained_now"] == 1
    assert doc["extra"]["train_wall_s"] == round(run_wall, 1)
    assert dt.datetime.fromisoformat(doc["date"]).tzinfo is not None  # when it started, UTC
    assert doc["git_commit"] is None or len(doc["git_commit"].split("+")[0]) == 12
    assert (tmp_path / "runs" / "one" / "model.safetensors").exists()
    # the analysis reads folders only: without training it gives identical rows
    again = run_experiment(
        _OneRun(), tmp_path, budget="quick", device="cpu", progress=False, train=False
    )
    assert again == rows
    doc = json.loads((tmp_path / "report.json").read_text())
    assert doc["extra"]["runs_trained_now"] == 0
    assert doc["extra"]["train_wall_s"] == round(run_wall, 1)  # the runs' own time, kept


def test_configure_takes_typed_changes_and_validates():
    cfg = configure("ahn2023_rotated_L3", {"model.layers": 2, "train.steps": 0})
    assert cfg.model.layers == 2 and cfg.train.steps == 0
    from iclab.config import ConfigError

    with pytest.raises(ConfigError, match=r"model\.layers"):
        configure("ahn2023_rotated_L3", {"model.layers": 0})


def test_log_band_mirrors_mean_plus_std_in_log_space():
    """A log-axis band stays positive where mean − std is not, and is symmetric in log space."""
    import numpy as np

    from iclab.analysis.figures import log_band

    mean = np.array([4.7e-6, 1.0, 2.0, 0.0])
    std = np.array([5.1e-6, 0.0, 1.0, 0.0])
    lo, hi = log_band(mean, std)
    np.testing.assert_allclose(hi[:3], mean[:3] + std[:3])
    assert (lo[:3] > 0).all() and lo[1] == 1.0
    np.testing.assert_allclose(np.log(hi[:3]) - np.log(mean[:3]), np.log(mean[:3]) - np.log(lo[:3]))
    assert lo[3] == hi[3] == 0.0  # a zero mean has no band
