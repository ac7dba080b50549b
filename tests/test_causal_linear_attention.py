"""Causal linear attention (Zheng et al. 2024): exactness, the mesa-optimizer, seeding, training."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from iclab.models.causal_linear_attention import (
    CausalLinearAttention,
    CausalLinearAttentionConfig,
    naive_predict_all,
    tokens,
)
from iclab.tasks.linear_dynamics import LinearDynamicsConfig, LinearDynamicsTask
from iclab.theory.linear_dynamics.mesa_optimizer import mesa_optimizer_prediction

F64 = torch.float64


def _data(E=2, m=6, T=9, d=3, transition="complex_diagonal_unitary", x1="gaussian", seed=0):
    cfg = LinearDynamicsConfig(d=d, T=T, transition=transition, x1=x1)
    return LinearDynamicsTask(cfg, seeds=range(seed, seed + E), dtype=F64).sample(m, "t").x


def _random_complex(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.complex(
        torch.randn(shape, generator=g, dtype=F64), torch.randn(shape, generator=g, dtype=F64)
    )


def test_config_validation():
    with pytest.raises(ValidationError, match="init"):
        CausalLinearAttentionConfig(init="uniform")
    with pytest.raises(ValidationError, match="trainable"):
        CausalLinearAttentionConfig(trainable="some")
    with pytest.raises(ValidationError, match="a0"):
        CausalLinearAttentionConfig(a0=float("nan"))
    with pytest.raises(ValidationError, match="init_std"):
        CausalLinearAttentionConfig(init_std=-1.0)
    with pytest.raises(ValueError, match="d: must be"):
        CausalLinearAttention(0, CausalLinearAttentionConfig())
    model = CausalLinearAttention(3, CausalLinearAttentionConfig(), seeds=[0, 1])
    with pytest.raises(ValueError, match=r"x: expected shape \(E=2"):
        model.predict_all(torch.zeros(1, 4, 5, 3))


def test_tokens_and_block_convention():
    x = _random_complex((1, 1, 4, 2), 0)
    e = tokens(x)
    torch.testing.assert_close(e[..., 0, 2:], torch.zeros(1, 1, 2, dtype=x.dtype))
    torch.testing.assert_close(e[..., 1:, 2:], x[..., :-1, :])
    m = CausalLinearAttention(2, CausalLinearAttentionConfig(a0=2.0, b0=3.0), dtype=F64)
    assert m.W_KQ.dtype == torch.complex128 and m.W_PV.shape == (1, 2, 4)
    eye = torch.eye(2, dtype=torch.complex128)
    torch.testing.assert_close(m.W_KQ[0, 2:, :2], 2 * eye)  # block (2,1): rows x_{t-1}, cols x_t
    torch.testing.assert_close(m.W_PV[0, :, :2], 3 * eye)  # block (1,1)
    assert m.W_KQ[0].abs().sum() == 4 and m.W_PV[0].abs().sum() == 6
    torch.testing.assert_close(m.ab(), torch.tensor([6.0], dtype=F64))
    torch.testing.assert_close(m.ab_complex(), torch.tensor([6.0 + 0j], dtype=torch.complex128))


def test_mesa_optimizer_prediction_matches_double_loop():
    x = _random_complex((2, 3, 6, 2), 1)
    c = torch.tensor([0.7, -1.3], dtype=F64)
    y = mesa_optimizer_prediction(x, c[:, None])
    torch.testing.assert_close(y[..., 0, :], torch.zeros_like(y[..., 0, :]))
    for t in range(2, 7):  # 1-based
        W = sum(
            x[..., i, :, None] * x[..., i - 1, None, :].conj() for i in range(1, t)
        )  # Σ_{i<t} x_{i+1} x_iᴴ
        ref = (W @ x[..., t - 1, :, None])[..., 0] / (t - 1) * c[:, None, None]
        torch.testing.assert_close(y[..., t - 1, :], ref, atol=1e-12, rtol=0)


@pytest.mark.parametrize("transition", ["complex_diagonal_unitary", "real_orthogonal", "stable"])
def test_diagonal_model_is_the_mesa_optimizer(transition):
    x = _data(E=2, m=8, T=30, d=4, transition=transition)
    cfg = CausalLinearAttentionConfig(init="diagonal", a0=0.5, b0=1.5)
    model = CausalLinearAttention(4, cfg, seeds=[0, 1], dtype=F64)
    with torch.no_grad():
        y = model.predict_all(x)
    ref = mesa_optimizer_prediction(x, 0.75)
    assert (y - ref).abs().max() < 1e-10
    assert y[..., 0, :].abs().max() == 0  # ŷ_1 := 0


def test_running_sums_equal_naive_loop():
    x = _data(E=2, m=5, T=12, d=3)
    cfg = CausalLinearAttentionConfig(init="gaussian", init_std=1.0)
    model = CausalLinearAttention(3, cfg, seeds=[4, 9], dtype=F64)
    with torch.no_grad():
        y = model.predict_all(x)
        ref = naive_predict_all(model.W_KQ, model.W_PV, x)
    assert ref.abs().max() > 1.0
    assert (y - ref).abs().max() < 1e-10
    # loss: (1/m) Σ_seq Σ_{t=2}^{T-1} ½‖ŷ_t − x_{t+1}‖²
    r = ref[..., 1:-1, :] - x[..., 2:, :]
    torch.testing.assert_close(
        model.loss(x).detach(), 0.5 * r.abs().square().sum((-1, -2)).mean(-1)
    )


def test_gaussian_init_statistics_and_ensemble_member_equals_single_seed():
    cfg = CausalLinearAttentionConfig(init="gaussian", init_std=0.5)
    ens = CausalLinearAttention(5, cfg, seeds=[3, 4, 5], dtype=F64)
    single = CausalLinearAttention(5, cfg, seeds=[4], dtype=F64)
    torch.testing.assert_close(ens.W_KQ[1], single.W_KQ[0])
    torch.testing.assert_close(ens.W_PV[1], single.W_PV[0])
    assert not torch.equal(ens.W_KQ[0], ens.W_KQ[1])
    w = ens.W_KQ.detach()
    assert abs(w.abs().square().mean().item() - 0.25) < 0.05  # E|w|² = init_std²
    assert abs(w.real.var().item() - w.imag.var().item()) < 0.03
    x = _data(E=3, m=4, T=7, d=5, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(ens.predict_all(x)[1], single.predict_all(x[1:2])[0])


def test_gradients_flow_and_match_finite_differences():
    x = _data(E=2, m=4, T=8, d=2)
    cfg = CausalLinearAttentionConfig(init="gaussian", init_std=0.5)
    model = CausalLinearAttention(2, cfg, seeds=[0, 1], dtype=F64)
    loss = model.loss(x)
    assert loss.shape == (2,) and not loss.is_complex()
    loss.sum().backward()
    for p in (model.W_KQ, model.W_PV):
        assert p.grad is not None and p.grad.is_complex() and p.grad.abs().max() > 0
    # PyTorch's complex grad = ∂L/∂Re + i ∂L/∂Im
    h = 1e-6
    for part, unit in (("re", 1.0), ("im", 1j)):
        with torch.no_grad():
            model.W_PV[1, 0, 2] += unit * h
            up = model.loss(x)[1]
            model.W_PV[1, 0, 2] -= 2 * unit * h
            dn = model.loss(x)[1]
            model.W_PV[1, 0, 2] += unit * h
        fd = ((up - dn) / (2 * h)).item()
        g = model.W_PV.grad[1, 0, 2]
        assert abs((g.real if part == "re" else g.imag).item() - fd) < 1e-6 * max(1, abs(fd))


@pytest.mark.parametrize("mode", ["diagonal_blocks", "scalars"])
@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_restricted_modes_stay_in_their_subspace(mode, opt):
    d = 3
    x = _data(E=2, m=6, T=8, d=d, x1="ones")  # all-ones x_1 drives off-diagonal growth
    cfg = CausalLinearAttentionConfig(init="gaussian", init_std=0.3, trainable=mode)
    model = CausalLinearAttention(d, cfg, seeds=[0, 1], dtype=F64)
    full = CausalLinearAttention(d, CausalLinearAttentionConfig(init="gaussian"), dtype=F64)
    make = {
        "sgd": lambda p: torch.optim.SGD(p, lr=1e-2),
        "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    }
    optim = make[opt](model.parameters())
    before = model.W_KQ.detach().clone()
    for _ in range(3):
        optim.zero_grad()
        model.loss(x).sum().backward()
        optim.step()
    assert not torch.equal(before, model.W_KQ.detach())
    kq, pv = model.W_KQ.detach().clone(), model.W_PV.detach().clone()
    mask_kq = torch.zeros(2 * d, 2 * d, dtype=torch.bool)
    mask_kq[d:, :d] = True
    mask_pv = torch.zeros(d, 2 * d, dtype=torch.bool)
    mask_pv[:, :d] = True
    assert kq[:, ~mask_kq].abs().max() == 0 and pv[:, ~mask_pv].abs().max() == 0
    if mode == "scalars":
        eye = torch.eye(d, dtype=kq.dtype)
        a, b = model.block_scalars()
        torch.testing.assert_close(kq[:, d:, :d], a[:, None, None] * eye, atol=1e-14, rtol=0)
        torch.testing.assert_close(pv[:, :, :d], b[:, None, None] * eye, atol=1e-14, rtol=0)
    # raw parameters equal the effective ones used by the forward
    ekq, epv = model.projected_weights()
    torch.testing.assert_close(ekq.detach(), kq)
    torch.testing.assert_close(epv.detach(), pv)
    # the unrestricted model with the same weights gives the same predictions
    full.set_weights(W_KQ=kq[:1], W_PV=pv[:1])
    with torch.no_grad():
        torch.testing.assert_close(full.predict_all(x[:1]), model.predict_all(x)[:1])
    with pytest.raises(ValueError, match="outside the trainable set"):
        model.set_weights(W_KQ=torch.ones(2 * d, 2 * d))
    torch.testing.assert_close(model.W_KQ.detach(), kq)  # unchanged by the failed load


def test_restricted_gradients_are_projections_of_the_full_gradient():
    # the raw gradient in a restricted mode is Π(full gradient): GD moves within the subspace
    # exactly as the unrestricted model's GD projected onto it
    d = 2
    x = _data(E=1, m=40, T=6, d=d, x1="sparse")
    grads = {}
    for mode in ("all", "diagonal_blocks", "scalars"):
        cfg = CausalLinearAttentionConfig(a0=0.5, b0=0.7, trainable=mode)
        model = CausalLinearAttention(d, cfg, dtype=F64)
        model.loss(x).sum().backward()
        grads[mode] = (model.W_KQ.grad, model.W_PV.grad)
        proj = model._project(*grads["all"])
        # restricted sets are differentiated through their moments, "all" streams: the two
        # sums differ in order only (float64 round-off)
        torch.testing.assert_close(grads[mode][0], proj[0], atol=1e-13, rtol=0)
        torch.testing.assert_close(grads[mode][1], proj[1], atol=1e-13, rtol=0)
    g_sc = torch.diagonal(grads["scalars"][0][0, d:, :d])
    torch.testing.assert_close(g_sc, torch.diagonal(grads["all"][0][0, d:, :d]).mean().expand(d))


def test_float32_path_and_prepare_reuse():
    cfg = LinearDynamicsConfig(d=3, T=10)
    batch = LinearDynamicsTask(cfg, seeds=[0]).sample(16, "t")
    model = CausalLinearAttention(3, CausalLinearAttentionConfig(a0=0.3, b0=0.4), seeds=[0])
    state = model.prepare(batch)
    y = model.predict_prepared(state)
    assert y.dtype == torch.complex64 and y.shape == (1, 16, 10, 3)
    ref = mesa_optimizer_prediction(batch.x.to(torch.complex128), 0.12)
    assert (y.to(torch.complex128) - ref).abs().max() < 1e-5
    torch.testing.assert_close(model.loss_prepared(state), model.loss(batch.x))


def test_off_diagonal_drift_measures_the_distance_from_the_mesa_form():
    d = 3
    model = CausalLinearAttention(d, CausalLinearAttentionConfig(a0=0.4, b0=-1.5), dtype=F64)
    assert model.off_diagonal_drift().abs().max() < 1e-15  # the diagonal init is the mesa form
    W_KQ, W_PV = (w.detach().clone() for w in model.projected_weights())
    W_PV[0, 0, d + 1] = 0.3  # one off-diagonal entry
    W_KQ[0, 2 * d - 1, d - 1] = 0.1 + 0.4j  # spread of the diagonal around its mean counts too
    model.set_weights(W_KQ=W_KQ, W_PV=W_PV)
    a = (0.4 * (d - 1) + 0.1 + 0.4j) / d
    off2 = 0.3**2 + sum(abs(v - a) ** 2 for v in [0.4] * (d - 1) + [0.1 + 0.4j])
    on2 = d * (abs(a) ** 2 + 1.5**2)
    torch.testing.assert_close(
        model.off_diagonal_drift(), torch.tensor([(off2 / on2) ** 0.5], dtype=F64)
    )
    gauss = CausalLinearAttention(
        d, CausalLinearAttentionConfig(init="gaussian"), [0, 1], dtype=F64
    )
    assert (gauss.off_diagonal_drift() > 1).all()  # a random matrix is far from a·I, b·I


# ------------------------------------------------------------- moments and chunked streaming
def _naive_loss_and_grads(model, x):
    """The loss from :func:`naive_predict_all` and the raw-parameter gradients (autograd)."""
    model.zero_grad()
    W_KQ, W_PV = model.projected_weights()
    y = naive_predict_all(W_KQ, W_PV, x)
    r = y[..., 1:-1, :] - x[..., 2:, :]
    loss = 0.5 * r.abs().square().sum((-1, -2)).mean(-1)
    loss.sum().backward()
    grads = (model.W_KQ.grad.clone(), model.W_PV.grad.clone())
    model.zero_grad()
    return loss.detach(), grads


def _assert_close_rel(a, b, tol=1e-10):
    scale = b.abs().max().clamp_min(1e-300)
    assert (a - b).abs().max() / scale < tol, ((a - b).abs().max(), scale)


@pytest.mark.parametrize("mode", ["all", "diagonal_blocks", "scalars"])
@pytest.mark.parametrize(
    "E, m, T, d, x1", [(1, 3, 3, 1, "gaussian"), (2, 5, 9, 2, "sparse"), (2, 4, 13, 3, "ones")]
)
@pytest.mark.parametrize("path", ["moments", "streaming"])
def test_moment_and_streaming_losses_equal_the_naive_form(mode, E, m, T, d, x1, path):
    x = _data(E=E, m=m, T=T, d=d, x1=x1)
    cfg = CausalLinearAttentionConfig(init="gaussian", init_std=0.7, trainable=mode)
    model = CausalLinearAttention(d, cfg, seeds=range(E), dtype=F64)
    ref_loss, ref_grads = _naive_loss_and_grads(model, x)
    state = model.prepare(x)
    if path == "moments":
        model.build_moments(state)
    loss = model.loss_prepared(state)
    loss.sum().backward()
    assert (state.moments is not None) == (path == "moments")
    assert loss.dtype == F64 and ref_loss.min() > 1e-3
    _assert_close_rel(loss.detach(), ref_loss)
    _assert_close_rel(model.W_KQ.grad, ref_grads[0])
    _assert_close_rel(model.W_PV.grad, ref_grads[1])
    assert ref_grads[0].abs().max() > 1e-6 and ref_grads[1].abs().max() > 1e-6


def test_prediction_moments_identity_on_random_features():
    from iclab.models.prediction_moments import (
        accumulate_moments,
        empty_moments,
        mirror_moments,
        moment_loss,
    )

    E, n, a, p, k = 2, 50, 3, 4, 5
    F = _random_complex((E, n, p, k), 1)
    y = _random_complex((E, n, a), 2)
    P = _random_complex((E, a, p), 3)
    kappa = _random_complex((E, k), 4)
    mom = empty_moments(E, a, p, k, F.device)
    accumulate_moments(mom, F[:, :20], y[:, :20])  # two chunks
    accumulate_moments(mom, F[:, 20:], y[:, 20:])
    mirror_moments(mom)
    torch.testing.assert_close(mom.M.flatten(1, 2).flatten(2), mom.M.flatten(1, 2).flatten(2).mH)
    direct = 0.5 * ((P @ (F @ kappa[:, None, :, None]).squeeze(-1).mT).mT - y).abs().square()
    torch.testing.assert_close(moment_loss(P, kappa, mom), direct.sum((1, 2)), rtol=1e-12, atol=0)


def test_moments_are_built_when_the_planned_steps_reach_the_threshold(monkeypatch):
    x = _data(E=2, m=4, T=7, d=2)
    model = CausalLinearAttention(
        2, CausalLinearAttentionConfig(init="gaussian"), [0, 1], dtype=F64
    )
    monkeypatch.setattr(model, "moment_threshold", lambda: 3)
    short = model.prepare(x)
    model.plan(short, 2)  # fewer steps than the threshold: always stream
    for _ in range(4):
        model.loss_prepared(short).sum().backward()
    assert short.moments is None
    state = model.prepare(x)
    model.plan(state, 3)
    with torch.no_grad():
        model.loss_prepared(state)  # evaluations build nothing
    assert state.moments is None
    model.loss_prepared(state).sum().backward()  # the first gradient step builds them
    built = state.moments
    assert built is not None
    model.loss_prepared(state).sum().backward()
    assert state.moments is built
    unplanned = model.prepare(x)  # a state the trainer did not plan streams
    model.loss_prepared(unplanned).sum().backward()
    assert unplanned.moments is None
    # the threshold of the paper's shape (d = 5, all weights) and of the restricted sets
    assert CausalLinearAttention(5, CausalLinearAttentionConfig()).moment_threshold() == 40
    for mode in ("diagonal_blocks", "scalars"):
        cfg = CausalLinearAttentionConfig(trainable=mode)
        assert CausalLinearAttention(5, cfg).moment_threshold() == 1


def test_chunked_predictions_and_final_prediction(monkeypatch):
    import iclab.models.causal_linear_attention as cla

    x = _data(E=2, m=7, T=10, d=3)
    model = CausalLinearAttention(
        3, CausalLinearAttentionConfig(init="gaussian"), [0, 1], dtype=F64
    )
    monkeypatch.setattr(cla, "CHUNK_BYTES", 1)  # one sequence per chunk
    state = model.prepare(x)
    with torch.no_grad():
        y = model.predict_prepared(state)
        ref = naive_predict_all(*model.projected_weights(), x)
        assert (y - ref).abs().max() < 1e-10 * ref.abs().max()
        last = model.final_prediction(state)
        assert (last - ref[..., -1, :]).abs().max() < 1e-10 * ref.abs().max()
    loss_chunked = model.loss_prepared(state)
    monkeypatch.setattr(cla, "CHUNK_BYTES", 2**30)
    torch.testing.assert_close(
        loss_chunked, model.loss_prepared(model.prepare(x)), rtol=1e-12, atol=0
    )


def test_memory_estimate_of_a_hundred_thousand_sequences_fits_8_gb():
    from iclab.config import load_config
    from iclab.training.memory import estimate_bytes

    small, large = (
        sum(estimate_bytes(load_config("zheng2024_gaussian", [f"train.batch_size={m}"])).values())
        for m in (10_000, 100_000)
    )
    assert large < 8 * 2**30
    assert large > small  # the data grows with m; the moments and the chunks do not
    terms = estimate_bytes(load_config("zheng2024_gaussian", ["train.batch_size=100000"]))
    gram = 100_000 * 100 * 10 * 10 * 8  # what stored prefix Gram sums would take (complex64)
    assert terms["activations"] < gram / 3


_RSS_SCRIPT = """
import resource, sys, torch
from iclab.models.causal_linear_attention import CausalLinearAttention, CausalLinearAttentionConfig
torch.manual_seed(0)
m, steps = int(sys.argv[1]), int(sys.argv[2])
x = torch.randn(1, m, 100, 5, dtype=torch.complex64)
model = CausalLinearAttention(5, CausalLinearAttentionConfig(init="gaussian"))
opt = torch.optim.SGD(model.parameters(), lr=1e-6)
state = model.prepare(x)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for _ in range(steps):
    opt.zero_grad()
    model.loss_prepared(state).sum().backward()
    opt.step()
