"""The theory and analysis functions fixed by the static CUDA audit, on CUDA against the CPU in
float64 (skipped without a GPU; ``benchmarks/gpu_check.sh`` selects them with ``-k cuda``).

Each function is called with its inputs on CUDA — and, where it takes several, with some left on
the CPU as a caller may pass them — and must return on the device it documents with the CPU's
numbers: a device mismatch raises, a tensor created on the default device would show up as a
result on the wrong device, and a singular Γ in the Markov-chain reading would give another p on
CUDA's full-rank lstsq driver.
"""

from __future__ import annotations

import pytest
import torch

from iclab.analysis.metrics import whiten
from iclab.models import LinearSelfAttention, LSAConfig
from iclab.tasks.markov_chain import MarkovChainConfig, MarkovChainTask
from iclab.theory.gaussian_process.functional_gd import functional_gd_weights
from iclab.theory.linear_dynamics.mesa_optimizer import diagonal_unitary_sequences
from iclab.theory.linear_regression.constructions import (
    gd_plus_plus_weights,
    preconditioned_gd_weights,
)
from iclab.theory.linear_regression.critical_points import (
    critical_point_near,
    nearest_critical_point,
    pgd_critical_points,
    project_to_class,
)
from iclab.theory.linear_regression.multilayer import (
    best_pgd_scalars,
    pgd_class_loss,
    pgd_class_matrices,
    pgd_class_sample_losses,
    wishart_eigenvalues,
)
from iclab.theory.markov_chain.multilayer import label_row_reading

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

F64 = torch.float64
DEV = "cuda"
TIGHT = dict(rtol=1e-9, atol=1e-12)


def _same(on_device: torch.Tensor, cpu: torch.Tensor, **tol: float | bool) -> None:
    assert on_device.device.type == torch.device(DEV).type, on_device.device
    torch.testing.assert_close(on_device.cpu(), cpu, **(tol or TIGHT))


def _cov() -> torch.Tensor:
    return torch.tensor([[2.0, 0.3, 0.0], [0.3, 1.0, 0.1], [0.0, 0.1, 0.5]], dtype=F64)


@pytest.mark.parametrize("singular", [False, True])
def test_label_row_reading(singular):
    """Γ invertible, and Γ = −γ Āᵀ of rank 1 (one head, rank-1 Ā, α = 0): the minimum-norm p."""
    heads = 1 if singular else 2
    cfg = LSAConfig(
        layers=2, heads=heads, parametrization="label_row", readout="positive", init_std=0.3
    )
    model = LinearSelfAttention(4, cfg, [0, 1], dtype=F64)
    if singular:
        g = torch.Generator().manual_seed(0)
        u = torch.randn(2, 2, 1, 4, 1, generator=g, dtype=F64)
        v = torch.randn(2, 2, 1, 1, 4, generator=g, dtype=F64)
        with torch.no_grad():
            model.query_columns[..., :4, :] = u * v
            model.query_columns[..., 4, :] = 0.0
    b = MarkovChainTask(MarkovChainConfig(d=4, n=7, states=3), [0, 1], dtype=F64).sample(6, "d")
    args = (model.value_row, model.query_columns, b.x, b.y, b.x_query)
    cpu = label_row_reading(*args)
    if singular:
        assert int(torch.linalg.matrix_rank(cpu.preconditioner).max()) == 1
    gpu = label_row_reading(*(t.detach().to(DEV) for t in args))
    for name, value in vars(cpu).items():
        tol = dict(rtol=0.0, atol=1e-12) if name == "linear_residual" else TIGHT
        _same(getattr(gpu, name), value, **tol)


def test_pgd_class_losses_and_matrices():
    lam = wishart_eigenvalues(3, 10, 2000, seed=1)
    a, b = [0.3, 0.5, 0.9], torch.tensor([0.2, 0.1, 0.0], dtype=F64)  # a list, b on the CPU
    _same(
        pgd_class_sample_losses(a, b, lam.to(DEV), 10, 0.1),
        pgd_class_sample_losses(a, b, lam, 10, 0.1),
    )
    for rows in (lam, lam[:1]):  # one draw: a NaN standard error, on the device too
        for got, want in zip(
            pgd_class_loss(a, None, rows.to(DEV), 10, 0.1),
            pgd_class_loss(a, None, rows, 10, 0.1),
            strict=True,
        ):
            _same(got, want, equal_nan=True, **TIGHT)
    scalars = best_pgd_scalars(3, 3, 10, 0.1, num_samples=2000, seed=1)  # on the CPU
    for got, want in zip(
        pgd_class_matrices(scalars, _cov().to(DEV)),
        pgd_class_matrices(scalars, _cov()),
        strict=True,
    ):
        _same(got, want)


