"""Run folders as transactional stores: kills at every write point, foreign checkpoints, two
writers, a full disk, good checkpoints only, continuing a diverged run, clobbering, the umask."""

import errno
import json
import multiprocessing as mp
import os
import time

import pytest
import torch

import iclab.atomic_io as atomic_io
import iclab.training.checkpoint as ckpt
from iclab.config import ConfigError, make_config
from iclab.training import train
from iclab.training.checkpoint import RunFolderError
from iclab.training.run_folder import LOCK, FolderLock
from iclab.training.trainer import TrainingDiverged, load_run


def config(**train):
    base = {
        "lr": 0.01,
        "steps": 12,
        "batch_size": 32,
        "eval_every": 3,
        "checkpoint_every": 4,
        "test_size": 32,
    }
    base.update(train)
    return make_config(
        {
            "n_seeds": 2,
            "task": {"d": 3, "n": 5},
            "model": {"layers": 2, "init_std": 0.01},
            "train": base,
        }
    )


def strip(metrics):
    return [{k: v for k, v in m.items() if k != "wall_s"} for m in metrics]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    res = train(config(), tmp_path_factory.mktemp("ref") / "run", progress=False)
    return strip(res.metrics), {k: v.clone() for k, v in res.model.state_dict().items()}


# ------------------------------------------------------------------ a kill at every write point
WRITE_POINTS = ["save_file", "os.replace", "fsync_folder"]


def _killed_child(out, point, n):
    """Train, and die (os._exit: no handler, no cleanup, like kill -9) at the n-th ``point``."""
    calls = {"k": 0}

    def tick():
        calls["k"] += 1
        if calls["k"] == n:
            os._exit(9)

    if point == "save_file":
        real = ckpt.save_file

        def save_file(*a, **k):
            real(*a, **k)  # the temporary file is complete, not yet renamed
            tick()

        ckpt.save_file = save_file
    elif point == "os.replace":
        real_replace = os.replace

        def replace(src, dst):
            tick()  # before the rename
            real_replace(src, dst)

        atomic_io.os.replace = replace
    else:
        real_fsync = atomic_io.fsync_folder

        def fsync_folder(folder):
            real_fsync(folder)
            tick()  # after the rename reached the disk

        atomic_io.fsync_folder = fsync_folder
    train(config(), out, progress=False)
    os._exit(0)


@pytest.mark.parametrize("point", WRITE_POINTS)
def test_a_kill_at_every_write_point_resumes_to_the_uninterrupted_run(tmp_path, point, reference):
    ref_metrics, ref_state = reference
    ctx = mp.get_context("fork")
    n, killed = 1, 0
    while True:
        out = tmp_path / f"{point}-{n}"
        child = ctx.Process(target=_killed_child, args=(out, point, n))
        child.start()
        child.join(120)
        if child.exitcode == 0:  # the run finished before the n-th write: every point was hit
            break
        assert child.exitcode == 9
        killed += 1
        res = train(config(), out, progress=False)  # resume
        assert strip(res.metrics) == ref_metrics, f"kill at {point} #{n}"
        for k, v in res.model.state_dict().items():
            assert torch.equal(v, ref_state[k]), f"kill at {point} #{n}: {k}"
        assert not list(out.glob(".*.tmp")), "stale temporary files must be removed"
        assert json.loads((out / "run.json").read_text())["status"] == "completed"
        assert strip(ckpt.read_metrics(out / "metrics.jsonl")) == ref_metrics
        n += 1
    # every write was a kill point: save_file writes the 3 checkpoints and the model; every
    # rename (config, run.json ×2, 3 × (checkpoint, metrics), model, metrics) is one too
    assert killed == {"save_file": 4}.get(point, 11)


# ------------------------------------------------------------------ foreign or edited checkpoints
def test_a_checkpoint_of_another_configuration_with_the_same_shapes_is_refused(tmp_path):
    train(config(lr=0.05), tmp_path / "a", progress=False)
    with pytest.raises(KeyboardInterrupt):
        train(config(), tmp_path / "b", progress=False, on_step=_stop_at(5))
    (tmp_path / "b" / "checkpoint.safetensors").write_bytes(
        (tmp_path / "a" / "checkpoint.safetensors").read_bytes()
    )
    with pytest.raises(RunFolderError, match="different configuration"):
        train(config(), tmp_path / "b", progress=False)


def _stop_at(step):
    def hook(done):
        if done == step:
            raise KeyboardInterrupt

    return hook


