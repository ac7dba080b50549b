"""``train.init_from``: a run started from another run's weights (progressive depth for LSA).

A deeper LSA started from a shallower run computes exactly that run's function at step 0 (its
extra layers are zero, i.e. identity maps); the started run records its source, resumes without
it, and refuses a source it cannot start from with one line naming the field; executors train the
source first and do not start a run whose source failed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from iclab.config import ConfigError, RunConfig, make_config
from iclab.training import train
from iclab.training.checkpoint import RunFolderError
from iclab.training.executors import Job, LocalExecutor, init_dependencies
from iclab.training.trainer import load_run


def cfg(layers: int, parametrization: str = "pgd", **train_changes) -> RunConfig:
    return make_config(
        {
            "seed": 3,
            "n_seeds": 2,
            "device": "cpu",
            "task": {"kind": "linear_regression", "d": 3, "n": 8, "covariance": "rotated"},
            "model": {"kind": "lsa", "layers": layers, "parametrization": parametrization},
            "train": {
                "optimizer": "adam",
                "lr": 0.02,
                "steps": 20,
                "batch_size": 64,
                "test_size": 256,
                "eval_every": 5,
                "checkpoint_every": 5,
                **train_changes,
            },
        }
    )


def final_metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]


@pytest.mark.parametrize("parametrization", ["pgd", "sparse_pgd", "full", "label_row"])
def test_a_deeper_lsa_starts_as_the_shallower_runs_function(tmp_path, parametrization):
    """At step 0 the grown model's test loss and predictions are the source's final ones."""
    src = train(cfg(2, parametrization), tmp_path / "two", progress=False)
    grown = train(
        cfg(4, parametrization, steps=0, init_from="two"), tmp_path / "four", progress=False
    )
    assert grown.metrics[0]["test_loss"] == pytest.approx(src.metrics[-1]["test_loss"], rel=1e-5)
    batch = src.task.sample(128, "probe", 0)
    with torch.no_grad():
        torch.testing.assert_close(grown.model(batch.x, batch.y, batch.x_query), src.model(batch.x, batch.y, batch.x_query), rtol=1e-5, atol=1e-6)  # fmt: skip
    params = dict(grown.model.named_parameters())
    zero = grown.model.zero_when_grown()
    # one factor only, so the layer can train (the pgd forms: P's fixed 1 is the other)
    assert zero and (zero < set(params) or parametrization in ("pgd", "sparse_pgd"))
    for name, p in src.model.named_parameters():
        assert torch.equal(params[name][:, :2], p)  # the source's layers, as they were
        # the new layers: the factor that makes them identity maps starts at zero
        assert (not params[name][:, 2:].any()) == (name in zero)
    info = json.loads((tmp_path / "four" / "run.json").read_text())
    source_info = json.loads((tmp_path / "two" / "run.json").read_text())
    assert info["init_from"] == {
        "run_dir": str((tmp_path / "two").resolve()),
        "fingerprint": source_info["fingerprint"],
        "step": 20,
    }


@pytest.mark.parametrize("parametrization", ["pgd", "sparse_pgd", "full", "label_row"])
def test_the_new_layers_receive_a_gradient_and_move(tmp_path, parametrization):
    train(cfg(1, parametrization), tmp_path / "one", progress=False)
    grown = train(cfg(3, parametrization, steps=5, init_from="one"), tmp_path / "three", progress=False)  # fmt: skip
    zero = grown.model.zero_when_grown()
    for name, p in grown.model.named_parameters():
        if name in zero:  # left zero, the new layers would never train
            new = p[:, 1:2] if name == "B" else p[:, 1:]  # B_L never reaches the prediction
            assert (new.flatten(2).abs().sum(-1) > 0).all(), name


def test_a_model_with_buffers_starts_from_a_run_of_the_same_shape(tmp_path):
    """Kernel attention keeps its value block as a buffer: only parameters are loaded."""
    data = {
        "seed": 1,
        "device": "cpu",
        "task": {"kind": "gaussian_process", "d": 3, "n": 6, "kernel": "exp"},
        "model": {"kind": "kernel_attention", "layers": 2, "heads": ["exp"]},
        "train": {"steps": 10, "batch_size": 64, "test_size": 128, "eval_every": 5, "lr": 0.01},
    }
    src = train(make_config(data), tmp_path / "src", progress=False)
    data["train"] = {**data["train"], "steps": 0, "init_from": "src"}
    again = train(make_config(data), tmp_path / "again", progress=False)
    assert again.metrics[0]["test_loss"] == pytest.approx(src.metrics[-1]["test_loss"], rel=1e-6)


def test_a_grown_run_trains_and_differs_from_a_random_start(tmp_path):
    train(cfg(2), tmp_path / "two", progress=False)
    grown = train(cfg(3, init_from="two"), tmp_path / "grown", progress=False)
    fresh = train(cfg(3), tmp_path / "fresh", progress=False)
    assert grown.metrics[0]["test_loss"] != fresh.metrics[0]["test_loss"]
    assert all(g < f for g, f in zip(grown.metrics[0]["test_loss"], fresh.metrics[0]["test_loss"]))


def test_a_killed_grown_run_resumes_without_its_source_to_the_same_result(tmp_path):
    train(cfg(2), tmp_path / "two", progress=False)
    train(cfg(3, init_from="two"), tmp_path / "whole", progress=False)

    def stop(step: int) -> None:
        if step == 12:
            raise KeyboardInterrupt

    shutil.copytree(tmp_path / "two", tmp_path / "src")
    with pytest.raises(KeyboardInterrupt):
        train(cfg(3, init_from="src"), tmp_path / "cut", progress=False, on_step=stop)
    shutil.rmtree(tmp_path / "src")  # the started run no longer needs its source
    train(cfg(3, init_from="src"), tmp_path / "cut", progress=False)
    assert final_metrics(tmp_path / "cut") == final_metrics(tmp_path / "whole")
    info = json.loads((tmp_path / "cut" / "run.json").read_text())
    assert info["status"] == "completed" and info["init_from"]["step"] == 20


@pytest.mark.parametrize(
    ("source", "changes", "message"),
    [
        ("missing", {}, "is not a completed run"),
        ("two", {"parametrization": "full"}, "model.parametrization = 'pgd', this run 'full'"),
        ("four", {}, "model.layers = 4, this run 3"),
        ("other_seed", {}, "has another seed"),
        ("run", {}, "this run's own folder"),
    ],
)
def test_a_source_it_cannot_start_from_fails_before_any_work(tmp_path, source, changes, message):
    train(cfg(2), tmp_path / "two", progress=False)
    train(cfg(4, steps=0), tmp_path / "four", progress=False)
    other = cfg(2).to_dict() | {"seed": 4}
    train(make_config(other), tmp_path / "other_seed", progress=False)
    parametrization = changes.get("parametrization", "pgd")
    with pytest.raises(ConfigError) as err:
        train(cfg(3, parametrization, init_from=source), tmp_path / "run", progress=False)
    assert str(err.value).startswith("train.init_from: ") and message in str(err.value)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()  # nothing was written


def test_an_unfinished_source_and_a_missing_folder_are_refused(tmp_path):
    def stop(step: int) -> None:
        if step == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg(2), tmp_path / "two", progress=False, on_step=stop)
    with pytest.raises(ConfigError, match=r"train\.init_from: .* is not a completed run"):
        train(cfg(3, init_from="two"), tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match=r"train\.init_from: needs a run folder"):
        train(cfg(3, init_from="two"), None, progress=False)
    with pytest.raises(ConfigError, match=r"train\.init_from"):
        cfg(3, init_from="  ")


def test_the_local_executor_trains_the_source_first(tmp_path):
    jobs = [
        Job("grown", cfg(3, init_from="two"), tmp_path / "grown"),
        Job("two", cfg(2), tmp_path / "two"),
        Job("alone", cfg(1), tmp_path / "alone"),
    ]
    assert init_dependencies(jobs) == {0: 1}
    done: list[str] = []
    outcomes = LocalExecutor(progress=False).run(jobs, on_done=lambda o: done.append(o.name))
    assert done == ["two", "grown", "alone"]
    assert [o.name for o in outcomes] == ["grown", "two", "alone"] and all(o.ok for o in outcomes)
    assert load_run(tmp_path / "grown").info["init_from"]["step"] == 20


def test_a_run_whose_source_failed_is_not_started(tmp_path):
    bad = cfg(2).to_dict()
    bad["train"]["lr"] = 1e6  # diverges
    jobs = [
        Job("two", make_config(bad), tmp_path / "two"),
        Job("grown", cfg(3, init_from="two"), tmp_path / "grown"),
    ]
    first, second = LocalExecutor(progress=False).run(jobs)
    assert first.status == "diverged"
    assert (
        second.status == "failed"
        and "train.init_from: run 'two' did not complete" in second.message
    )
    assert not (tmp_path / "grown").exists()


def test_runs_that_start_from_each_other_or_a_missing_run_are_refused_before_any_run(tmp_path):
    alone = Job("alone", cfg(1), tmp_path / "alone")
    for jobs, message in [
        (
            [
                Job("a", cfg(2, init_from="b"), tmp_path / "a"),
                Job("b", cfg(2, init_from="a"), tmp_path / "b"),
            ],
            "runs 'a' and 'b' start from each other",
        ),
        ([Job("a", cfg(2, init_from="a"), tmp_path / "a")], "run 'a' names its own folder"),
        ([Job("a", cfg(2, init_from="gone"), tmp_path / "a")], "gone is not a completed run"),
    ]:
        with pytest.raises(ConfigError, match=message):
            LocalExecutor(progress=False).run([alone, *jobs])
        assert not (tmp_path / "alone").exists()  # refused before any run


def test_a_failed_source_blocks_its_whole_chain(tmp_path):
    jobs = [
        Job("bad", cfg(2, lr=1e6), tmp_path / "bad"),
        Job("next", cfg(3, init_from="bad"), tmp_path / "next"),
        Job("last", cfg(4, init_from="next"), tmp_path / "last"),
    ]
    outcomes = LocalExecutor(progress=False).run(jobs)
    assert [o.status for o in outcomes] == ["diverged", "failed", "failed"]
    assert "run 'next' did not complete" in outcomes[2].message


def test_a_run_whose_source_was_retrained_differently_is_not_continued(tmp_path):
    """A started run is tied to the source it started from (its fingerprint in run.json)."""
    train(cfg(2), tmp_path / "two", progress=False)
    job = Job("grown", cfg(3, init_from="two"), tmp_path / "grown")
    assert LocalExecutor(progress=False).run([job])[0].ok
    from iclab.training.executors import is_completed

    assert is_completed(job)
    train(cfg(2, lr=0.05), tmp_path / "two", progress=False, overwrite=True)
    assert not is_completed(job)  # its result came from the old source
    with pytest.raises(RunFolderError, match=r"train\.init_from: .* now holds another run"):
        train(job.config, job.run_dir, progress=False)
    grown = train(job.config, job.run_dir, progress=False, overwrite=True)
    assert grown.info["init_from"]["fingerprint"] == json.loads((tmp_path / "two" / "run.json").read_text())["fingerprint"]  # fmt: skip


def test_resume_from_keeps_the_init_from_it_inherited(tmp_path):
    train(cfg(2), tmp_path / "two", progress=False)

    def stop(step: int) -> None:
        if step == 12:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg(3, init_from="two"), tmp_path / "grown", progress=False, on_step=stop)
    # continued with another learning rate: the parent's init_from is inherited …
    cont = train(cfg(3, init_from="two", lr=0.01), tmp_path / "cont", progress=False, resume_from=tmp_path / "grown")  # fmt: skip
    assert cont.info["status"] == "completed" and cont.info["init_from"]["step"] == 20
    # … and another one is refused: the run starts from its parent's checkpoint
    with pytest.raises(ConfigError, match=r"train\.init_from: .* --resume-from"):
        train(cfg(3, init_from="one", lr=0.01), tmp_path / "other", progress=False, resume_from=tmp_path / "grown")  # fmt: skip


def test_the_ray_executor_starts_a_run_after_its_source(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    from iclab.training.executors import RayExecutor

    monkeypatch.delenv("RAY_ADDRESS", raising=False)

    def jobs(root: Path) -> list[Job]:
        return [
            Job("grown", cfg(3, init_from="two"), root / "grown"),
            Job("deeper", cfg(4, init_from="grown"), root / "deeper"),
            Job("two", cfg(2), root / "two"),
            Job("bad", cfg(2, lr=1e6), root / "bad"),
            Job("after_bad", cfg(3, init_from="bad"), root / "after_bad"),
            Job("after_after_bad", cfg(4, init_from="after_bad"), root / "after_after_bad"),
        ]

    LocalExecutor(threads_per_run=1, progress=False).run(jobs(tmp_path / "local"))
    try:
        outcomes = RayExecutor(workers=2, cpus_per_run=1).run(jobs(tmp_path / "ray"))
    finally:
        if ray.is_initialized():
            ray.shutdown()
    assert [o.status for o in outcomes] == [
        "completed",
        "completed",
        "completed",
        "diverged",
        "failed",
        "failed",
    ]
    for name in ("grown", "deeper", "two"):
        assert final_metrics(tmp_path / "ray" / name) == final_metrics(tmp_path / "local" / name)


def test_a_run_without_init_from_keeps_the_fingerprint_it_had_before_the_field(tmp_path):
    """Folders written before ``train.init_from`` existed still resume: the field at null is
    left out of the fingerprint."""
    import hashlib

    from iclab.training.run_folder import fingerprint

    data = cfg(2).to_dict()
    del data["train"]["init_from"]
    for key in ("precision",):
        del data[key]
    del data["train"]["curriculum"], data["train"]["polish"]["tail_scales"]
    before = hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode())
    assert fingerprint(cfg(2)) == before.hexdigest()
    assert fingerprint(cfg(2, init_from="x")) != fingerprint(cfg(2))
