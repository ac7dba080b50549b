"""Defensive importance sampling of the polishing batches (``train.polish.tail_scales``): the
tilted sampler's weights are unbiased likelihood ratios, weighted Levenberg–Marquardt reduces to
the unweighted one, and a tilted polishing run is reproducible and resumes exactly."""

import dataclasses
import hashlib
import json
import math

import pytest
import torch
from resume_check import assert_resumes_exactly, strip

from iclab.config import ConfigError, make_config
from iclab.tasks import LinearRegressionConfig, LinearRegressionTask
from iclab.training import train
from iclab.training.levenberg_marquardt import averaging_step, lm_iteration
from iclab.training.run_folder import fingerprint
from iclab.training.trainer import build_model, build_task

SCALES = [1.0, 1.3, 1.6]
N_PROMPTS = 200_000


def _task(covariance="identity", seeds=(0, 1), dtype=torch.float32):
    return LinearRegressionTask(
        LinearRegressionConfig(d=3, n=6, covariance=covariance), list(seeds), dtype=dtype
    )


def _sample_covariance(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    return x.transpose(-1, -2) @ x / x.shape[-2]


def _within_4_se(values: torch.Tensor, exact: float) -> None:
    """``values`` (E, N): each member's mean is within 4 standard errors of ``exact``."""
    mean, se = values.mean(-1), values.std(-1) / math.sqrt(values.shape[-1])
    assert ((mean - exact).abs() < 4 * se).all(), (mean.tolist(), se.tolist(), exact)


# ---------------------------------------------------------------- the tilted sampler


@pytest.mark.parametrize("covariance", ["identity", "rotated"])
def test_weighted_moments_of_a_tilted_batch_are_the_population_moments(covariance):
    """E_q[w] = 1, and the weighted means of tr S and tr S² are the Wishart moments of the
    untilted prompts: tr Σ and ((n+1) tr Σ² + (tr Σ)²)/n (d(n+d+1)/n for Σ = I)."""
    task = _task(covariance)
    batch, weights = task.sample_tilted(N_PROMPTS, "polish", 0, SCALES)
    assert weights.shape == (2, N_PROMPTS) and weights.dtype == torch.float64
    assert (weights > 0).all() and (weights <= len(SCALES)).all()  # the 1.0 component bounds w
    n = 6
    S = _sample_covariance(batch.x)
    sigma = task.covariance  # (E, d, d) float64
    tr_sigma = sigma.diagonal(dim1=-1, dim2=-2).sum(-1)
    tr_sigma2 = (sigma * sigma).sum((-1, -2))
    _within_4_se(weights, 1.0)
    for e in range(2):
        _within_4_se((weights * S.diagonal(dim1=-1, dim2=-2).sum(-1))[e : e + 1], tr_sigma[e])
        second = ((n + 1) * tr_sigma2[e] + tr_sigma[e] ** 2) / n
        _within_4_se((weights * (S * S).sum((-1, -2)))[e : e + 1], float(second))
    if covariance == "identity":
        assert float(second) == pytest.approx(3 * (n + 3 + 1) / n)


def test_a_tilted_batch_holds_many_more_tail_prompts():
    """The point of tilting: prompts with a large λ_max(S), rare in a plain batch, are common."""
    task = _task()
    tilted, _ = task.sample_tilted(50_000, "polish", 0, SCALES)
    plain = task.sample(50_000, "polish", 0)
    lam_tilted = torch.linalg.eigvalsh(_sample_covariance(tilted.x))[..., -1]
    lam_plain = torch.linalg.eigvalsh(_sample_covariance(plain.x))[..., -1]
    rare = torch.quantile(lam_plain, 0.999, dim=-1, keepdim=True)  # 1 prompt in 1000
    assert ((lam_tilted > rare).sum(-1) > 50 * (lam_plain > rare).sum(-1)).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tilted_batches_are_deterministic_and_per_member(dtype):
    task = _task("rotated", seeds=(3, 4, 5), dtype=dtype)
    batch, weights = task.sample_tilted(64, "polish", 2, SCALES)
    again, weights_again = task.sample_tilted(64, "polish", 2, SCALES)
    for f in dataclasses.fields(batch):
        a, b = getattr(batch, f.name), getattr(again, f.name)
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
    assert torch.equal(weights, weights_again)
    assert batch.x.dtype == dtype and weights.dtype == torch.float64
    other, _ = task.sample_tilted(64, "polish", 3, SCALES)
    assert not torch.equal(other.x, batch.x)
    for e, seed in enumerate((3, 4, 5)):  # member e sees what a single run with its seed sees
        alone, w_alone = _task("rotated", seeds=(seed,), dtype=dtype).sample_tilted(
            64, "polish", 2, SCALES
        )
        assert torch.equal(alone.x[0], batch.x[e]) and torch.equal(alone.y[0], batch.y[e])
        assert torch.equal(alone.x_query[0], batch.x_query[e])
        assert torch.equal(alone.y_query[0], batch.y_query[e])
        assert torch.equal(w_alone[0], weights[e])


def test_tilting_scales_only_the_context_of_the_plain_draw():
    """The tilted batch reuses the plain stream: the query, w and noise are unchanged, each
    prompt's context is the plain one times one of the scales, and the labels follow the scaled
    x; a single scale 1.0 is the plain batch with unit weights."""
    task = _task("rotated")
    plain = task.sample(500, "polish", 1)
    tilted, _ = task.sample_tilted(500, "polish", 1, SCALES)
    assert torch.equal(tilted.x_query, plain.x_query) and torch.equal(tilted.w, plain.w)
    assert torch.equal(tilted.y_query, plain.y_query)
    t, p = tilted.x.double().flatten(2), plain.x.double().flatten(2)  # (E, B, n·d)
    factor = (t * p).sum(-1) / (p * p).sum(-1)  # one factor per prompt
    torch.testing.assert_close(t, factor[..., None] * p, rtol=1e-5, atol=1e-6)
    table = torch.tensor(SCALES, dtype=torch.float64)
    nearest = (factor[..., None] - table).abs().min(-1)
    assert (nearest.values < 1e-5).all()
    assert set(nearest.indices.flatten().tolist()) == {0, 1, 2}  # every component is drawn
    labels = (tilted.x @ tilted.w.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(tilted.y, labels, rtol=1e-5, atol=1e-5)
    same, ones = task.sample_tilted(500, "polish", 1, [1.0])
    assert torch.equal(same.x, plain.x) and torch.equal(same.y, plain.y)
    assert torch.equal(ones, torch.ones_like(ones))


# ---------------------------------------------------------------- weighted Levenberg–Marquardt


def _model_and_batch():
    cfg = make_config(
        {
            "n_seeds": 2,
            "task": {"d": 3, "n": 6, "covariance": "rotated"},
            "model": {"layers": 2, "parametrization": "pgd", "init_std": 0.1},
        }
    )
    model = build_model(cfg, torch.device("cpu"), torch.float32)
    batch = build_task(cfg, torch.device("cpu"), torch.float32).sample(300, "polish", 0)
    return model, batch


def _params(model):
    return [p.detach().clone() for _, p in model.named_parameters()]


def test_unit_weights_give_exactly_the_unweighted_iterations():
    (a, batch), (b, _) = _model_and_batch(), _model_and_batch()
    ones = torch.ones(2, 300, dtype=torch.float64)
    damping = torch.full((2,), 1e-3, dtype=torch.float64)
    sa, sb = a.prepare(batch), b.prepare(batch)
    for _ in range(2):
        lam_a, loss_a = lm_iteration(a, sa, batch.y_query, damping)
        lam_b, loss_b = lm_iteration(b, sb, batch.y_query, damping, ones)
        assert torch.equal(lam_a, lam_b) and torch.equal(loss_a, loss_b)
        damping = lam_a
    fa = averaging_step(a, sa, batch.y_query, damping, 0.5)
    fb = averaging_step(b, sb, batch.y_query, damping, 0.5, ones)
    assert torch.equal(fa, fb)
    for pa, pb in zip(_params(a), _params(b), strict=True):
        assert torch.equal(pa, pb)


def test_an_integer_weight_is_a_repeated_prompt():
    """Weight 3 on prompt 0 (all others 1) takes the Gauss–Newton step of the batch with prompt 0
    repeated three times: the common factor B'/B cancels from (H + λ·s·I)⁻¹ g."""
    (a, batch), (b, _) = _model_and_batch(), _model_and_batch()
    rep = [0, 0, *range(300)]
    repeated = dataclasses.replace(
        batch, **{k: getattr(batch, k)[:, rep] for k in ("x", "y", "x_query", "y_query", "w")}
    )
    weights = torch.ones(2, 300, dtype=torch.float64)
    weights[:, 0] = 3.0
    damping = torch.full((2,), 1e-3, dtype=torch.float64)
    _, loss_w = lm_iteration(a, a.prepare(batch), batch.y_query, damping, weights)
    _, loss_r = lm_iteration(b, b.prepare(repeated), repeated.y_query, damping)
    torch.testing.assert_close(loss_w * 300 / 302, loss_r, rtol=1e-5, atol=0)
    for pa, pb in zip(_params(a), _params(b), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-6)
    averaging_step(a, a.prepare(batch), batch.y_query, damping, 0.5, weights)
    averaging_step(b, b.prepare(repeated), repeated.y_query, damping, 0.5)
    for pa, pb in zip(_params(a), _params(b), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- tilted polishing runs


def tilted_config(scales=SCALES, **polish):
    return make_config(
        {
            "n_seeds": 2,
            "task": {"d": 3, "n": 6, "covariance": "rotated", "weight_prior": "inverse_covariance"},
            "model": {"layers": 2, "parametrization": "pgd", "init_std": 0.01},
            "train": {
                "lr": 0.01,
                "steps": 10,
                "batch_size": 64,
                "eval_every": 5,
                "checkpoint_every": 5,
                "test_size": 128,
                "polish": {
                    "steps": 3,
                    "averaging_steps": 2,
                    "batch_size": 1000,
                    "tail_scales": scales,
                    **polish,
                },
            },
        }
    )


def test_a_tilted_polishing_run_completes_and_is_reproducible():
    a = train(tilted_config(), None, progress=False)
    b = train(tilted_config(), None, progress=False)
    assert [m["step"] for m in a.metrics] == [5, 10, 11, 12, 13, 14, 15]
    assert strip(a.metrics) == strip(b.metrics)
    assert all(math.isfinite(v) for m in a.metrics for v in m["test_loss"])
    plain = train(tilted_config(None), None, progress=False)
    assert strip(plain.metrics)[:2] == strip(a.metrics)[:2]  # first-order steps untouched
    assert strip(plain.metrics)[2:] != strip(a.metrics)[2:]
    # the single scale 1.0 draws the plain batches with unit weights: plain polishing exactly
    unit = train(tilted_config([1.0]), None, progress=False)
    assert strip(unit.metrics) == strip(plain.metrics)


@pytest.mark.parametrize("kill_at", [11, 14])  # after an LM iteration, after an averaging step
def test_a_tilted_run_killed_while_polishing_resumes_to_identical_metrics(tmp_path, kill_at):
    assert_resumes_exactly(tilted_config(), tmp_path, kill_at, final_step=15)


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    "data, message",
    [
        ({"train": {"polish": {"steps": 2, "tail_scales": [0.5, 1.0]}}}, "finite and >= 1"),
        ({"train": {"polish": {"steps": 2, "tail_scales": [1.5, 2.0]}}}, "must contain 1.0"),
        ({"train": {"polish": {"steps": 2, "tail_scales": [1.0] + [1.5] * 8}}}, "too many"),
        ({"train": {"polish": {"steps": 2, "tail_scales": []}}}, "must contain 1.0"),
        (
            {
                "task": {"kind": "function_class", "d": 3, "n": 6},
                "train": {"polish": {"steps": 2, "tail_scales": [1.0, 1.5]}},
            },
            "task.kind 'function_class' cannot",
        ),
        ({"train": {"polish": {"tail_scales": [1.0, 1.5]}}}, "no polishing"),
    ],
)
def test_bad_tail_scales_fail_in_one_line_naming_the_field(data, message):
    with pytest.raises(ConfigError) as err:
        make_config(data)
    text = str(err.value)
    assert "train.polish.tail_scales" in text and message in text and "\n" not in text
    if "cannot" not in message and "no polishing" not in message:
        assert "allowed: 1 to 8 finite scales >= 1, 1.0 among them" in text


def test_tail_scales_accepts_yaml_integers_and_keeps_older_fingerprints():
    cfg = make_config({"train": {"polish": {"steps": 2, "tail_scales": [1, 1.5]}}})
    assert cfg.train.polish.tail_scales == [1.0, 1.5]
    plain = make_config({"train": {"polish": {"steps": 2}}})
    data = plain.to_dict()
    assert data["train"]["polish"].pop("tail_scales") is None
    del data["train"]["curriculum"], data["precision"]  # the other fields added since format 2
    del data["train"]["init_from"]
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    assert fingerprint(plain) == hashlib.sha256(text.encode()).hexdigest()
    assert fingerprint(cfg) != fingerprint(plain)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_tilted_polishing_runs_on_cuda():
    task = LinearRegressionTask(LinearRegressionConfig(d=3, n=6), [0, 1], device="cuda")
    batch, weights = task.sample_tilted(1000, "polish", 0, SCALES)
    assert batch.x.is_cuda and weights.is_cuda and weights.dtype == torch.float64
    cfg = tilted_config().model_copy(update={"device": "cuda"})
    res = train(cfg, None, progress=False)
    assert res.metrics[-1]["step"] == 15
    assert all(math.isfinite(v) for m in res.metrics for v in m["test_loss"])
