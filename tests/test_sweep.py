"""``iclab sweep`` on the local executor: grid validation, results.csv, figure, skip and resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from iclab.cli import main
from iclab.config import ConfigError
from iclab.experiments.sweep import COLUMNS, expand, load_sweep, run_sweep
from iclab.training import train
from iclab.training.executors import LocalExecutor, Outcome, make_executor

FAST = {
    "train.steps": 30,
    "train.eval_every": 10,
    "train.checkpoint_every": 10,
    "train.batch_size": 256,
    "train.test_size": 256,
    "train.compile": False,
    "n_seeds": 2,
    "device": "cpu",
}


def write_grid(tmp: Path, grid: dict, preset: str = "ahn2023_identity_L3", **extra) -> Path:
    path = tmp / "grid.yaml"
    path.write_text(yaml.safe_dump({"preset": preset, "set": {**FAST, **extra}, "grid": grid}))
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def metrics_without_time(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("- 1\n- 2\n", "expected a mapping"),
        ("preset: ahn2023_identity_L3\n", "grid: "),
        ("preset: ahn2023_identity_L3\ngrid: {}\n", "at least one key"),
        ("preset: ahn2023_identity_L3\ngrid: {model.layers: []}\n", "grid.model.layers: an empty"),
        ("preset: ahn2023_identity_L3\ngrid: {model.layers: 3}\n", "grid.model.layers"),
        ("preset: ahn2023_identity_L3\ngrid: {model.layers: [1, 1]}\n", "more than once"),
        ("preset: nope\ngrid: {model.layers: [1]}\n", "unknown preset 'nope'"),
        ("preset: ahn2023_identity_L3\nseeds: 3\ngrid: {model.layers: [1]}\n", "seeds"),
        (
            "preset: ahn2023_identity_L3\nset: {model.layers: 2}\ngrid: {model.layers: [1]}\n",
            "also fixed in set",
        ),
        ("preset: missing.yaml\ngrid: {model.layers: [1]}\n", "does not exist"),
    ],
)
def test_a_bad_grid_file_fails_naming_the_field(tmp_path, content, message):
    path = tmp_path / "grid.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        expand(load_sweep(path))


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ({"model.layrs": [1]}, r"grid point model\.layrs=1: .*layrs"),
        ({"model.layers": [1, 0]}, r"grid point model\.layers=0: model\.layers"),
        ({"task.covariance": ["identity", "diagonal_ish"]}, r"task\.covariance.*identity"),
        ({"train.lr": [0.1, "fast"]}, r'grid point train\.lr="fast": train\.lr'),
        ({"task.n": list(range(1, 200)), "task.d": list(range(1, 60))}, "at most 10000"),
    ],
)
def test_an_invalid_point_fails_before_any_run(tmp_path, grid, message):
    path = write_grid(tmp_path, grid)
    out = tmp_path / "sweep"
    with pytest.raises(ConfigError, match=message):
        run_sweep(load_sweep(path), out)
    assert not out.exists()  # nothing was written


def test_cli_bad_grid_is_one_line_and_exit_2(tmp_path, capsys):
    path = write_grid(tmp_path, {"model.layers": [1, -1]})
    code = main(["sweep", str(path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("iclab: error: grid point model.layers=-1: model.layers")
    assert "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_cli_local_with_workers_is_refused(tmp_path, capsys):
    path = write_grid(tmp_path, {"model.layers": [1]})
    assert main(["sweep", str(path), "--out", str(tmp_path / "o"), "--executor", "local",
                 "--workers", "2"]) == 2  # fmt: skip
    assert "local executor trains one run at a time" in capsys.readouterr().err


def test_sweep_writes_results_figure_and_skips_completed_runs(tmp_path):
    path = write_grid(tmp_path, {"model.layers": [1, 2], "task.n": [6, 10]})
    out = tmp_path / "sweep"
    seen: list[Outcome] = []
    statuses: list[list[str]] = []

    def done(outcome: Outcome) -> None:  # the table on disk grows as runs finish
        seen.append(outcome)
        statuses.append([r["status"] for r in read_csv(out / "results.csv")])

    rows = run_sweep(load_sweep(path), out, LocalExecutor(progress=False), on_done=done)
    assert [o.steps_run for o in seen] == [30] * 4
    assert statuses[0] == ["completed", "pending", "pending", "pending"]
    assert statuses[2] == ["completed", "completed", "completed", "pending"]
    table = read_csv(out / "results.csv")
    assert list(table[0]) == ["model.layers", "task.n", *COLUMNS]
    assert [(r["model.layers"], r["task.n"]) for r in table] == [
        ("1", "6"), ("1", "10"), ("2", "6"), ("2", "10")
    ]  # fmt: skip
    for row, r in zip(table, rows, strict=True):
        run = out / "runs" / row["run"]
        last = metrics_without_time(run)[-1]
        losses = last["test_loss"]
        assert float(row["test_loss_mean"]) == pytest.approx(sum(losses) / 2, rel=1e-12)
        assert float(row["test_loss_std"]) == pytest.approx(abs(losses[0] - losses[1]) / 2**0.5)
        assert row["steps"] == "30" and row["status"] == "completed"
        assert row["run"].startswith(f"model.layers={r['model.layers']}_task.n={r['task.n']}_")
    assert (out / "figures" / "sweep.png").stat().st_size > 10_000
    assert yaml.safe_load((out / "sweep.yaml").read_text())["grid"]["task.n"] == [6, 10]
    # the same sweep again trains nothing and writes the same table
    seen.clear()
    run_sweep(load_sweep(path), out, LocalExecutor(progress=False), on_done=seen.append)
    assert [o.steps_run for o in seen] == [0] * 4
    assert read_csv(out / "results.csv") == table


def test_an_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path):
    path = write_grid(tmp_path, {"model.layers": [2, 3]})
    spec = load_sweep(path)
    victim = expand(spec)[1]
    folder = tmp_path / "a" / "runs" / victim.name

    def stop(step: int) -> None:
        if step == 20:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(victim.config, folder, progress=False, on_step=stop)
    seen: list[Outcome] = []
    run_sweep(spec, tmp_path / "a", LocalExecutor(progress=False), on_done=seen.append)
    assert [o.steps_run for o in seen] == [30, 10]  # the interrupted run took its last 10 steps
    run_sweep(spec, tmp_path / "b", LocalExecutor(progress=False))
    for p in expand(spec):
        a, b = tmp_path / "a" / "runs" / p.name, tmp_path / "b" / "runs" / p.name
        assert metrics_without_time(a) == metrics_without_time(b)
        ta, tb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
        assert ta.keys() == tb.keys()
        assert all(torch.equal(ta[k], tb[k]) for k in ta)


def test_a_diverged_run_is_reported_and_the_others_finish(tmp_path):
    path = write_grid(tmp_path, {"train.lr": [0.01, 1.0e6]})
    rows = run_sweep(load_sweep(path), tmp_path / "s", LocalExecutor(progress=False))
    assert [r["status"] for r in rows] == ["completed", "diverged"]
    table = read_csv(tmp_path / "s" / "results.csv")
    assert table[1]["test_loss_mean"] == "" and table[1]["status"] == "diverged"
    assert main(["sweep", str(path), "--out", str(tmp_path / "s"), "--quiet"]) == 1


def test_preset_may_be_a_config_file_next_to_the_grid(tmp_path):
    (tmp_path / "base.yaml").write_text(
        yaml.safe_dump({"task": {"d": 3, "n": 6}, "model": {"layers": 1}})
    )
    path = write_grid(tmp_path, {"task.n": [4, 6]}, preset="base.yaml")
    points = expand(load_sweep(path))
    assert [(p.config.task.d, p.config.task.n) for p in points] == [(3, 4), (3, 6)]


def test_executor_choice():
    assert make_executor("local").name == "local"
    assert make_executor("auto").name == "local"  # one worker: no cluster needed
    with pytest.raises(ConfigError, match="executor: expected one of auto, local, ray"):
        make_executor("slurm")
    with pytest.raises(ConfigError, match="workers: must be >= 1"):
        make_executor("auto", workers=0)
    with pytest.raises(ConfigError, match="threads-per-run: must be >= 1"):
        make_executor("local", threads_per_run=0)


def test_cli_dry_run_lists_the_runs_and_writes_nothing(tmp_path, capsys):
    path = write_grid(tmp_path, {"model.layers": [1, 2]}, **{"train.polish.steps": 10**12})
    out = tmp_path / "o"
    assert main(["sweep", str(path), "--out", str(out), "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all(": to train, 30 steps, ~" in line for line in lines[:2])
    assert lines[-1].startswith("sweep (dry run): 2 runs, 0 completed, nothing written")
    assert not out.exists()  # a 10¹²-step polish is validated, never started
    # after a real sweep of one point, the plan says which are done
    one = write_grid(tmp_path, {"model.layers": [1]})
    assert main(["sweep", str(one), "--out", str(out), "--quiet"]) == 0
    both = write_grid(tmp_path, {"model.layers": [1, 2]})
    capsys.readouterr()
    assert main(["sweep", str(both), "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert ": completed, 30 steps" in text and ": to train, 30 steps" in text
    assert "2 runs, 1 completed" in text


def test_a_sweep_grows_from_a_completed_run_and_refuses_a_missing_one(tmp_path):
    """``train.init_from`` in a sweep: every point starts from one trained run (progressive
    depth); a missing source is refused before the sweep folder is written."""
    base = run_sweep(load_sweep(write_grid(tmp_path, {"model.layers": [1]})), tmp_path / "one")
    source = (tmp_path / "one" / "runs" / base[0]["run"]).resolve()
    grid = write_grid(tmp_path, {"model.layers": [2, 3]}, **{"train.init_from": str(source)})
    rows = run_sweep(load_sweep(grid), tmp_path / "grown", LocalExecutor(progress=False))
    for row in rows:
        info = json.loads((tmp_path / "grown" / "runs" / row["run"] / "run.json").read_text())
        assert row["status"] == "completed" and info["init_from"]["run_dir"] == str(source)
    missing = write_grid(
        tmp_path, {"model.layers": [2]}, **{"train.init_from": str(tmp_path / "no")}
    )
    with pytest.raises(ConfigError, match=r"train\.init_from: .* is not a completed run"):
        run_sweep(load_sweep(missing), tmp_path / "never")
    assert not (tmp_path / "never").exists()
