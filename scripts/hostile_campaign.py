"""A campaign of hostile cases against iclab's promises, counted per family.

    python scripts/hostile_campaign.py [--quick]

Families: bad configurations (every preset × every field × bad values, and broken YAML files),
hard kills (SIGKILL of a training process at random instants), corrupted run folders, two
processes on one folder, a full disk (a write failing with ENOSPC at a random point), bad grid
files for ``iclab sweep`` and sweeps killed at random instants. Each case
states what iclab promises for it and is counted as behaved-as-promised or not; failures are
listed. Nothing here is part of the test suite (the suite has its own, smaller versions).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

RUN_YAML = """\
n_seeds: 2
task: {d: 3, n: 5}
model: {layers: 2, init_std: 0.01}
train: {lr: 0.01, steps: STEPS, batch_size: 256, test_size: 256, eval_every: 2, checkpoint_every: 2}
"""
BAD_VALUES = ["abc", "true", "yes", "no", ".inf", "-.inf", ".nan", "-1", "0", "1e400", "1:30",
              "[1, 2]", "{a: 1}", "null", "1000000000000", "2.5", "'7'", "0x", "~", "[[[]]]"]  # fmt: skip

results: Counter[str] = Counter()
failures: list[str] = []


def record(family: str, ok: bool, what: str) -> None:
    results[(family, ok)] += 1
    if not ok:
        failures.append(f"{family}: {what}")


def cli(*args: str, cwd: Path | None = None) -> tuple[int, str]:
    """Run the iclab CLI in-process; (exit code, stderr)."""
    from iclab.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(list(args))
        except SystemExit as e:  # argparse
            code = int(e.code or 0)
    return code, err.getvalue()


def one_clear_line(err: str) -> bool:
    return (
        err.startswith(("iclab: error: ", "usage:")) and "Traceback" not in err and len(err) < 800
    )


def leaves(data: dict, prefix: str = ""):
    for key, value in data.items():
        if isinstance(value, dict):
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def bad_configs(root: Path, quick: bool) -> None:
    from iclab.config import ConfigError, load_config, preset_names
    from iclab.training.memory import check_memory

    rng = random.Random(1)
    cases = []
    for preset in preset_names():
        for key in leaves(load_config(preset).to_dict()):
            if key in ("name", "device"):
                continue
            for value in BAD_VALUES:
                cases.append((preset, key, value))
    rng.shuffle(cases)
    cases = cases[: 400 if quick else 2000]
    for i, (preset, key, value) in enumerate(cases):
        try:
            check_memory(load_config(preset, [f"{key}={value}"]))
            continue  # a valid value for this field
        except ConfigError:
            pass
        out = root / f"cfg{i}"
        code, err = cli("train", preset, "--out", str(out), "--quiet", "--set", f"{key}={value}")
        named = key.split(".")[-1] in err or "memory:" in err or key in err
        ok = code == 2 and one_clear_line(err) and named and not out.exists()
        record("bad config (--set)", ok, f"{preset} {key}={value}: exit {code} {err[:120]!r}")
    files = {
        "alias bomb": "a: &a [x, x, x, x, x, x, x, x]\n"
        + "".join(f"a{i}: &a{i} [*a, *a, *a, *a, *a, *a]\n" for i in range(8)),
        "duplicate key": "seed: 1\nseed: 2\n",
        "not a mapping": "- 1\n- 2\n",
        "broken YAML": "train: {lr: 0.1\n",
        "tab indentation": "train:\n\tlr: 0.1\n",
        "binary garbage": "\x00\x01\x02\xff",
        "unknown top key": "sed: 1\n",
        "yes for steps": "train: {steps: yes}\n",
        "sexagesimal": "train: {steps: 1:30}\n",
        "octal-looking seed (valid, = 10)": None,
        "huge number": "seed: 1" + "0" * 5000 + "\n",
        "deep nesting": "a: " + "[" * 5000 + "]" * 5000 + "\n",
        "incompatible pair": "task: {kind: linear_dynamics}\nmodel: {kind: lsa}\n",
        "python tag": "seed: !!python/object/apply:os.system ['echo owned']\n",
        "empty kind": "model: {kind: ''}\n",
    }
    for name, text in files.items():
        if text is None:
            continue
        path = root / f"{name.replace(' ', '_')}.yaml"
        path.write_text(text, errors="surrogateescape")
        out = root / f"file_{path.stem}"
        code, err = cli("train", str(path), "--out", str(out), "--quiet")
        ok = code == 2 and one_clear_line(err) and not out.exists()
        record("bad config (file)", ok, f"{name}: exit {code} {err[:160]!r}")


def run_yaml(root: Path, steps: int) -> Path:
    path = root / f"run{steps}.yaml"
    path.write_text(RUN_YAML.replace("STEPS", str(steps)))
    return path


def metrics_of(folder: Path) -> list:
    from iclab.training.checkpoint import RunFolderError, read_metrics

    with contextlib.suppress(RunFolderError):
        return [
            {k: v for k, v in m.items() if k != "wall_s"}
            for m in read_metrics(folder / "metrics.jsonl")
        ]
    return ["unreadable"]


def reference(root: Path, cfg: Path) -> list:
    out = root / "reference"
    code, err = cli("train", str(cfg), "--out", str(out), "--quiet")
    assert code == 0, err
    return metrics_of(out)


def spawn(cfg: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "iclab.cli", "train", str(cfg), "--out", str(out), "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def kills(root: Path, quick: bool) -> None:
    cfg = run_yaml(root, 400)
    ref = reference(root, cfg)
    rng = random.Random(2)
    for i in range(8 if quick else 30):
        out = root / f"kill{i}"
        proc = spawn(cfg, out)
        time.sleep(rng.uniform(2.0, 7.0))  # start-up ~2 s, then ~3 s of training
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        code, err = cli("train", str(cfg), "--out", str(out), "--quiet")
        ok = code == 0 and metrics_of(out) == ref and not list(out.glob(".*.tmp"))
        record("hard kill (SIGKILL)", ok, f"kill {i}: exit {code} {err[:120]!r}")


def corrupt_folders(root: Path) -> None:
    cfg = run_yaml(root, 40)
    ref = reference(root, cfg)
    base = root / "partial"
    proc = spawn(cfg, base)
    proc.wait()
    cases = {}
    ck = "checkpoint.safetensors"
    size = (base / ck).stat().st_size
    for cut in (0, 8, 100, size // 2, size - 1):
        cases[f"checkpoint truncated to {cut} bytes"] = (
            lambda f, cut=cut: (f / ck).write_bytes((f / ck).read_bytes()[:cut]),
            "error",
        )
    cases["checkpoint overwritten with garbage"] = (
        lambda f: (f / ck).write_bytes(os.urandom(4096)),
        "error",
    )
    cases["metrics.jsonl garbage line"] = (
        lambda f: (f / "metrics.jsonl").write_text('{"step": 2}\ngarbage\n'),
        "resume",
    )
    cases["metrics.jsonl deleted"] = (lambda f: (f / "metrics.jsonl").unlink(), "resume")
    cases["run.json garbage"] = (lambda f: (f / "run.json").write_text("{not json"), "resume")
    cases["run.json deleted"] = (lambda f: (f / "run.json").unlink(), "resume")
    cases["model.safetensors deleted"] = (lambda f: (f / "model.safetensors").unlink(), "resume")
    cases["stale temporaries"] = (
        lambda f: [(f / f".checkpoint.safetensors.x{i}.tmp").write_bytes(b"x") for i in range(3)],
        "resume",
    )
    cases["config.yaml edited (lr)"] = (
        lambda f: (f / "config.yaml").write_text(
            (f / "config.yaml").read_text().replace("lr: 0.01", "lr: 0.02")
        ),
        "error",
    )
    cases["config.yaml garbage"] = (lambda f: (f / "config.yaml").write_text("{{{"), "error")
    for name, (damage, expect) in cases.items():
        folder = root / f"corrupt_{abs(hash(name))}"
        shutil.copytree(base, folder)
        damage(folder)
        code, err = cli("train", str(cfg), "--out", str(folder), "--quiet")
        if expect == "resume":
            ok = code == 0 and metrics_of(folder) == ref
        else:
            ok = code in (1, 2) and one_clear_line(err)
        record("corrupted folder (train)", ok, f"{name}: exit {code} {err[:160]!r}")
        code, err = cli("report", str(folder))
        ok = code == 0 or (code in (1, 2) and one_clear_line(err))
        record("corrupted folder (report)", ok, f"{name}: exit {code} {err[:160]!r}")
    for name, path in [("not a run folder", root), ("missing folder", root / "nope")]:
        code, err = cli("report", str(path))
        record(
            "corrupted folder (report)",
            code in (1, 2) and one_clear_line(err),
            f"{name}: {code} {err[:100]!r}",
        )


def concurrency(root: Path, quick: bool) -> None:
    cfg = run_yaml(root, 200)
    ref = reference(root, cfg)
    for i in range(3 if quick else 10):
        out = root / f"pair{i}"
        a = spawn(cfg, out)
        time.sleep(2.5 + 0.1 * i)
        flag = ["--overwrite"] if i % 2 else []
        b = subprocess.run(
            [
                sys.executable,
                "-m",
                "iclab.cli",
                "train",
                str(cfg),
                "--out",
                str(out),
                "--quiet",
                *flag,
            ],
            capture_output=True,
            text=True,
        )
        a.wait()
        refused = b.returncode == 1 and "in use by process" in b.stderr
        finished_first = b.returncode == 0  # the first process had already finished
        ok = (refused or finished_first) and a.returncode == 0 and metrics_of(out) == ref
        record("two writers", ok, f"pair {i}: second exit {b.returncode} {b.stderr[:120]!r}")


def full_disk(root: Path, quick: bool) -> None:
    import iclab.training.checkpoint as ckpt

    cfg = run_yaml(root, 40)
    ref = reference(root, cfg)
    real = ckpt.save_file
    for i in range(5 if quick else 20):
        out = root / f"full{i}"
        calls = {"k": 0}

        def failing(tensors, path, metadata=None, at=i % 21 + 1, calls=calls):
            calls["k"] += 1
            if calls["k"] == at:
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
            real(tensors, path, metadata=metadata)

        ckpt.save_file = failing
        code, err = cli("train", str(cfg), "--out", str(out), "--quiet")
        ckpt.save_file = real
        first_ok = (
            code == 1 and one_clear_line(err) and "No space left" in err
            if calls["k"] >= i % 21 + 1
            else code == 0
        )
        code2, _ = cli("train", str(cfg), "--out", str(out), "--quiet")
        ok = first_ok and code2 == 0 and metrics_of(out) == ref and not list(out.glob(".*.tmp"))
        record("full disk", ok, f"case {i}: exit {code}/{code2} {err[:100]!r}")


def bad_grids(root: Path, quick: bool) -> None:
    """Grid files with a bad value at every swept key of a preset, and malformed grid files: the
    sweep must fail with one line naming the key, before its folder exists."""
    import yaml

    from iclab.config import load_config

    rng = random.Random(3)
    preset = "ahn2023_identity_L3"
    keys = [k for k in leaves(load_config(preset).to_dict()) if k not in ("name", "device")]
    cases = [(k, v) for k in keys for v in BAD_VALUES]
    rng.shuffle(cases)
    for i, (key, raw) in enumerate(cases[: 60 if quick else 300]):
        value = yaml.safe_load(raw) if raw not in ("0x", "1:30") else raw
        grid = {"preset": preset, "set": {"train.steps": 2}, "grid": {key: [value]}}
        path = root / f"grid{i}.yaml"
        path.write_text(yaml.safe_dump(grid))
        out = root / f"sweep{i}"
        # --dry-run validates every point and trains nothing: a valid value (0 where 0 is
        # allowed, or 10¹² polishing steps) would otherwise start a run that never ends
        code, err = cli("sweep", str(path), "--out", str(out), "--quiet", "--dry-run")
        if code == 0:
            continue  # a valid value for this key
        named = key in err or key.split(".")[-1] in err or "memory:" in err
        ok = code == 2 and one_clear_line(err) and named and not out.exists()
        record("bad grid (values)", ok, f"{key}={raw}: exit {code} {err[:140]!r}")
    files = {
        "not a mapping": "- 1\n",
        "no grid": "preset: ahn2023_identity_L3\n",
        "empty list": "preset: ahn2023_identity_L3\ngrid: {model.layers: []}\n",
        "scalar": "preset: ahn2023_identity_L3\ngrid: {model.layers: 3}\n",
        "duplicate value": "preset: ahn2023_identity_L3\ngrid: {model.layers: [2, 2]}\n",
        "unknown preset": "preset: nope\ngrid: {model.layers: [1]}\n",
        "unknown top key": "preset: ahn2023_identity_L3\ngrids: {}\n",
        "key through a value": "preset: ahn2023_identity_L3\ngrid: {seed.x: [1]}\n",
        "huge grid": "preset: ahn2023_identity_L3\ngrid: {seed: "
        + str(list(range(200)))
        + ", train.lr: "
        + str([0.001 * (i + 1) for i in range(60)])
        + "}\n",
        "broken YAML": "preset: [\n",
        "alias": "preset: &p ahn2023_identity_L3\ngrid: {name: [*p]}\n",
        "missing file": None,
    }
    for name, text in files.items():
        path = root / f"{name.replace(' ', '_')}.yaml"
        if text is not None:
            path.write_text(text)
        out = root / f"sweep_{path.stem}"
        code, err = cli("sweep", str(path), "--out", str(out), "--quiet", "--dry-run")
        ok = code == 2 and one_clear_line(err) and not out.exists()
        record("bad grid (file)", ok, f"{name}: exit {code} {err[:160]!r}")


def sweep_kills(root: Path, quick: bool) -> None:
    """SIGKILL a local sweep at random instants; the same command then finishes it with every
    run's metrics equal to an uninterrupted sweep's."""
    import yaml

    grid = {
        "preset": str(run_yaml(root, 120)),
        "grid": {"model.layers": [1, 2], "seed": [0, 3]},
    }
    path = root / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    code, err = cli("sweep", str(path), "--out", str(root / "reference"), "--quiet")
    assert code == 0, err
    runs = sorted(p.name for p in (root / "reference" / "runs").iterdir())
    ref = {r: metrics_of(root / "reference" / "runs" / r) for r in runs}
    rng = random.Random(4)
    for i in range(4 if quick else 12):
        out = root / f"sweep{i}"
        proc = subprocess.Popen(
            [sys.executable, "-m", "iclab.cli", "sweep", str(path), "--out", str(out), "--quiet"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(2.0, 8.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        code, err = cli("sweep", str(path), "--out", str(out), "--quiet")
        same = {r: metrics_of(out / "runs" / r) for r in runs} == ref
        ok = code == 0 and same and (out / "results.csv").is_file()
        record("sweep killed (SIGKILL)", ok, f"kill {i}: exit {code} {err[:120]!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer cases per family")
    every = (bad_configs, bad_grids, corrupt_folders, full_disk, kills, sweep_kills, concurrency)
    names = [f.__name__ for f in every]
    parser.add_argument(
        "--families", nargs="+", choices=names, default=names, help="run only these families"
    )
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="iclab-hostile-"))
    t0 = time.time()
    for family in (f for f in every if f.__name__ in args.families):
        sub = root / family.__name__
        sub.mkdir()
        if family in (bad_configs, corrupt_folders):
            family(sub, args.quick) if family is bad_configs else family(sub)
        else:
            family(sub, args.quick)
        print(f"{family.__name__}: done at {time.time() - t0:.0f} s", flush=True)
    families = sorted({f for f, _ in results})
    total_ok = total = 0
    print(f"\n{'family':28s} {'cases':>6s} {'as promised':>12s}")
    for f in families:
        ok, bad = results[(f, True)], results[(f, False)]
        total_ok, total = total_ok + ok, total + ok + bad
        print(f"{f:28s} {ok + bad:6d} {ok:12d}")
    print(f"{'all':28s} {total:6d} {total_ok:12d} ({100 * total_ok / max(total, 1):.1f}%)")
    for line in failures[:40]:
        print("FAILED", line)
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
