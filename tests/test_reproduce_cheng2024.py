"""``iclab reproduce cheng2024`` end to end on a tiny budget: runs, figures, the report contract."""

import json

import pytest

from iclab.config import load_config
from iclab.experiments.cheng2024 import KERNELS, MODELS, Budget, reproduce_cheng2024
from iclab.experiments.registry import EXPERIMENTS

TINY = Budget(
    seeds=2,
    layers=(1, 2),
    train=(
        "train.steps=6",
        "train.batch_size=32",
        "train.test_size=64",
        "train.eval_every=3",
        "train.checkpoint_every=3",
        "train.schedule.warmup_steps=1",
    ),
    tune_size=64,
    align_size=32,
)


def test_report_contract_figures_and_resume(tmp_path):
    rows = reproduce_cheng2024(tmp_path, budget=TINY, device="cpu", progress=False)
    report = json.loads((tmp_path / "report.json").read_text())
    # per data kernel: winner, two-head, 4 model-vs-functional-GD rows, 2 alignment rows
    assert len(report) == len(rows) == len(KERNELS) * 8
    keys = {"quantity", "theory", "trained_mean", "trained_std", "n_seeds", "verdict", "note"}
    for row in report:
        assert set(row) == keys
        assert row["verdict"] in {"pass", "fail"}
        assert row["n_seeds"] == 2
    winners = [r for r in report if "best single-head activation" in r["quantity"]]
    assert len(winners) == 3 and all("winner **" in r["note"] for r in winners)
    for r in winners:  # the verdict is exactly "the matched activation won"
        kernel = r["quantity"].split()[0]
        assert (r["verdict"] == "pass") == (f"winner **{kernel}**" in r["note"])
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert len(runs) == len(KERNELS) * len(MODELS) * len(TINY.layers)
    assert "exp_exp_linear_L2" in runs
    md = (tmp_path / "report.md").read_text()
    assert "| quantity | theory |" in md and "## Runs" in md and "Bayes" in md
    for fig in ("loss_vs_depth_grid", "loss_vs_depth_all", "alignment"):
        assert (tmp_path / "figures" / f"{fig}.png").stat().st_size > 1000
    # the runs are resumable: a second call trains nothing new and gives the same report
    again = reproduce_cheng2024(tmp_path, budget=TINY, device="cpu", progress=False)
    assert [r.trained_mean for r in again] == [r.trained_mean for r in rows]


def test_registered_and_presets_resolve():
    assert "cheng2024" in EXPERIMENTS
    for kernel in KERNELS:
        cfg = load_config(f"cheng2024_{kernel}_kernel")
        assert cfg.task.kind == "gaussian_process" and cfg.task.kernel[0].name == kernel
        assert cfg.model.heads == [kernel]
    assert load_config("cheng2024_two_head").model.heads == ["exp", "linear"]


@pytest.mark.parametrize(
    "override, field",
    [
        ("task.kernel=rbf", "task.kernel"),
        ("model.heads=[tanh]", "model.heads"),
        ("task.d=0", "task.d"),
        ("task.n=0", "task.n"),
        ("task.kernel=[{name: exp, bandwidth: -1}]", "task.kernel"),
    ],
)
def test_bad_input_fails_before_any_work_naming_the_field(override, field, tmp_path):
    from iclab.config import ConfigError

    with pytest.raises(ConfigError) as err:
        load_config("cheng2024_exp_kernel", [override])
    assert field in str(err.value)


def test_cli_theory_functional_gd_table_and_bad_options(capsys):
    from iclab.cli import main

    args = ["theory", "functional-gd", "--kernel", "relu", "--depths", "1,3", "--prompts", "300"]
    assert main([*args, "--activations", "relu,linear"]) == 0
    out = capsys.readouterr().out
    assert "Bayes (GP posterior mean)" in out and "L=3" in out
    rows = {ln.split()[0]: [float(v) for v in ln.split()[1:]] for ln in out.splitlines()[-2:]}
    assert set(rows) == {"relu", "linear"}
    assert rows["relu"][1] < rows["linear"][1]  # matched kernel wins on relu data at L=3
    for bad, field in (
        (["--kernel", "rbf"], "kernel"),
        (["--activations", "tanh"], "--activations"),
        (["--n", "0"], "n"),
        (["--depths", "0"], "--depths"),
    ):
        assert main(["theory", "functional-gd", *bad]) == 2
        assert field in capsys.readouterr().err
