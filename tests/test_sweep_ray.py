"""The Ray executor: same numbers as the local one, nothing retrained, a killed worker loses
nothing, a two-node cluster on one machine, and a reproduction equal to the sequential one."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_sweep import metrics_without_time, read_csv, write_grid

from iclab.experiments.sweep import expand, load_sweep, run_sweep
from iclab.training.executors import LocalExecutor, Outcome, RayExecutor, make_executor

ray = pytest.importorskip("ray")


@pytest.fixture(autouse=True)
def _own_ray(monkeypatch):
    """No cluster from the environment: each test starts (and stops) its own instance."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    yield
    if ray.is_initialized():
        ray.shutdown()


def same_runs(a: Path, b: Path, names: list[str]) -> None:
    for name in names:
        assert metrics_without_time(a / "runs" / name) == metrics_without_time(b / "runs" / name)


def test_ray_sweep_equals_local_and_a_rerun_trains_nothing(tmp_path, monkeypatch):
    path = write_grid(tmp_path, {"model.layers": [1, 2, 3], "task.n": [6, 10], "seed": [0, 5]})
    spec = load_sweep(path)
    names = [p.name for p in expand(spec)]
    assert len(names) == 12
    run_sweep(spec, tmp_path / "local", LocalExecutor(threads_per_run=1, progress=False))
    seen: list[Outcome] = []
    executor = make_executor("ray", workers=2, cpus_per_run=1)
    assert isinstance(executor, RayExecutor) and executor.threads == 1
    run_sweep(spec, tmp_path / "ray", executor, on_done=seen.append)
    assert sorted(o.name for o in seen) == sorted(names)
    assert all(o.ok and o.steps_run == 30 for o in seen)
    same_runs(tmp_path / "local", tmp_path / "ray", names)
    drop = {"wall_s"}
    local = [{k: v for k, v in r.items() if k not in drop} for r in read_csv(tmp_path / "local" / "results.csv")]  # fmt: skip
    remote = [{k: v for k, v in r.items() if k not in drop} for r in read_csv(tmp_path / "ray" / "results.csv")]  # fmt: skip
    assert local == remote
    for name in names:
        info = json.loads((tmp_path / "ray" / "runs" / name / "run.json").read_text())
        assert info["threads"] == 1 and info["status"] == "completed"
    # again: every run is complete, so Ray is not even started

    def no_cluster(self):
        raise AssertionError("a completed sweep must not start Ray")

    monkeypatch.setattr(RayExecutor, "_connect", no_cluster)
    seen.clear()
    run_sweep(spec, tmp_path / "ray", executor, on_done=seen.append)
    assert [o.steps_run for o in seen] == [0] * 12


def _kill_first_worker(out: Path, killed: list[str], stop: threading.Event) -> None:
    """SIGKILL the process training the first run seen with a checkpoint (its pid is in the
    run folder's lock), once."""
    while not stop.is_set() and not killed:
        for run in sorted((out / "runs").glob("*")) if (out / "runs").exists() else []:
            try:
                info = json.loads((run / "run.json").read_text())
                holder = json.loads((run / ".iclab.lock").read_text())
            except (OSError, ValueError):
                continue
            if info.get("status") == "running" and (run / "checkpoint.safetensors").exists():
                pid = int(holder["pid"])
                if pid != os.getpid():
                    os.kill(pid, signal.SIGKILL)
                    killed.append(run.name)
                    return
        time.sleep(0.02)


def test_a_killed_worker_is_retried_and_resumes_from_its_checkpoint(tmp_path):
    path = write_grid(
        tmp_path, {"model.layers": [2, 3]}, **{"train.steps": 400, "train.checkpoint_every": 10}
    )
    spec = load_sweep(path)
    killed: list[str] = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_first_worker, args=(tmp_path / "ray", killed, stop))
    killer.start()
    try:
        rows = run_sweep(spec, tmp_path / "ray", RayExecutor(workers=2, cpus_per_run=1))
    finally:
        stop.set()
        killer.join()
    assert len(killed) == 1, "the test never found a running worker to kill"
    assert [r["status"] for r in rows] == ["completed", "completed"]
    info = json.loads((tmp_path / "ray" / "runs" / killed[0] / "run.json").read_text())
    assert info["resumed_from_step"] > 0  # the retry resumed; it did not start over
    run_sweep(spec, tmp_path / "local", LocalExecutor(threads_per_run=1, progress=False))
    same_runs(tmp_path / "local", tmp_path / "ray", [p.name for p in expand(spec)])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_two_node_cluster_on_one_machine(tmp_path):
    """`ray start --head` plus a second `ray start --address`: two nodes, one CPU each; the sweep
    joins with --address and spreads over both."""
    port = _free_port()
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",  # what a cluster shares (see the docs' cluster section)
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
    }
    env.pop("RAY_ADDRESS", None)
    common = ["--num-cpus=1", "--disable-usage-stats", "--object-store-memory=100000000"]
    ray_cli = [sys.executable, "-m", "ray.scripts.scripts"]
    address = f"127.0.0.1:{port}"
    try:
        subprocess.run([*ray_cli, "start", "--head", f"--port={port}", "--include-dashboard=false", *common],
                       env=env, check=True, capture_output=True, timeout=120)  # fmt: skip
        subprocess.run([*ray_cli, "start", f"--address={address}", *common],
                       env=env, check=True, capture_output=True, timeout=120)  # fmt: skip
        path = write_grid(tmp_path, {"model.layers": [1, 2], "task.n": [6, 10]})
        done = subprocess.run(
            [sys.executable, "-m", "iclab.cli", "sweep", str(path), "--out", str(tmp_path / "c"),
             "--address", address, "--workers", "2", "--cpus-per-run", "1", "--quiet"],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        assert "4 runs on the ray executor" in done.stdout
        check = subprocess.run(
            [sys.executable, "-c", f"import ray; ray.init(address={address!r}, "
             "log_to_driver=False); print(sum(n['Alive'] for n in ray.nodes()))"],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert check.stdout.strip().splitlines()[-1] == "2"
    finally:
        subprocess.run([*ray_cli, "stop", "--force"], env=env, capture_output=True, timeout=120)
    table = read_csv(tmp_path / "c" / "results.csv")
    assert [r["status"] for r in table] == ["completed"] * 4
    run_sweep(load_sweep(path), tmp_path / "l", LocalExecutor(threads_per_run=1, progress=False))
    same_runs(tmp_path / "l", tmp_path / "c", [r["run"] for r in table])


def test_a_reproduction_on_ray_equals_the_sequential_one(tmp_path):
    from test_reproduce_cheng2024 import TINY

    from iclab.experiments.cheng2024 import EXPERIMENT
    from iclab.experiments.experiment import run_experiment

    kw = {"budget": "tiny", "budget_value": TINY, "device": "cpu", "progress": False}
    seq = run_experiment(EXPERIMENT, tmp_path / "seq", executor=LocalExecutor(1, False), **kw)
    par = run_experiment(EXPERIMENT, tmp_path / "ray", executor=RayExecutor(2), **kw)
    assert [r.__dict__ for r in seq] == [r.__dict__ for r in par]
    report = json.loads((tmp_path / "ray" / "report.json").read_text())
    assert report["extra"]["executor"] == "ray"
