"""Linear-dynamics sequences (Zheng et al. 2024): validation, laws, dynamics, seeding."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from iclab.tasks.linear_dynamics import (
    LinearDynamicsConfig,
    LinearDynamicsTask,
    complex_dtype,
)

TRANSITIONS = ["complex_diagonal_unitary", "real_orthogonal", "stable"]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"T": 2}, "T"),
        ({"d": 0}, "d"),
        ({"sigma": 0.0}, "sigma"),
        ({"sigma": -1.0}, "sigma"),
        ({"sigma": math.inf}, "sigma"),
        ({"c": 0.0}, "c"),
        ({"x1": "laplace"}, "x1"),
        ({"transition": "random"}, "transition"),
        ({"spectral_radius": 1.0}, "spectral_radius"),
        ({"spectral_radius": 0.0}, "spectral_radius"),
        ({"m": 10}, "m"),
    ],
)
def test_bad_config_names_the_field(kwargs, field):
    with pytest.raises(ValidationError) as info:
        LinearDynamicsConfig(**kwargs)
    assert field in {str(loc) for err in info.value.errors() for loc in err["loc"]}


def test_custom_law_needs_a_sampler_and_vice_versa():
    with pytest.raises(ValueError, match="x1: 'custom' needs a sampler"):
        LinearDynamicsTask(LinearDynamicsConfig(x1="custom"), seeds=[0])
    with pytest.raises(ValueError, match="x1_sampler"):
        LinearDynamicsTask(
            LinearDynamicsConfig(x1="gaussian"), seeds=[0], x1_sampler=lambda g, s, dev: None
        )
    bad = LinearDynamicsTask(
        LinearDynamicsConfig(x1="custom", d=3, T=4),
        seeds=[0],
        x1_sampler=lambda g, shape, dev: torch.zeros(2, 2),
    )
    with pytest.raises(ValueError, match="x1_sampler: must return shape"):
        bad.sample(5, "train")


def test_config_round_trips_through_json():
    cfg = LinearDynamicsConfig(x1="custom", transition="stable", spectral_radius=0.5)
    assert LinearDynamicsConfig.model_validate_json(cfg.model_dump_json()) == cfg


@pytest.mark.parametrize("transition", TRANSITIONS)
def test_shapes_dtypes_and_dynamics(transition):
    cfg = LinearDynamicsConfig(d=4, T=7, transition=transition, spectral_radius=0.7)
    b = LinearDynamicsTask(cfg, seeds=[1, 2], dtype=torch.float64).sample(50, "train")
    assert b.x.shape == (2, 50, 7, 4) and b.W.shape == (2, 50, 4, 4)
    assert b.x.dtype == torch.complex128 and b.W.dtype == torch.complex128
    pred = (b.W.unsqueeze(2) @ b.x[..., :-1, :].unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(pred, b.x[..., 1:, :], atol=1e-12, rtol=0)
    torch.testing.assert_close(b.next_state(), (b.W @ b.x[..., -1, :, None])[..., 0])
    assert (b.m, b.T, b.d) == (50, 7, 4)
    b32 = LinearDynamicsTask(cfg, seeds=[1, 2], dtype=torch.float32).sample(50, "train")
    assert b32.x.dtype == torch.complex64
    torch.testing.assert_close(b32.x, b.x.to(torch.complex64))  # float32 = float64 rounded
    assert b.to(torch.float32).x.dtype == torch.complex64


def test_transition_laws():
    d, m = 4, 300
    task = lambda tr: LinearDynamicsTask(  # noqa: E731
        LinearDynamicsConfig(d=d, T=3, transition=tr, spectral_radius=0.6),
        seeds=[0],
        dtype=torch.float64,
    )
    W = task("complex_diagonal_unitary").sample(m, "t").W[0]
    diag = torch.diagonal(W, dim1=-2, dim2=-1)
    torch.testing.assert_close(W, torch.diag_embed(diag))
    torch.testing.assert_close(diag.abs(), torch.ones(m, d, dtype=torch.float64))
    theta = diag.angle() % (2 * math.pi)  # U[0, 2π): mean π, var π²/3
    assert abs(theta.mean().item() - math.pi) < 0.15
    assert abs(theta.var().item() - math.pi**2 / 3) < 0.4

    W = task("real_orthogonal").sample(m, "t").W[0]
    assert W.imag.abs().max() == 0
    R = W.real
    torch.testing.assert_close(R.mT @ R, torch.eye(d, dtype=torch.float64).expand(m, d, d))
    # Haar: E[W] = 0, E[W_ij²] = 1/d
    assert R.mean(0).abs().max() < 0.2
    assert abs(R.square().mean().item() - 1 / d) < 0.02

    W = task("stable").sample(m, "t").W[0]
    assert W.imag.abs().max() == 0
    rho = torch.linalg.eigvals(W.real).abs().amax(-1)
    torch.testing.assert_close(rho, torch.full((m,), 0.6, dtype=torch.float64))


def test_x1_laws():
    d, m = 5, 4000
    mk = lambda **kw: LinearDynamicsTask(  # noqa: E731
        LinearDynamicsConfig(d=d, T=3, **kw), seeds=[3], dtype=torch.float64
    )
    x1 = mk(x1="gaussian", sigma=2.0).sample(m, "t").x1[0]
    assert x1.imag.abs().max() == 0  # real-valued, as in the paper
    assert abs(x1.real.std().item() - 2.0) < 0.05
    assert abs(x1.real.mean().item()) < 0.05

    b = mk(x1="sparse", c=0.5).sample(m, "t")
    x1 = b.x1[0].real
    assert b.x1_law == "sparse"
    assert ((x1 != 0).sum(-1) == 1).all()
    assert set(x1[x1 != 0].abs().unique().tolist()) == {0.5}
    assert abs((x1.sum(-1) > 0).double().mean().item() - 0.5) < 0.05  # random sign
    counts = (x1 != 0).sum(0).double() / m  # k uniform
    assert (counts - 1 / d).abs().max() < 0.03

    x1 = mk(x1="ones").sample(7, "t").x1[0]
    torch.testing.assert_close(x1, torch.ones(7, d, dtype=torch.complex128))


def test_custom_sampler_is_seeded_and_complex_allowed():
    def laplace(gen, shape, device):
        u = torch.rand(shape, generator=gen, device=device, dtype=torch.float64) - 0.5
        return -torch.sign(u) * torch.log1p(-2 * u.abs())

    def phase(gen, shape, device):
        th = torch.rand(shape, generator=gen, device=device, dtype=torch.float64)
        return torch.polar(torch.ones_like(th), th)

    cfg = LinearDynamicsConfig(d=3, T=5, x1="custom")
    t = LinearDynamicsTask(cfg, seeds=[0, 1], x1_sampler=laplace)
    a, b = t.sample(20, "train", 3), t.sample(20, "train", 3)
    torch.testing.assert_close(a.x, b.x)
    assert a.x1_law == "custom:laplace"
    assert not torch.equal(a.x[0], a.x[1])
    single = LinearDynamicsTask(cfg, seeds=[1], x1_sampler=laplace).sample(20, "train", 3)
    torch.testing.assert_close(a.x[1], single.x[0])
    c = LinearDynamicsTask(cfg, seeds=[0], x1_sampler=phase).sample(20, "train")
    torch.testing.assert_close(c.x1.abs(), torch.ones(1, 20, 3))


@pytest.mark.parametrize("transition", TRANSITIONS)
def test_seeding(transition):
    cfg = LinearDynamicsConfig(d=3, T=6, transition=transition, x1="sparse")
    task = LinearDynamicsTask(cfg, seeds=[5, 6, 7])
    a = task.sample(30, "train", 2)
    torch.testing.assert_close(a.x, task.sample(30, "train", 2).x)
    assert not torch.equal(a.x, task.sample(30, "train", 3).x)
    assert not torch.equal(a.x, task.sample(30, "test", 2).x)
    single = LinearDynamicsTask(cfg, seeds=[6]).sample(30, "train", 2)
    torch.testing.assert_close(a.x[1], single.x[0])
    torch.testing.assert_close(a.W[1], single.W[0])


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_sequences"):
        LinearDynamicsTask(LinearDynamicsConfig(), seeds=[0]).sample(0, "train")
    with pytest.raises(ValueError, match="dtype"):
        LinearDynamicsTask(LinearDynamicsConfig(), seeds=[0], dtype=torch.float16)
    assert complex_dtype(torch.float32) == torch.complex64
