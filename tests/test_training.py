import json
import math

import pytest
import torch
from resume_check import assert_resumes_exactly, strip

from iclab.config import ConfigError, make_config
from iclab.training import TrainingDiverged, train
from iclab.training.checkpoint import load_tensors, read_metrics
from iclab.training.trainer import load_run


def small_config(**train_overrides):
    train_cfg = {
        "lr": 0.01,
        "steps": 40,
        "batch_size": 64,
        "resample_every": 3,
        "eval_every": 5,
        "checkpoint_every": 10,
        "test_size": 128,
        "schedule": {"kind": "cosine", "warmup_steps": 4},
        "clip": {"mode": "per_matrix", "max_norm": 0.5},
    }
    train_cfg.update(train_overrides)
    return make_config(
        {
            "n_seeds": 2,
            "task": {"d": 3, "n": 6, "covariance": "rotated", "weight_prior": "inverse_covariance"},
            "model": {"layers": 2, "parametrization": "pgd", "init_std": 0.01},
            "train": train_cfg,
        }
    )


def test_run_folder_contents(tmp_path):
    res = train(small_config(), tmp_path / "run", progress=False)
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {
        "config.yaml",
        "metrics.jsonl",
        "checkpoint.safetensors",
        "model.safetensors",
        "run.json",
    } <= files
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["status"] == "completed"
    assert [m["step"] for m in res.metrics] == list(range(5, 41, 5))
    tensors, meta = load_tensors(tmp_path / "run" / "checkpoint.safetensors")
    assert meta["step"] == 40 and "model.A" in tensors
    assert meta["config"] == small_config().to_dict()  # checkpoints are self-describing
    loaded = load_run(tmp_path / "run")
    torch.testing.assert_close(loaded.model.A, res.model.A)
    assert res.metrics[-1]["test_loss"][0] < res.metrics[0]["test_loss"][0]


def test_same_config_and_seed_give_identical_metrics(tmp_path):
    a = train(small_config(), tmp_path / "a", progress=False)
    b = train(small_config(), tmp_path / "b", progress=False)
    assert strip(a.metrics) == strip(b.metrics)
    c = train(small_config().model_copy(update={"seed": 1}), None, progress=False)
    assert strip(c.metrics) != strip(a.metrics)


