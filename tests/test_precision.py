"""precision: float32 (TF32 off) by default, tf32 and bf16 explicit, recorded in run.json with
the thread count and peak memory; configurations that make no sense are refused."""

from __future__ import annotations

import json

import pytest
import torch

from iclab.config import ConfigError, load_config, make_config
from iclab.device import matmul_precision
from iclab.training import train
from iclab.training.run_folder import fingerprint

SHORT = ["train.steps=6", "train.eval_every=3", "train.batch_size=64", "train.test_size=64",
         "train.compile=false", "device=cpu"]  # fmt: skip


def transformer(precision: str):
    return make_config({
        "precision": precision, "device": "cpu", "n_seeds": 2,
        "task": {"kind": "linear_regression", "d": 3, "n": 6},
        "model": {"kind": "softmax_transformer", "size": "tiny"},
        "train": {"optimizer": "adam", "lr": 0.001, "steps": 6, "eval_every": 3,
                  "batch_size": 64, "test_size": 64},
    })  # fmt: skip


def test_default_is_float32_and_run_json_records_precision_threads_and_memory(tmp_path):
    cfg = load_config("ahn2023_identity_L3", SHORT)
    assert cfg.precision == "float32"
    train(cfg, tmp_path / "r", progress=False)
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    assert info["precision"] == "float32"
    assert info["threads"] == torch.get_num_threads()
    assert info["peak_memory"]["cpu_max_rss_bytes"] > 50 * 2**20  # python + torch alone
    assert "cuda_max_allocated_bytes" not in info["peak_memory"]  # a CPU run


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["precision=bf16"], r"precision: 'bf16' is not allowed for model.kind 'lsa'.*softmax_transformer"),
        (["precision=tf32", "dtype=float64"], "precision: 'tf32' lowers float32 arithmetic"),
        (["precision=fp8"], "precision"),
    ],
)  # fmt: skip
def test_precision_that_makes_no_sense_is_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("ahn2023_identity_L3", overrides)


def test_float32_turns_tf32_off_during_the_run_and_restores_the_flags():
    before = torch.backends.cudnn.allow_tf32
    seen = []
    cfg = load_config("ahn2023_identity_L3", SHORT)
    train(cfg, progress=False, on_step=lambda s: seen.append(torch.backends.cudnn.allow_tf32))
    assert seen == [False] * 6  # torch's cuDNN default is True: float32 means no TF32
    assert torch.backends.cudnn.allow_tf32 == before
    with matmul_precision("tf32", torch.device("cuda")) as effective:
        assert effective == "tf32" and torch.backends.cuda.matmul.allow_tf32
    assert torch.backends.cudnn.allow_tf32 == before


def test_tf32_has_no_effect_on_cpu_and_says_so(tmp_path):
    a = train(load_config("ahn2023_identity_L3", SHORT), tmp_path / "a", progress=False)
    b = train(load_config("ahn2023_identity_L3", [*SHORT, "precision=tf32"]), tmp_path / "b",
              progress=False)  # fmt: skip
    assert [m["test_loss"] for m in a.metrics] == [m["test_loss"] for m in b.metrics]
    info = json.loads((tmp_path / "b" / "run.json").read_text())
    assert info["precision"] == "float32 (tf32 has no effect on cpu)"


def test_bf16_trains_the_softmax_transformer_under_autocast():
    f32 = train(transformer("float32"), progress=False)
    bf16 = train(transformer("bf16"), progress=False)
    a = torch.tensor([m["train_loss"] for m in f32.metrics])
    b = torch.tensor([m["train_loss"] for m in bf16.metrics])
    assert torch.isfinite(b).all()
    assert not torch.equal(a, b)  # the forward really ran in bfloat16 …
    assert torch.allclose(a, b, rtol=0.05)  # … and computed the same losses to bf16 accuracy
    # evaluation stays float32: the test loss of bf16-trained weights is a float32 number
    assert all(isinstance(v, float) for v in bf16.metrics[-1]["test_loss"])


def test_the_default_precision_keeps_older_fingerprints():
    cfg = load_config("ahn2023_identity_L3", SHORT)
    data = cfg.to_dict()
    del data["precision"]
    del data["train"]["curriculum"]  # added later still, also left out at its default
    del data["train"]["polish"]["tail_scales"]  # likewise
    del data["train"]["init_from"]  # likewise
    import hashlib

    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    assert fingerprint(cfg) == hashlib.sha256(text.encode()).hexdigest()
    tf32 = load_config("ahn2023_identity_L3", [*SHORT, "precision=tf32"])
    assert fingerprint(tf32) != fingerprint(cfg)
