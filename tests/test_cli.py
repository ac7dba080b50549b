"""The ``iclab`` command: every command's --help explains its options, every bad input gets one
line naming the option or field (exit status 2, no traceback)."""

import math

import pytest

from iclab.cli import build_parser, main

COMMANDS = ["presets", "kinds", "show", "train", "report", "reproduce", "sweep", "theory"]


def _subparsers():
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return parser, action.choices


def test_every_command_is_tested_here():
    _, choices = _subparsers()
    assert sorted(choices) == sorted(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_explains_every_option(command, capsys):
    _, choices = _subparsers()
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for action in choices[command]._actions:
        if action.dest == "help":
            continue
        assert action.help, f"{command}: option {action.dest} has no help text"
        if action.option_strings:
            assert action.option_strings[0] in out
        else:  # a positional: its name or its choices
            assert (action.metavar or action.dest) in out or all(c in out for c in action.choices)


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert all(c in out for c in COMMANDS) and "--import" in out


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert captured.err.startswith("iclab: error: ")
    return captured.err


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["show", "no_such_preset"], "preset: unknown preset 'no_such_preset'"),
        (["show", "ahn2023_rotated_L3", "--set", "train.lr"], "override: expected KEY=VALUE"),
        (["show", "ahn2023_rotated_L3", "--set", "model.kind=mamba"], "model.kind: unknown kind"),
        (["show", "missing.yaml"], "config: file 'missing.yaml' does not exist"),
        (
            ["show", "ahn2023_rotated_L3", "--set", "task={kind: linear_dynamics}"],
            "task.kind 'linear_dynamics' samples LinearDynamicsBatch but model.kind 'lsa'",
        ),
        (["theory", "mesa", "--T", "2"], "--T: must be >= 3"),
        (["theory", "mesa", "--sigma", "-1"], "sigma: must be a finite number > 0"),
        (["theory", "mesa", "--d", "0"], "d: must be an integer >= 1"),
        (["theory", "markov-one-layer", "--p", "1.5"], "--p: must be in (0, 1)"),
        (["theory", "functional-gd", "--depths", "a"], "--depths: expected a comma list"),
        (["--import", "no_such_module_xyz", "kinds"], "--import: cannot import"),
        (["--import", "nowhere/plugin.py", "kinds"], "--import: file 'nowhere/plugin.py'"),
        (["sweep", "missing.yaml", "--out", "never"], "grid: file 'missing.yaml' does not exist"),
        (["reproduce", "ahn2023", "--out", "never", "--workers", "0"], "workers: must be >= 1"),
        (
            ["reproduce", "ahn2023", "--out", "never", "--executor", "local", "--workers", "3"],
            "workers: the local executor trains one run at a time",
        ),
        (
            ["reproduce", "ahn2023", "--out", "never", "--executor", "ray", "--retries", "-1"],
            "retries: must be >= 0",
        ),
        (
            ["reproduce", "ahn2023", "--out", "never", "--executor", "ray", "--gpus-per-run", "-1"],
            "gpus-per-run: must be >= 0",
        ),
    ],
)
def test_bad_input_gets_one_line_naming_the_field(argv, names, capsys):
    err = _error(capsys, argv)
    assert names in err


def test_report_on_a_folder_that_is_not_a_run(capsys, tmp_path):
    assert "is not a run folder" in _error(capsys, ["report", str(tmp_path)])


def test_unknown_experiment_is_refused_by_argparse(capsys, tmp_path):
    with pytest.raises(SystemExit) as done:
        main(["reproduce", "nope", "--out", str(tmp_path)])
    assert done.value.code == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def test_kinds_lists_every_registered_kind_with_its_pairs(capsys):
    from iclab import registry

    assert main(["kinds"]) == 0
    out = capsys.readouterr().out
    assert all(k in out for k in [*registry.TASKS, *registry.MODELS])
    line = next(ln for ln in out.splitlines() if ln.strip().startswith("linear_dynamics"))
    assert line.rstrip().endswith("models: causal_linear_attention")


def test_theory_mesa_prints_the_limit_of_ab(capsys):
    from iclab.theory.linear_dynamics.mesa_optimizer import harmonic_number

    assert main(["theory", "mesa", "--d", "5", "--T", "100"]) == 0
    out = capsys.readouterr().out
    # real Gaussian x_1 (σ = 1): κ4 = 3, κ6 = 15, κ24 = 3
    c_star = 98 * 3 / (98 * 15 + 4 * 3 * harmonic_number(98))
    assert f"= {c_star:.6g}; T → ∞: 0.2" in out
    assert "exactly at every T: no; as T → ∞: no" in out
    assert main(["theory", "mesa", "--x1", "sparse", "--scale", "2", "--T", "50"]) == 0
    out = capsys.readouterr().out
    assert f"= {1 / 4:.6g}; T → ∞: {1 / 4:.6g}" in out and "exactly at every T: yes" in out
    assert math.isfinite(c_star)


def test_import_registers_a_users_kinds_for_every_command(capsys, monkeypatch):
    from pathlib import Path

    from iclab import registry

    monkeypatch.setattr(registry, "TASKS", dict(registry.TASKS))
    monkeypatch.setattr(registry, "MODELS", dict(registry.MODELS))
    example = Path(__file__).resolve().parents[1] / "examples" / "custom_task.py"
    argv = ["--import", str(example), "show", "ahn2023_rotated_L3"]
    argv += ["--set", "task={kind: sine_regression}", "--set", "model={kind: kernel_smoother}"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "kind: sine_regression" in out and "kind: kernel_smoother" in out


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
