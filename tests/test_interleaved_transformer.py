import pytest
import torch

from iclab.config import ConfigError, make_config
from iclab.models.interleaved_transformer import (
    InterleavedTransformer,
    InterleavedTransformerConfig,
    interleave,
)
from iclab.registry import compatible_models
from iclab.training import train
from iclab.training.trainer import build_task

F64 = torch.float64


def _model(d=3, seeds=(0, 1), dtype=F64, **cfg):
    config = InterleavedTransformerConfig(size="custom", layers=2, heads=2, width=16, **cfg)
    return InterleavedTransformer(d, config, seeds, dtype=dtype)


def _prompts(E=2, B=4, n=6, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(E, B, n, d, generator=g, dtype=F64)
    y = torch.randn(E, B, n, generator=g, dtype=F64)
    xq = torch.randn(E, B, d, generator=g, dtype=F64)
    return x, y, xq


def test_interleave_puts_each_label_after_its_point_padded_with_zeros():
    x, y, _ = _prompts(E=1, B=2, n=3, d=4)
    t = interleave(x, y)
    assert t.shape == (1, 2, 6, 4)
    torch.testing.assert_close(t[:, :, 0::2], x, rtol=0, atol=0)
    torch.testing.assert_close(t[:, :, 1::2, 0], y, rtol=0, atol=0)
    assert (t[:, :, 1::2, 1:] == 0).all()


@pytest.mark.parametrize("n", [1, 5, 9])
def test_every_position_equals_a_separate_forward_on_its_prefix(n):
    """One forward gives the prediction at every prefix: position i equals the query prediction
    of the prompt made of the i pairs before it and x_{i+1} as query (a loop over prefixes)."""
    model = _model()
    x, y, xq = _prompts(n=n)
    with torch.no_grad():
        every = model(x, y, xq)  # (E, B, n+1)
        assert every.shape == (2, 4, n + 1)
        xs = torch.cat([x, xq.unsqueeze(-2)], dim=-2)
        for i in range(n + 1):
            alone = model(x[:, :, :i], y[:, :, :i], xs[:, :, i])[..., -1]
            torch.testing.assert_close(every[..., i], alone, rtol=1e-12, atol=1e-12)
    assert every.std() > 1e-3  # not a constant


def test_a_prediction_never_sees_its_own_label_or_later_points():
    model = _model()
    x, y, xq = _prompts(n=6)
    with torch.no_grad():
        base = model(x, y, xq)
        y2 = y.clone()
        y2[..., 3] += 5.0
        x2 = x.clone()
        x2[..., 4, :] += 1.0
        moved = model(x2, y2, xq)
    torch.testing.assert_close(moved[..., :4], base[..., :4], rtol=0, atol=0)
    assert (moved[..., 4:] - base[..., 4:]).abs().min() > 0


def test_ensemble_member_equals_the_single_model_with_its_seed():
    both = _model(seeds=(3, 4))
    alone = _model(seeds=(4,))
    x, y, xq = _prompts()
    with torch.no_grad():
        torch.testing.assert_close(
            both(x, y, xq)[1], alone(x[1:], y[1:], xq[1:])[0], rtol=1e-12, atol=1e-12
        )


def test_loss_is_the_mean_squared_error_over_every_position():
    cfg = make_config(
        {
            "n_seeds": 2,
            "dtype": "float64",
            "task": {"kind": "linear_regression", "d": 3, "n": 5},
            "model": {"kind": "interleaved_transformer", "size": "tiny", "positions": 12},
        }
    )
    task = build_task(cfg, "cpu", F64)
    batch = task.sample(8, "train", 0)
    model = InterleavedTransformer(3, cfg.model, cfg.seeds, dtype=F64)
    with torch.no_grad():
        every = model(batch.x, batch.y, batch.x_query)
        target = torch.cat([batch.y, batch.y_query.unsqueeze(-1)], dim=-1)
        state = model.prepare(batch)
        torch.testing.assert_close(
            model.loss_prepared(state, batch), (every - target).square().mean((-1, -2))
        )
        torch.testing.assert_close(model.predict_prepared(state), every[..., -1])


def test_fits_a_fixed_batch_and_resumes_exactly(tmp_path):
    def cfg():
        return make_config(
            {
                "n_seeds": 2,
                "task": {"kind": "linear_regression", "d": 2, "n": 6},
                "model": {"kind": "interleaved_transformer", "size": "tiny", "positions": 14},
                "train": {
                    "optimizer": "adam",
                    "lr": 3e-3,
                    "steps": 60,
                    "batch_size": 32,
                    "resample_every": 1000,  # one fixed batch: the loss must fall on it
                    "eval_every": 10,
                    "checkpoint_every": 20,
                    "test_size": 64,
                },
            }
        )

    full = train(cfg(), tmp_path / "full", progress=False)
    first, last = full.metrics[0]["train_loss"], full.metrics[-1]["train_loss"]
    assert all(b < 0.6 * a for a, b in zip(first, last))

    def kill(step):
        if step == 33:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg(), tmp_path / "killed", progress=False, on_step=kill)
    resumed = train(cfg(), tmp_path / "killed", progress=False)
    assert resumed.info["resumed_from_step"] == 20
    strip = [{k: v for k, v in m.items() if k != "wall_s"} for m in full.metrics]
    assert [{k: v for k, v in m.items() if k != "wall_s"} for m in resumed.metrics] == strip


def test_config_errors_name_the_field():
    base = {"task": {"kind": "linear_regression", "d": 3, "n": 10}}
    with pytest.raises(ConfigError, match=r"model\.positions: .*task\.n=10.* 22 positions"):
        make_config({**base, "model": {"kind": "interleaved_transformer", "positions": 20}})
    with pytest.raises(ConfigError, match="causal"):
        make_config({**base, "model": {"kind": "interleaved_transformer", "causal": False}})
    model = _model(positions=8)
    x, y, xq = _prompts(n=4)
    with pytest.raises(ValueError, match=r"model\.positions: a prompt of 5 points needs 10"):
        model(x, y, xq)


def test_registered_for_prompt_tasks():
    assert "interleaved_transformer" in compatible_models("linear_regression")