def test_a_checkpoint_whose_step_was_edited_is_refused(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(config(), out, progress=False, on_step=_stop_at(5))
    tensors, meta = ckpt.load_tensors(out / "checkpoint.safetensors")
    ckpt.save_tensors(out / "checkpoint.safetensors", tensors, {**meta, "step": 10**6})
    with pytest.raises(RunFolderError, match="step 1000000 is not within"):
        train(config(), out, progress=False)


def test_a_checkpoint_with_other_tensors_is_refused(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(config(), out, progress=False, on_step=_stop_at(5))
    tensors, meta = ckpt.load_tensors(out / "checkpoint.safetensors")
    tensors["model.A"] = tensors["model.A"][..., :2, :2].contiguous()
    ckpt.save_tensors(out / "checkpoint.safetensors", tensors, meta)
    with pytest.raises(RunFolderError, match="parameters do not match"):
        train(config(), out, progress=False)


def test_a_corrupt_checkpoint_is_one_clear_error(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(config(), out, progress=False, on_step=_stop_at(5))
    (out / "checkpoint.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(RunFolderError, match="not a readable iclab tensor file"):
        train(config(), out, progress=False)


def test_a_corrupt_metrics_line_names_the_file_and_line(tmp_path):
    out = tmp_path / "run"
    train(config(), out, progress=False)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    lines[1] = '{"step": 6, "test_'
    (out / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(RunFolderError, match=r"metrics\.jsonl, line 2"):
        load_run(out)


# ------------------------------------------------------------------ one writer at a time
def _hold_lock(folder, ready):
    with FolderLock(folder):
        ready.set()
        time.sleep(60)


def test_a_second_process_cannot_write_a_folder_in_use_and_a_dead_holders_lock_is_taken_over(
    tmp_path,
):
    out = tmp_path / "run"
    train(config(), out, progress=False)
    ctx = mp.get_context("fork")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(out, ready))
    holder.start()
    try:
        assert ready.wait(30)
        for overwrite in (False, True):
            with pytest.raises(RunFolderError, match=rf"in use by process {holder.pid}"):
                train(config(), out, progress=False, overwrite=overwrite)
        assert (out / "model.safetensors").exists(), "--overwrite must not delete a folder in use"
    finally:
        holder.kill()
        holder.join()
    assert (out / LOCK).exists()  # the dead holder's lock file is still there …
    res = train(config(), out, progress=False, overwrite=True)  # … and is taken over
    assert res.info["status"] == "completed"


# ------------------------------------------------------------------ a full disk
def test_a_full_disk_loses_nothing_and_the_run_resumes_exactly(tmp_path, monkeypatch, reference):
    ref_metrics, _ = reference
    out = tmp_path / "run"
    real = ckpt.save_file
    calls = {"k": 0}

    def full(tensors, path, metadata=None):
        calls["k"] += 1
        if calls["k"] == 2:
            with open(path, "wb") as f:
                f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(tensors, path, metadata=metadata)

    monkeypatch.setattr(ckpt, "save_file", full)
    with pytest.raises(OSError, match="No space left"):
        train(config(), out, progress=False)
    assert not list(out.glob(".*.tmp"))
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "failed" and "No space left" in info["message"]
    monkeypatch.setattr(ckpt, "save_file", real)
    res = train(config(), out, progress=False)
    assert strip(res.metrics) == ref_metrics


# ------------------------------------------------------------------ good checkpoints, continuing
def test_divergence_keeps_a_checkpoint_that_is_good_and_a_new_run_continues_it(tmp_path):
    bad = config(lr=0.1, optimizer="sgd", steps=40, eval_every=5, checkpoint_every=2)
    with pytest.raises(TrainingDiverged) as err:
        train(bad, tmp_path / "bad", progress=False)
    info = json.loads((tmp_path / "bad" / "run.json").read_text())
    assert info["status"] == "diverged"
    kept = load_run(tmp_path / "bad")
    for name, p in kept.model.named_parameters():
        assert torch.isfinite(p).all(), name
    batch = kept.task.sample(64, "test", 0)
    with torch.no_grad():
        loss = kept.model.loss_prepared(kept.model.prepare(batch), batch)
    assert torch.isfinite(loss).all(), "the kept checkpoint must give a finite loss"
    _, meta = ckpt.load_tensors(tmp_path / "bad" / "checkpoint.safetensors")
    assert f"step {meta['step']}" in str(err.value)
    # continue it with a smaller learning rate into a new folder; the parent is left as it was
    before = (tmp_path / "bad" / "checkpoint.safetensors").read_bytes()
    fixed = config(lr=1e-3, optimizer="adam", steps=40, eval_every=5, checkpoint_every=2)
    res = train(fixed, tmp_path / "fixed", progress=False, resume_from=tmp_path / "bad")
    assert res.info["status"] == "completed"
    assert res.info["parent"]["step"] == meta["step"]
    assert res.info["parent"]["run_dir"] == str((tmp_path / "bad").resolve())
    assert res.metrics[0]["step"] <= meta["step"] < res.metrics[-1]["step"] == 40
    assert (tmp_path / "bad" / "checkpoint.safetensors").read_bytes() == before


def test_resume_from_refuses_a_folder_without_checkpoint_or_the_same_folder(tmp_path):
    with pytest.raises(ConfigError, match="has no checkpoint"):
        train(config(), tmp_path / "new", progress=False, resume_from=tmp_path / "nothing")
    train(config(), tmp_path / "a", progress=False)
    with pytest.raises(ConfigError, match="must differ from --out"):
        train(config(), tmp_path / "a", progress=False, resume_from=tmp_path / "a")


# ------------------------------------------------------------------ the folder itself
def test_out_refuses_an_empty_path_a_file_and_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "metrics.jsonl").write_text("my own data\n")
    for out, message in [
        ("", "empty path"),
        (tmp_path / "mine", "not an iclab run folder"),
        (tmp_path / "mine" / "metrics.jsonl", "is a file"),
    ]:
        with pytest.raises(ConfigError, match=message):
            train(config(), out, progress=False)
    assert (tmp_path / "mine" / "metrics.jsonl").read_text() == "my own data\n"
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["metrics.jsonl"]


def test_a_run_that_fails_before_its_first_step_does_not_block_the_corrected_one(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(config(steps=12), out, progress=False, on_step=_stop_at(1))  # no checkpoint yet
    assert not (out / "checkpoint.safetensors").exists()
    res = train(config(steps=9), out, progress=False)  # another config: nothing to protect
    assert res.info["status"] == "completed"


def test_files_honour_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        import importlib

        importlib.reload(atomic_io)
        assert atomic_io.FILE_MODE == 0o640
    finally:
        os.umask(old)
        importlib.reload(atomic_io)
    out = tmp_path / "run"
    train(config(), out, progress=False)
    mode = 0o666 & ~old
    for name in ("config.yaml", "run.json", "metrics.jsonl", "model.safetensors"):
        assert (out / name).stat().st_mode & 0o777 == mode, name


# ------------------------------------------------------------------ determinism, as promised
@pytest.mark.parametrize(
    ("model", "exact"),
    [
        ({"kind": "lsa", "layers": 2}, True),
        ({"kind": "kernel_attention", "heads": ["exp"], "layers": 2}, True),
        ({"kind": "softmax_transformer", "size": "tiny"}, False),
    ],
)
def test_an_ensemble_member_is_the_single_run_of_its_seed(model, exact):
    base = {
        "task": {"kind": "gaussian_process", "d": 3, "n": 6},
        "model": model,
        "train": {"steps": 20, "batch_size": 64, "test_size": 64, "eval_every": 10},
    }
    ensemble = train(make_config({**base, "seed": 3, "n_seeds": 2}), progress=False)
    single = train(make_config({**base, "seed": 4, "n_seeds": 1}), progress=False)
    # the data are bit-identical for every model
    a, b = ensemble.task.sample(16, "train", 7), single.task.sample(16, "train", 7)
    assert torch.equal(a.x[1], b.x[0]) and torch.equal(a.y_query[1], b.y_query[0])
    member = [m["test_loss"][1] for m in ensemble.metrics]
    alone = [m["test_loss"][0] for m in single.metrics]
    if exact:  # same kernels on the same numbers
        assert member == alone
    else:  # batched matmuls may sum in another order: equal to float32 round-off, amplified
        torch.testing.assert_close(torch.tensor(member), torch.tensor(alone), rtol=1e-3, atol=0)


def test_running_a_completed_run_again_repairs_its_views(tmp_path, reference):
    ref_metrics, ref_state = reference
    out = tmp_path / "run"
    train(config(), out, progress=False)
    (out / "metrics.jsonl").write_text('{"step": 3}\ngarbage\n')
    (out / "model.safetensors").unlink()
    res = train(config(), out, progress=False)
    assert res.steps_run == 0  # nothing retrained
    assert strip(ckpt.read_metrics(out / "metrics.jsonl")) == ref_metrics
    loaded = load_run(out)
    for k, v in loaded.model.state_dict().items():
        assert torch.equal(v, ref_state[k]), k


def test_a_continued_run_that_diverges_at_once_names_no_checkpoint_of_its_own(tmp_path):
    bad = config(lr=0.1, optimizer="sgd", steps=40, eval_every=5, checkpoint_every=2)
    with pytest.raises(TrainingDiverged):
        train(bad, tmp_path / "bad", progress=False)
    with pytest.raises(TrainingDiverged, match="No checkpoint had been written yet"):
        train(bad, tmp_path / "again", progress=False, resume_from=tmp_path / "bad")
    assert not (tmp_path / "again" / "checkpoint.safetensors").exists()
