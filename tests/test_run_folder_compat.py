"""Run folders written before checkpoints carried their metrics and fingerprint (format 1)."""

import json

import pytest

from iclab.config import make_config
from iclab.training import checkpoint as ckpt
from iclab.training import train


def test_a_format_1_checkpoint_missing_newer_defaults_still_resumes(tmp_path):
    cfg = make_config(
        {
            "task": {"d": 3, "n": 5},
            "model": {"layers": 1},
            "train": {"steps": 8, "eval_every": 2, "checkpoint_every": 4, "batch_size": 32},
        }
    )
    out = tmp_path / "run"

    def stop(step):
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, out, progress=False, on_step=stop)
    tensors, meta = ckpt.load_tensors(out / "checkpoint.safetensors")
    old = dict(meta["config"])
    old["train"] = {
        k: v for k, v in old["train"].items() if k not in ("polish", "shampoo_exponent")
    }
    ckpt.save_tensors(
        out / "checkpoint.safetensors",
        tensors,
        {"step": meta["step"], "optimizer": meta["optimizer"], "config": old},
    )
    res = train(cfg, out, progress=False)
    assert res.info["status"] == "completed" and res.metrics[-1]["step"] == 8
    assert [m["step"] for m in res.metrics] == [2, 4, 6, 8]
    assert json.loads((out / "run.json").read_text())["resumed_from_step"] == 4