print(base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_measured_peak_memory_does_not_grow_with_epochs_or_hold_all_gram_sums():
    import os
    import subprocess
    import sys

    m = 10_000  # all prefix Gram sums: 800 MB in complex64; one chunk: 32 MiB of them
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    peaks = []
    for steps in (1, 4):
        out = subprocess.run(
            [sys.executable, "-c", _RSS_SCRIPT, str(m), str(steps)],
            capture_output=True, text=True, check=True, env=env,
        )  # fmt: skip
        base, peak = (int(v) * 1024 for v in out.stdout.split())  # ru_maxrss: KiB on Linux
        peaks.append(peak - base)
    gram = m * 100 * 10 * 10 * 8
    assert peaks[0] < gram / 3, peaks
    assert peaks[1] < peaks[0] + 64 * 2**20, peaks  # more epochs, no more memory


@pytest.mark.parametrize("d", [1, 2, 3])
def test_pair_symmetric_moments_equal_the_plain_sums(d):
    # GramTokenMoments sums half the products and unfolds them by the symmetries of M
    from iclab.models.causal_linear_attention import _moment_features
    from iclab.models.prediction_moments import (
        GramTokenMoments,
        accumulate_moments,
        empty_moments,
        mirror_moments,
    )

    x = _data(E=2, m=5, T=8, d=d)
    F, y = _moment_features(x, "all")
    plain = empty_moments(2, d, 2 * d, 4 * d * d, x.device)
    accumulate_moments(plain, F, y)
    mirror_moments(plain)
    sums = GramTokenMoments(2, d, 2 * d, x.device)
    e = tokens(x)
    C = e.unsqueeze(-1) * e.conj().unsqueeze(-2)
    s = 1.0 / torch.arange(1, 7, dtype=F64)[:, None]  # 1/(t−1), t = 2..T−1
    sums.add(C.cumsum(-3)[:, :, 1:-1].flatten(1, 2), (e[:, :, 1:-1] * s).flatten(1, 2), y)
    fast = sums.finish()
    assert plain.M.abs().max() > 1
    for a, b in ((fast.M, plain.M), (fast.H, plain.H), (fast.S, plain.S)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12 * float(b.abs().max()))


def test_killed_full_batch_run_resumes_exactly_with_moments(tmp_path, monkeypatch):
    """The moments are chosen from the planned steps of the data set, so a run resumed mid-way
    computes every loss in the same form as the uninterrupted one (float32: the two forms
    differ in rounding, so a resume that streamed first would not match bit for bit)."""
    from iclab.config import make_config
    from iclab.training import train

    planned = []
    plan = CausalLinearAttention.plan
    monkeypatch.setattr(
        CausalLinearAttention,
        "plan",
        lambda self, state, steps: (planned.append(steps), plan(self, state, steps)),
    )
    cfg = make_config(
        {
            "n_seeds": 2,
            "task": {"kind": "linear_dynamics", "d": 2, "T": 8, "x1": "gaussian"},
            "model": {"kind": "causal_linear_attention", "init": "gaussian", "init_std": 0.1},
            "train": {
                "lr": 0.01,
                "steps": 12,
                "batch_size": 64,
                "resample_every": 100,
                "eval_every": 3,
                "checkpoint_every": 5,
                "test_size": 32,
                "optimizer": "sgd",
            },
        }
    )
    assert CausalLinearAttention(2, cfg.model).moment_threshold() <= 12
    full = train(cfg, tmp_path / "full", progress=False)

    def kill(step):
        if step == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "killed", progress=False, on_step=kill)
    resumed = train(cfg, tmp_path / "killed", progress=False)
    assert resumed.info["resumed_from_step"] == 5
    assert planned == [12, 12, 12]  # the same plan on the resumed run
    drop = [{k: v for k, v in m.items() if k != "wall_s"} for m in full.metrics]
    assert [{k: v for k, v in m.items() if k != "wall_s"} for m in resumed.metrics] == drop
    for name in ("W_KQ", "W_PV"):
        torch.testing.assert_close(
            getattr(resumed.model, name), getattr(full.model, name), rtol=0, atol=0
        )
