"""``iclab reproduce cheng2024`` end to end on a tiny budget: runs, figures, the report contract."""

import json

import pytest
from report_contract import ROW_KEYS

from iclab.config import load_config
from iclab.experiments.cheng2024 import (
    EXPERIMENT,
    KERNELS,
    Budget,
    learned_functional_gd,
    models_for,
)
from iclab.experiments.experiment import run_experiment
from iclab.experiments.registry import EXPERIMENTS, get_experiment

TINY = Budget(
    seeds=2,
    layers=(1, 2),
    steps=(4, 4),
    linear_steps=(6, 6),
    softmax_steps=(5, 5),
    batch_size=32,
    lr=0.1,
    linear_batch_size=48,
    linear_lr=0.05,
    warmup_steps=1,
    test_size=64,
    tune_size=64,
    align_size=32,
    eval_every=2,
)
UNTRAINED = Budget(
    seeds=2,
    layers=(1, 3),
    steps=(0, 0),
    linear_steps=(0, 0),
    softmax_steps=(0, 0),
    batch_size=32,
    lr=0.1,
    linear_batch_size=32,
    linear_lr=0.1,
    warmup_steps=0,
    test_size=1000,
    tune_size=500,
    align_size=300,
)


def _rows_per_kernel(kernel: str, b: Budget) -> int:
    two_head = kernel in b.two_head_kernels
    # winner, two-head, trained-vs-functional-GD per activation and depth, 2 alignment, identity
    return 1 + two_head + 4 * len(b.layers) + 2 + 1


def test_report_contract_figures_and_resume(tmp_path):
    rows = run_experiment(EXPERIMENT, tmp_path, budget="tiny", budget_value=TINY, device="cpu",
                          progress=False)  # fmt: skip
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["contract"] == 2 and report["budget"] == "tiny" and report["seeds"] == [0, 1]
    assert len(report["rows"]) == len(rows) == sum(_rows_per_kernel(k, TINY) for k in KERNELS)
    for row in report["rows"]:
        assert set(row) == ROW_KEYS
        assert row["verdict"] in {"pass", "fail", "refuted", "check"}
        assert row["threshold"]
    checks = [r for r in rows if "learned kernels" in r.quantity]
    assert len(checks) == len(KERNELS) and all(r.verdict == "check" for r in checks)
    papers = [r for r in rows if r.paper is not None and isinstance(r.paper, float)]
    assert {r.paper for r in papers} >= {-0.15, 0.0}  # linear data, L = 1: linear and exp
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert len(runs) == sum(len(models_for(k, TINY)) for k in KERNELS) * len(TINY.layers)
    assert "exp_exp_linear_L2" in runs and "relu_exp_linear_L2" not in runs
    md = (tmp_path / "report.md").read_text()
    assert "| quantity | theory | paper |" in md and "## Runs" in md and "Bayes" in md
    for fig in ("loss_vs_depth_grid", "loss_vs_depth_all", "alignment"):
        assert (tmp_path / "figures" / f"{fig}.png").stat().st_size > 1000
    # the analysis reads run folders only: without training it gives identical rows
    again = run_experiment(EXPERIMENT, tmp_path, budget="tiny", budget_value=TINY, device="cpu",
                           progress=False, train=False)  # fmt: skip
    assert again == rows


def test_untrained_models_fail_every_claim(tmp_path):
    rows = run_experiment(EXPERIMENT, tmp_path, budget="untrained", budget_value=UNTRAINED,
                          device="cpu", progress=False)  # fmt: skip
    claims = [r for r in rows if r.verdict != "check"]
    assert claims and len(claims) == len(rows) - len(KERNELS)
    assert all(r.verdict == "fail" for r in claims), [
        (r.quantity, r.verdict) for r in claims if r.verdict != "fail"
    ]


def test_identity_holds_for_random_weights():
    import torch

    from iclab.models.kernel_attention import KernelAttention, KernelAttentionConfig

    cfg = KernelAttentionConfig(layers=3, heads=["exp", "linear", "softmax", "relu"], init_std=0.3)
    model = KernelAttention(4, cfg, seeds=(0, 1), dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 6, 4, generator=g, dtype=torch.float64) / 2
    y = torch.randn(2, 5, 6, generator=g, dtype=torch.float64)
    xq = torch.randn(2, 5, 4, generator=g, dtype=torch.float64) / 2
    torch.testing.assert_close(learned_functional_gd(model, x, y, xq), model(x, y, xq))


def test_registered_and_presets_resolve():
    assert "cheng2024" in EXPERIMENTS and get_experiment("cheng2024") is EXPERIMENT
    assert {"quick", "full"} <= set(EXPERIMENT.budgets)
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


def test_each_model_family_gets_its_own_recipe():
    """Linear heads train on their own batch and learning rate, softmax heads for their own
    number of steps, every other head on the shared recipe."""
    cfgs = {r.name: r.config for r in EXPERIMENT.runs(TINY, device="cpu")}
    lin, soft, relu = cfgs["linear_linear_L2"], cfgs["linear_softmax_L2"], cfgs["linear_relu_L2"]
    assert (lin.train.batch_size, lin.train.lr, lin.train.steps) == (48, 0.05, 6)
    assert (soft.train.batch_size, soft.train.lr, soft.train.steps) == (32, 0.1, 5)
    assert (relu.train.batch_size, relu.train.lr, relu.train.steps) == (32, 0.1, 4)


def test_relu_heads_can_get_their_own_steps():
    """``relu_steps`` gives one-head relu models their own steps per depth (the full budget: 2400
    at L = 7, where exp and two-head models keep 1200); a list of the wrong length is refused."""
    from dataclasses import replace

    from iclab.experiments.cheng2024 import FULL

    steps = {r.name: r.config.train.steps for r in EXPERIMENT.runs(FULL, device="cpu")}
    assert steps["relu_relu_L7"] == steps["exp_relu_L7"] == 2400
    assert steps["relu_exp_L7"] == steps["exp_exp_linear_L7"] == 1200
    assert steps["relu_relu_L5"] == 900
    tiny = {r.name: r.config.train.steps for r in EXPERIMENT.runs(TINY, device="cpu")}
    assert tiny["linear_relu_L2"] == tiny["linear_exp_L2"]  # None: the shared steps
    with pytest.raises(ValueError, match="relu_steps"):
        replace(TINY, relu_steps=(1,))
