"""A training curriculum: n and active_dims of the training prompts grow linearly in steps."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from iclab.config import ConfigError, RampConfig, make_config
from iclab.tasks.function_class import FunctionClassTask
from iclab.training import train
from iclab.training.run_folder import fingerprint


def _config(steps=12, resample_every=1, **curriculum):
    return make_config(
        {
            "n_seeds": 2,
            "task": {"kind": "function_class", "family": "linear", "d": 6, "n": 12},
            "model": {"kind": "interleaved_transformer", "size": "tiny", "positions": 26},
            "train": {
                "steps": steps,
                "batch_size": 8,
                "resample_every": resample_every,
                "eval_every": 2,
                "checkpoint_every": 4,
                "test_size": 16,
                "curriculum": curriculum,
            },
        }
    )


@given(
    start=st.integers(1, 20),
    inc=st.integers(0, 5),
    interval=st.integers(1, 50),
    end=st.integers(1, 40),
    step=st.integers(0, 10_000),
)
def test_a_ramp_grows_by_inc_every_interval_and_stops_at_the_end(start, inc, interval, end, step):
    ramp = RampConfig(start=start, inc=inc, interval=interval)
    value = ramp.at(step, end)
    assert value == min(end, start + inc * (step // interval))
    assert value <= ramp.at(step + interval, end) <= max(value, end)


def test_training_batches_follow_the_curriculum_and_the_test_set_does_not(monkeypatch):
    seen = []
    sample = FunctionClassTask.sample

    def spy(self, batch_size, purpose, index=0, **kw):
        batch = sample(self, batch_size, purpose, index, **kw)
        active = int((batch.x.abs().sum((0, 1, 2)) > 0).sum())
        seen.append((purpose, index, batch.x.shape[2], active))
        return batch

    monkeypatch.setattr(FunctionClassTask, "sample", spy)
    cfg = _config(
        steps=9,
        resample_every=2,
        n={"start": 4, "inc": 3, "interval": 3},
        active_dims={"start": 2, "inc": 2, "interval": 4},
    )
    res = train(cfg, None, progress=False)
    assert seen[0] == ("test", 0, 12, 6)  # the task's own n and d
    # batches are drawn at steps 0, 2, 4, 6, 8 (every 2): n = 4 + 3⌊s/3⌋, dims = 2 + 2⌊s/4⌋
    assert seen[1:] == [
        ("train", 0, 4, 2),
        ("train", 1, 4, 2),
        ("train", 2, 7, 4),
        ("train", 3, 10, 4),
        ("train", 4, 10, 6),
    ]
    assert [m["curriculum"] for m in res.metrics][:2] == [
        {"n": 4, "active_dims": 2},
        {"n": 4, "active_dims": 2},
    ]


def test_a_run_killed_mid_curriculum_resumes_exactly(tmp_path):
    cfg = _config(steps=12, n={"start": 3, "inc": 2, "interval": 2}, active_dims={"start": 2})
    full = train(cfg, tmp_path / "full", progress=False)

    def kill(step):
        if step == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "killed", progress=False, on_step=kill)
    resumed = train(cfg, tmp_path / "killed", progress=False)
    assert resumed.info["resumed_from_step"] == 4
    strip = [{k: v for k, v in m.items() if k != "wall_s"} for m in full.metrics]
    assert [{k: v for k, v in m.items() if k != "wall_s"} for m in resumed.metrics] == strip
    for name, p in full.model.named_parameters():
        torch.testing.assert_close(dict(resumed.model.named_parameters())[name], p, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("task", "curriculum", "message"),
    [
        ({"kind": "function_class", "d": 6, "n": 12}, {"n": {"start": 13}}, r"n\.start: 13 exceeds the task's n = 12"),
        ({"kind": "function_class", "d": 6, "n": 12, "active_dims": 4}, {"active_dims": {"start": 5}}, r"active_dims\.start: 5 exceeds the task's active_dims = 4"),
        ({"kind": "function_class", "d": 6, "n": 12}, {"n": {"start": 2, "interval": 0}}, r"train\.curriculum\.n\.interval"),
        ({"kind": "linear_regression", "d": 6, "n": 12}, {"n": {"start": 3}}, r"train\.curriculum\.n: task\.kind 'linear_regression' cannot vary n"),
        ({"kind": "function_class", "d": 6, "n": 12}, {"n": {"begin": 3}}, r"train\.curriculum\.n"),
    ],
)  # fmt: skip
def test_bad_curricula_fail_naming_the_field(task, curriculum, message):
    with pytest.raises(ConfigError, match=message):
        make_config({"task": task, "train": {"curriculum": curriculum}})


def test_no_curriculum_leaves_the_fingerprint_of_older_folders():
    plain = make_config({"task": {"kind": "function_class", "d": 6, "n": 12}})
    grown = make_config(
        {
            "task": {"kind": "function_class", "d": 6, "n": 12},
            "train": {"curriculum": {"n": {"start": 2}}},
        }
    )
    data = plain.to_dict()
    assert data["train"]["curriculum"] is None
    import hashlib
    import json

    del data["train"]["curriculum"], data["precision"], data["train"]["polish"]["tail_scales"]
    del data["train"]["init_from"]  # added later still, also left out at its default
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    assert fingerprint(plain) == hashlib.sha256(text.encode()).hexdigest()
    assert fingerprint(grown) != fingerprint(plain)
