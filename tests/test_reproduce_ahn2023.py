"""The reproduction pipeline end to end on a tiny budget: runs, figures and the report contract."""

import json

from iclab.cli import main
from iclab.experiments.ahn2023 import Budget, reproduce_ahn2023

TINY = Budget(
    seeds=2,
    one_layer=["train.steps=30", "train.batch_size=256", "train.test_size=512"],
    deep=["train.steps=30", "train.batch_size=256", "train.test_size=512"],
    sweep=["train.steps=20", "train.batch_size=256", "train.test_size=512"],
    layers=(1, 3),
    ns=(5, 20),
    test_size=512,
    extra=("train.compile=false", "train.eval_every=10"),
)


def test_report_contract_and_figures(tmp_path):
    rows = reproduce_ahn2023(tmp_path, budget=TINY, device="cpu", progress=False)
    report = json.loads((tmp_path / "report.json").read_text())
    assert len(report) == len(rows) >= 10
    keys = {"quantity", "theory", "trained_mean", "trained_std", "n_seeds", "verdict", "note"}
    for row in report:
        assert set(row) == keys
        assert row["verdict"] in {"pass", "fail"}
        assert row["n_seeds"] == 2
    md = (tmp_path / "report.md").read_text()
    assert "| quantity | theory |" in md
    for fig in ("one_layer_identity_A", "rotated_L3_matrices", "loss_vs_layers", "loss_vs_n"):
        assert (tmp_path / "figures" / f"{fig}.png").stat().st_size > 1000
    # the runs are resumable: a second call trains nothing new and gives the same report
    again = reproduce_ahn2023(tmp_path, budget=TINY, device="cpu", progress=False)
    assert [r.trained_mean for r in again] == [r.trained_mean for r in rows]


def test_cli_rejects_unknown_experiment_and_bad_override(capsys, tmp_path):
    import pytest

    with pytest.raises(SystemExit):
        main(["reproduce", "nope", "--out", str(tmp_path)])
    assert main(["train", "ahn2023_rotated_L3", "--out", str(tmp_path), "--set", "task.n=0"]) == 2
    err = capsys.readouterr().err
    assert "task.n" in err and "greater than or equal to 1" in err
    assert not (tmp_path / "metrics.jsonl").exists()


def test_cli_train_show_presets_and_report(capsys, tmp_path):
    assert main(["presets"]) == 0
    assert "ahn2023_rotated_L3" in capsys.readouterr().out
    assert main(["show", "ahn2023_one_layer_identity", "--set", "train.lr=0.5"]) == 0
    assert "lr: 0.5" in capsys.readouterr().out
    args = ["train", "ahn2023_one_layer_identity", "--out", str(tmp_path / "r"), "--quiet"]
    args += [
        "--set",
        "train.steps=20",
        "--set",
        "train.batch_size=128",
        "--set",
        "train.test_size=128",
    ]
    assert main(args) == 0
    assert main(["report", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "figures" / "matrices.png").exists()


def test_cli_trains_and_reports_a_kernel_attention_preset(tmp_path):
    args = ["train", "cheng2024_exp_kernel", "--out", str(tmp_path / "k"), "--quiet"]
    args += [
        "--set",
        "train.steps=10",
        "--set",
        "train.batch_size=64",
        "--set",
        "train.test_size=64",
    ]
    assert main(args) == 0
    assert main(["report", str(tmp_path / "k")]) == 0
    assert (tmp_path / "k" / "figures" / "loss.png").exists()