@pytest.mark.parametrize("sparse", [False, True])
def test_best_pgd_scalars(sparse):
    lam = wishart_eigenvalues(3, 10, 2000, seed=1)
    cpu = best_pgd_scalars(3, 3, 10, 0.1, sparse=sparse, eigenvalues=lam)
    gpu = best_pgd_scalars(3, 3, 10, 0.1, sparse=sparse, eigenvalues=lam.to(DEV))
    tol = dict(rtol=1e-6, atol=1e-9)  # an iterative optimum: rounding moves it a little
    _same(gpu.a, cpu.a, **tol)
    _same(gpu.b, cpu.b, **tol)
    assert gpu.loss == pytest.approx(cpu.loss, rel=1e-9)


def test_critical_points():
    lam = wishart_eigenvalues(3, 10, 2000, seed=1)
    cpu = pgd_critical_points(2, 3, 10, eigenvalues=lam, starts=6)
    gpu = pgd_critical_points(2, 3, 10, eigenvalues=lam.to(DEV), starts=6)
    assert cpu and gpu
    tol = dict(rtol=1e-6, atol=1e-9)
    _same(gpu[0].theta, cpu[0].theta, **tol)
    assert gpu[0].index == cpu[0].index and gpu[0].loss == pytest.approx(cpu[0].loss, rel=1e-9)
    # scalars read off CUDA matrices with a CPU Σ; the search runs on the eigenvalues' device
    A, B = pgd_class_matrices((cpu[0].a, cpu[0].b), _cov())
    a, b = project_to_class(A.to(DEV), B.to(DEV), _cov())
    a0, b0 = project_to_class(A, B, _cov())
    _same(a, a0)
    _same(b, b0)
    near_cpu = critical_point_near(1.05 * a0, b0, 3, 10, eigenvalues=lam)
    near_gpu = critical_point_near(1.05 * a0, b0, 3, 10, eigenvalues=lam.to(DEV))  # CPU (a, b)
    assert near_cpu is not None and near_gpu is not None
    _same(near_gpu.theta, near_cpu.theta, **tol)
    i, dist = nearest_critical_point(a0, b0, gpu)  # CPU scalars, CUDA points
    j, dist0 = nearest_critical_point(a0, b0, cpu)
    assert i == j and dist == pytest.approx(dist0, rel=1e-6, abs=1e-9)


def test_whiten_constructions_and_functional_gd():
    A, B = pgd_class_matrices(([0.3, 0.6], [0.2, 0.0]), _cov())
    _same(whiten(A.to(DEV), _cov()), whiten(A, _cov()))  # Σ left on the CPU
    for got, want in zip(
        preconditioned_gd_weights(A.to(DEV)), preconditioned_gd_weights(A), strict=True
    ):
        _same(got, want)
    for got, want in zip(
        gd_plus_plus_weights(A.to(DEV), B.to(DEV)), gd_plus_plus_weights(A, B), strict=True
    ):
        _same(got, want)
    steps = torch.tensor([0.5, 0.25], dtype=F64)
    cpu = functional_gd_weights("relu", 2, steps, 3)
    gpu = functional_gd_weights("relu", 2, steps.to(DEV), 3)
    for key, value in cpu.items():
        _same(gpu[key], value)


def test_diagonal_unitary_sequences():
    """A CPU generator drives x1 on CUDA with the CPU's draws; a CUDA generator works too."""
    x1 = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    cpu = diagonal_unitary_sequences(x1, 6, torch.Generator().manual_seed(3))
    gpu = diagonal_unitary_sequences(x1.to(DEV), 6, torch.Generator().manual_seed(3))
    _same(gpu, cpu)
    own = diagonal_unitary_sequences(x1.to(DEV), 6, torch.Generator(device=DEV).manual_seed(3))
    assert own.device.type == torch.device(DEV).type
    torch.testing.assert_close(own.abs().cpu(), cpu.abs(), **TIGHT)  # |W^t x1| = |x1|