@pytest.mark.parametrize(
    "kill_at, optimizer", [(7, "adam"), (10, "adam"), (23, "adam"), (17, "shampoo")]
)
def test_killed_run_resumes_to_identical_metrics(tmp_path, kill_at, optimizer):
    full = train(small_config(optimizer=optimizer), tmp_path / "full", progress=False)

    def kill(step):
        if step == kill_at:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(small_config(optimizer=optimizer), tmp_path / "killed", progress=False, on_step=kill)
    resumed = train(small_config(optimizer=optimizer), tmp_path / "killed", progress=False)
    assert resumed.info["resumed_from_step"] == (kill_at // 10) * 10
    assert strip(resumed.metrics) == strip(full.metrics)
    assert strip(read_metrics(tmp_path / "killed" / "metrics.jsonl")) == strip(full.metrics)
    torch.testing.assert_close(resumed.model.A, full.model.A, rtol=0, atol=0)


def test_divergence_stops_with_message_and_keeps_last_good_checkpoint(tmp_path):
    cfg = small_config(lr=1e6, optimizer="sgd", clip={"mode": "none"}, steps=200)
    with pytest.raises(
        TrainingDiverged, match=r"diverged at step .* not finite.*last good checkpoint"
    ):
        train(cfg, tmp_path / "run", progress=False)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["status"] == "diverged" and "train.lr" in info["message"]
    ckpt = tmp_path / "run" / "checkpoint.safetensors"
    if ckpt.exists():
        tensors, _ = load_tensors(ckpt)
        assert all(torch.isfinite(t).all() for t in tensors.values())


@pytest.mark.parametrize("optimizer", ["adam", "shampoo"])
def test_ensemble_member_trains_exactly_as_a_single_run(optimizer):
    """Per-member clipping, elementwise Adam and per-matrix Shampoo keep seeds independent."""
    cfg = small_config(optimizer=optimizer)
    both = train(cfg, None, progress=False)
    alone = train(cfg.model_copy(update={"seed": 1, "n_seeds": 1}), None, progress=False)
    torch.testing.assert_close(both.model.A[1], alone.model.A[0], rtol=1e-5, atol=1e-7)


def test_refuses_to_mix_configs_in_one_folder(tmp_path):
    train(small_config(), tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="different configuration"):
        train(small_config(lr=0.02), tmp_path / "run", progress=False)
    train(small_config(lr=0.02), tmp_path / "run", progress=False, overwrite=True)


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd", "shampoo"])
@pytest.mark.parametrize("clip", ["none", "global", "per_matrix"])
@pytest.mark.parametrize("schedule", ["constant", "step", "cosine"])
def test_every_training_option_runs(optimizer, clip, schedule):
    cfg = small_config(
        optimizer=optimizer,
        clip={"mode": clip, "max_norm": 1.0},
        schedule={"kind": schedule, "step_every": 10},
        steps=10,
        momentum=0.5 if optimizer == "sgd" else 0.0,
    )
    res = train(cfg, None, progress=False)
    assert all(torch.isfinite(torch.tensor(m["test_loss"])).all() for m in res.metrics)


def test_shampoo_undoes_a_two_sided_rotation():
    """On a quadratic ½‖U₁ᵀ(W − W*)U₂ ⊙ scale‖² badly conditioned on both sides, Shampoo's step
    direction is far better aligned with W* − W than Adam's is."""
    from iclab.training.shampoo import Shampoo

    g = torch.Generator().manual_seed(0)
    d = 5
    u, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    cov = u @ torch.diag(torch.tensor([1.0, 1.0, 0.25, 1 / 16, 1.0], dtype=torch.float64)) @ u.T
    target = torch.randn(1, 1, 1, d, d, generator=g, dtype=torch.float64)  # (E, L, H, d, d)

    def run(opt_cls):
        w = torch.nn.Parameter(torch.zeros(1, 1, 1, d, d, dtype=torch.float64))
        opt = opt_cls([w], lr=0.2)
        for _ in range(300):
            loss = 0.5 * ((cov @ (w - target) @ cov) ** 2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return loss.item()

    assert run(Shampoo) < 0.1 * run(torch.optim.Adam)


def _shampoo_step_cosine(g, exponent, gradient, frame=lambda s: s, **kw):
    """Feed Shampoo 2000 gradients ``gradient(X)`` of isotropic errors X (no momentum, a tiny
    lr) and return the cosine between the last step, mapped by ``frame``, and the last X."""
    from iclab.training.shampoo import Shampoo

    d = 5
    w = torch.nn.Parameter(torch.zeros(1, 1, 1, d, d, dtype=torch.float64))
    opt = Shampoo([w], lr=1e-6, betas=(0.0, 0.999), exponent=exponent, **kw)
    for _ in range(2000):
        X = torch.randn(d, d, generator=g, dtype=torch.float64)
        w.grad = gradient(X)[None, None, None].clone()
        before = w.detach().clone()
        opt.step()
    step = frame((before - w.detach())[0, 0, 0])
    return float((step * X).sum() / (step.norm() * X.norm()))


def test_shampoo_exponent_one_half_takes_the_kronecker_newton_step():
    """For f = ½‖P X Q‖² with X the error W − W*, G = PᵀP X QQᵀ and, over isotropic errors,
    E[GGᵀ] ∝ (PᵀP)², E[GᵀG] ∝ (QQᵀ)². With p = 1/2 the step recovers X (the Newton direction);
    p = 1/4 removes only half of the curvature on each side."""
    g = torch.Generator().manual_seed(0)
    d = 5

    def rotated(scales):
        u, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
        return u @ torch.diag(torch.tensor(scales, dtype=torch.float64)) @ u.T

    P, Q = rotated([1.0, 1.0, 0.5, 0.25, 2.0]), rotated([1.0, 0.3, 1.0, 3.0, 1.0])
    cosine = {p: _shampoo_step_cosine(g, p, lambda X: P.T @ P @ X @ Q @ Q.T) for p in (0.25, 0.5)}
    assert cosine[0.5] > 0.95 and cosine[0.25] < 0.9, cosine


def test_shampoo_exponent_one_descends_in_whitened_variables():
    """W seen through W̃ = P W Q: G = Pᵀ G̃ Qᵀ with G̃ isotropic on average. With p = 1 the
    step, mapped to W̃, is G̃ itself (gradient descent in the well-conditioned variables)."""
    g = torch.Generator().manual_seed(3)
    d = 5
    P = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0] @ torch.diag(
        torch.tensor([1.0, 2.0, 0.5, 4.0, 1.0], dtype=torch.float64)
    )
    Q = torch.diag(torch.tensor([0.25, 1.0, 1.0, 3.0, 1.0], dtype=torch.float64))
    cosine = {
        p: _shampoo_step_cosine(
            g, p, lambda X: P.T @ X @ Q.T, frame=lambda s: P @ s @ Q, root_eps=1e-8
        )
        for p in (0.25, 1.0)
    }
    assert cosine[1.0] > 0.95 and cosine[0.25] < 0.9, cosine


@pytest.mark.parametrize("exponent", [0.25, 0.5, 1.0])
def test_shampoo_first_step_is_the_two_sided_root_of_the_gradient(exponent):
    """After one gradient G = U S Vᵀ the statistics are GGᵀ and GᵀG, so the direction is
    U S^{1-4p} Vᵀ: the polar factor for p = 1/4, U S⁻¹ Vᵀ for p = 1/2; grafting scales it to the
    norm of Adam's first step (±1 per entry, Frobenius √(mk))."""
    from iclab.training.shampoo import Shampoo

    g = torch.Generator().manual_seed(2)
    m, k = 4, 4  # square and full rank: no null space for the eigenvalue floor to lift
    grad = torch.randn(1, 1, 1, m, k, generator=g, dtype=torch.float64)
    w = torch.nn.Parameter(torch.zeros(1, 1, 1, m, k, dtype=torch.float64))
    opt = Shampoo([w], lr=0.1, exponent=exponent, root_eps=1e-12)
    w.grad = grad.clone()
    opt.step()
    u, s, vh = torch.linalg.svd(grad[0, 0, 0], full_matrices=False)
    direction = u @ torch.diag(s ** (1 - 4 * exponent)) @ vh
    expected = -0.1 * direction * math.sqrt(m * k) / torch.linalg.matrix_norm(direction)
    torch.testing.assert_close(w.detach()[0, 0, 0], expected, rtol=1e-6, atol=1e-9)


def test_shampoo_rejects_an_exponent_outside_its_range():
    from iclab.training.shampoo import Shampoo

    with pytest.raises(ValueError, match="exponent"):
        Shampoo([torch.nn.Parameter(torch.zeros(1, 1, 1, 2, 2))], exponent=0.0)


def test_rerunning_a_completed_run_trains_nothing_and_keeps_its_record(tmp_path):
    first = train(small_config(), tmp_path / "run", progress=False)
    info_before = json.loads((tmp_path / "run" / "run.json").read_text())
    again = train(small_config(), tmp_path / "run", progress=False)
    assert again.steps_run == 0
    assert json.loads((tmp_path / "run" / "run.json").read_text()) == info_before
    assert strip(again.metrics) == strip(first.metrics)
    torch.testing.assert_close(again.model.A, first.model.A, rtol=0, atol=0)


def test_tensorboard_without_the_package_fails_before_work(tmp_path):
    try:
        import torch.utils.tensorboard  # noqa: F401

        pytest.skip("tensorboard is installed")
    except ImportError:
        pass
    with pytest.raises(ConfigError, match=r"train\.tensorboard"):
        train(small_config(tensorboard=True), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_exp_overflow_in_kernel_attention_is_a_divergence_with_a_clear_message(tmp_path):
    cfg = make_config(
        {
            "n_seeds": 2,
            "task": {"kind": "gaussian_process", "d": 3, "n": 4, "kernel": "exp"},
            "model": {"kind": "kernel_attention", "layers": 1, "heads": ["exp"], "init_std": 10},
            "train": {"steps": 5, "batch_size": 16, "test_size": 16, "eval_every": 5},
        }
    )
    with pytest.raises(TrainingDiverged, match=r"diverged at step 1: .*overflowed.*last good"):
        train(cfg, tmp_path / "run", progress=False)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["status"] == "diverged" and "overflowed" in info["message"]


def test_divergence_after_a_checkpoint_names_it_and_keeps_it_intact(tmp_path, monkeypatch):
    import iclab.training.trainer as trainer_module

    cfg = small_config()
    built = []
    original = trainer_module.build_model
    monkeypatch.setattr(
        trainer_module, "build_model", lambda *a, **k: built.append(original(*a, **k)) or built[-1]
    )

    def poison(step):  # simulate a blow-up: the parameters go NaN after step 15
        if step == 15:
            with torch.no_grad():
                built[-1].A.fill_(float("nan"))

    with pytest.raises(TrainingDiverged, match=r"step 16: .*last good checkpoint \(step 10\)"):
        train(cfg, tmp_path / "run", progress=False, on_step=poison)
    tensors, meta = load_tensors(tmp_path / "run" / "checkpoint.safetensors")
    assert meta["step"] == 10
    assert all(torch.isfinite(t).all() for t in tensors.values())
    # resuming restarts from the good checkpoint and (without the poison) completes
    resumed = train(cfg, tmp_path / "run", progress=False)
    assert resumed.info["resumed_from_step"] == 10 and resumed.metrics[-1]["step"] == 40


def test_shampoo_takes_adam_steps_on_non_matrix_parameters():
    from iclab.training.shampoo import Shampoo

    g = torch.Generator().manual_seed(1)
    start = torch.randn(2, 3, 2, generator=g, dtype=torch.float64)  # (E, L, H): one scalar per head
    params = [torch.nn.Parameter(start.clone()) for _ in range(2)]
    opts = [Shampoo([params[0]], lr=0.1), torch.optim.Adam([params[1]], lr=0.1)]
    for _ in range(5):
        for p, opt in zip(params, opts):
            loss = (p**3).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    torch.testing.assert_close(params[0], params[1])


@pytest.mark.parametrize("optimizer", ["adam", "shampoo"])
def test_trainer_runs_kernel_attention_on_gaussian_process_prompts(tmp_path, optimizer):
    """The same trainer serves every task × model: GP prompts and an exp+linear two-head model."""
    cfg = make_config(
        {
            "n_seeds": 2,
            "task": {"kind": "gaussian_process", "d": 3, "n": 6, "kernel": "exp"},
            "model": {"kind": "kernel_attention", "layers": 2, "heads": ["exp", "linear"]},
            "train": {"optimizer": optimizer, "lr": 0.01, "steps": 30, "batch_size": 128,
                      "eval_every": 10, "test_size": 256, "checkpoint_every": 10},
        }
    )  # fmt: skip
    res = train(cfg, tmp_path / "run", progress=False)
    first, last = res.metrics[0]["test_loss"], res.metrics[-1]["test_loss"]
    assert all(b < a for a, b in zip(first, last))
    again = train(cfg, tmp_path / "run", progress=False)  # completed: loads, trains nothing
    assert again.steps_run == 0 and strip(again.metrics) == strip(res.metrics)


def test_checkpoint_files_round_trip_complex_tensors(tmp_path):
    from iclab.training.checkpoint import save_tensors

    tensors = {
        "a": torch.randn(3, 4, dtype=torch.complex64),
        "b": torch.randn(2, dtype=torch.complex128),
        "c": torch.randn(5),
    }
    save_tensors(tmp_path / "t.safetensors", tensors, {"step": 3})
    back, meta = load_tensors(tmp_path / "t.safetensors")
    assert meta == {"step": 3}
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype
        torch.testing.assert_close(back[k], v, rtol=0, atol=0)


def test_gradient_clipping_handles_complex_parameters():
    from iclab.config import ClipConfig
    from iclab.training.optim import clip_gradients

    p = torch.nn.Parameter(torch.zeros(2, 3, 3, dtype=torch.complex128))
    p.grad = torch.full((2, 3, 3), 3 + 4j, dtype=torch.complex128)  # |g| = 5 per entry
    p.grad[1] *= 0.01
    norm = clip_gradients([p], ClipConfig(mode="global", max_norm=1.0))
    torch.testing.assert_close(norm, torch.tensor([15.0, 0.15], dtype=torch.float64))
    assert abs(p.grad[0].abs().square().sum().sqrt().item() - 1.0) < 1e-12  # clipped to 1
    assert abs(p.grad[1, 0, 0] - (0.03 + 0.04j)) < 1e-15  # below the cap: untouched


# ---------------------------------------------------------------- Levenberg–Marquardt polishing


def test_prediction_jacobian_matches_a_naive_autograd_loop():
    cfg = small_config()
    res = train(cfg.model_copy(update={"train": cfg.train.model_copy(update={"steps": 5})}), None,
                progress=False)  # fmt: skip
    model, batch = res.model, res.task.sample(7, "probe", 0)
    state = model.prepare(batch)
    J = model.prediction_jacobian(state, chunk=3)  # chunks of 3, 3, 1 prompts
    params = [p for _, p in model.named_parameters()]
    for e in range(model.ensemble_size):
        for b in range(7):
            grads = torch.autograd.grad(model.predict_prepared(state)[e, b], params)
            naive = torch.cat([g[e].flatten() for g in grads])
            torch.testing.assert_close(J[e, b], naive, rtol=1e-5, atol=1e-7)
            # member e's prediction never depends on another member's parameters
            assert all(float(g[[i for i in range(model.ensemble_size) if i != e]].abs().max()) == 0
                       for g in grads)  # fmt: skip


def polish_config(**polish):
    return small_config(
        steps=20, polish={"steps": 6, "batch_size": 4000, "averaging_steps": 2, **polish}
    )


def test_polishing_descends_on_its_batch_and_is_logged_every_iteration():
    res = train(polish_config(), None, progress=False)
    polish = [m for m in res.metrics if 20 < m["step"] <= 26]
    assert [m["step"] for m in res.metrics if m["step"] > 20] == list(range(21, 29))
    batch_losses = torch.tensor([m["train_loss"] for m in polish])
    # a step is kept only if it descends (up to float rounding)
    assert (batch_losses[1:] <= batch_losses[:-1] * (1 + 1e-6)).all()
    assert all(len(m["damping"]) == 2 for m in polish)
    first_order_only = train(small_config(steps=20), None, progress=False)
    assert max(polish[-1]["test_loss"]) < 0.5 * min(first_order_only.metrics[-1]["test_loss"])


def _one_layer_features(task, stream_index, size=500):
    """Features F (E, B, d·d) with ŷ = F·vec(A) for one sparse layer, and targets (E, B), of
    polishing batch k: ŷ = −x_qᵀ Q (1/n) Xᵀ y with Q = −Aᵀ, so F = vec(x_q (Xᵀy/n)ᵀ)."""
    batch = task.sample(size, "polish", stream_index)
    u = batch.x_query.double()
    v = (batch.x.double().transpose(-1, -2) @ batch.y.double().unsqueeze(-1)).squeeze(-1)
    v = v / batch.x.shape[-2]
    return (u.unsqueeze(-1) * v.unsqueeze(-2)).flatten(-2), batch.y_query.double()


def _least_squares(F, y):
    return torch.linalg.lstsq(F, y.unsqueeze(-1)).solution.squeeze(-1)


def _one_layer_polish(averaging, batch_size=500):
    cfg = make_config(
        {
            "n_seeds": 2,
            "task": {"d": 3, "n": 6, "covariance": "rotated", "weight_prior": "inverse_covariance"},
            "model": {"layers": 1, "parametrization": "sparse_pgd", "init_std": 0.01},
            "train": {
                "steps": 0,
                "test_size": 64,
                "polish": {"steps": 5, "batch_size": batch_size, "averaging_steps": averaging},
            },
        }
    )
    res = train(cfg, None, progress=False)
    return res, res.model.A[:, 0, 0].detach().double().flatten(1)


def test_polishing_lands_on_the_one_layer_least_squares_solution():
    """One sparse layer is linear in A, so Gauss–Newton is exact: Levenberg–Marquardt lands on
    the fixed batch's least-squares preconditioner."""
    res, trained = _one_layer_polish(0)
    torch.testing.assert_close(trained, _least_squares(*_one_layer_features(res.task, 0)),
                               rtol=2e-3, atol=2e-4)  # fmt: skip


def test_averaging_steps_keep_the_running_mean_of_the_batches_optima():
    """Each averaging step j (size 1/(j+2)) is a Gauss–Newton step on a fresh batch; for a linear
    model it moves exactly to (1 − η)θ + η θ̂_j, so after 3 steps the weights are the mean of the
    least-squares solutions of batches 0–3."""
    res, trained = _one_layer_polish(3)
    solutions = torch.stack([_least_squares(*_one_layer_features(res.task, k)) for k in range(4)])
    torch.testing.assert_close(trained, solutions.mean(0), rtol=2e-3, atol=2e-4)
    assert float((trained - solutions[0]).abs().max()) > 10 * 2e-4  # not the fixed batch's


def test_averaging_steps_approach_the_population_optimum():
    """After 40 averaging steps the weights are closer to the population least-squares solution
    (fitted here on 200000 prompts) than the fixed batch's own optimum is, for every member."""
    res, fixed = _one_layer_polish(0, batch_size=300)
    res, averaged = _one_layer_polish(40, batch_size=300)
    population = _least_squares(*_one_layer_features(res.task, 10_000, size=200_000))
    assert ((averaged - population).norm(dim=-1) < 0.5 * (fixed - population).norm(dim=-1)).all()


def test_polishing_keeps_members_independent():
    both = train(polish_config(), None, progress=False)
    cfg = polish_config().model_copy(update={"seed": 1, "n_seeds": 1})
    alone = train(cfg, None, progress=False)
    torch.testing.assert_close(both.model.A[1], alone.model.A[0], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kill_at", [20, 23, 27])
def test_run_killed_while_polishing_resumes_to_identical_metrics(tmp_path, kill_at):
    assert_resumes_exactly(polish_config(), tmp_path, kill_at, final_step=28)


def test_a_non_finite_gauss_newton_system_stops_the_run_with_the_last_good_checkpoint(
    tmp_path, monkeypatch
):
    """An overflowing Jacobian must not leave Levenberg–Marquardt retrying without progress."""
    from iclab.models.lsa import LinearSelfAttention

    real = LinearSelfAttention.prediction_jacobian
    calls = {"n": 0}

    def overflowing(self, state, chunk=8192):
        calls["n"] += 1
        J = real(self, state, chunk)
        if calls["n"] == 3:
            J[0, 0, 0] = float("inf")
        return J

    monkeypatch.setattr(LinearSelfAttention, "prediction_jacobian", overflowing)
    with pytest.raises(
        TrainingDiverged, match=r"step 23.*Gauss–Newton system is not finite.*step 22"
    ):
        train(polish_config(), tmp_path / "run", progress=False)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["status"] == "diverged"
    _, meta = load_tensors(tmp_path / "run" / "checkpoint.safetensors")
    assert meta["step"] == 22


def test_damped_gauss_newton_solve_on_an_L4_sized_batch_of_systems():
    """(3, 200, 200) float64 systems — an L = 4 PGD model, three seeds — on 2 threads: batched
    LU (``torch.linalg.solve``) raised oneMKL DLASWP errors and hung on exactly this; the
    Cholesky solve must return each member's own solution."""
    from iclab.training.levenberg_marquardt import _solve

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        gen = torch.Generator().manual_seed(0)
        J = torch.randn(3, 1000, 200, generator=gen, dtype=torch.float64)
        J[..., 175:] = 0.0  # a last layer's covariate map never reaches the prediction
        H = J.transpose(1, 2) @ J / 1000
        g = torch.randn(3, 200, generator=gen, dtype=torch.float64)
        lam = torch.tensor([1e-3, 1e-1, 1.0], dtype=torch.float64)
        scale = H.diagonal(dim1=1, dim2=2).mean(-1)
        step = _solve(H, g, lam, scale)
        for e in range(3):
            system = H[e] + lam[e] * scale[e] * torch.eye(200, dtype=torch.float64)
            assert torch.allclose(system @ step[e], g[e], atol=1e-9)
        broken = H.clone()
        broken[1, 0, 0] = -1e6  # not positive definite: that member's step is NaN, not garbage
        bad = _solve(broken, g, lam, scale)
        assert bad[1].isnan().all() and bad[0].isfinite().all() and bad[2].isfinite().all()
    finally:
        torch.set_num_threads(threads)
