"""The multi-layer reading of a label_row LSA (Ding et al. 2025): the derived weight
recursion equals the model token by token, and each term is the stated (preconditioned)
gradient, checked with autograd in float64."""

import torch

from iclab.models import LinearSelfAttention, LSAConfig
from iclab.tasks.markov_chain import MarkovChainConfig, MarkovChainTask
from iclab.theory.markov_chain.multilayer import cubic_objective, label_row_reading, square_loss


def _setup(layers=3, heads=2, d=4, n=7, seeds=(0, 1)):
    cfg = LSAConfig(
        layers=layers, heads=heads, parametrization="label_row", readout="positive", init_std=0.3
    )
    model = LinearSelfAttention(d, cfg, list(seeds), dtype=torch.float64)
    task = MarkovChainTask(MarkovChainConfig(d=d, n=n, states=3), list(seeds), dtype=torch.float64)
    return model, task.sample(6, "ml")


def test_weight_recursion_reproduces_every_layer_of_the_model():
    model, b = _setup()
    reading = label_row_reading(model.value_row, model.query_columns, b.x, b.y, b.x_query)
    stream = model.forward_tokens(b.tokens())
    d = b.d
    for layer, Z in enumerate(stream):
        w = reading.w[:, :, layer]  # (E, B, d)
        torch.testing.assert_close(
            Z[..., -1, d], reading.prediction[..., layer], atol=1e-12, rtol=0
        )
        ctx = b.y + (b.x @ w.unsqueeze(-1)).squeeze(-1)
        torch.testing.assert_close(Z[..., :-1, d], ctx, atol=1e-12, rtol=0)
    torch.testing.assert_close(model(b.x, b.y, b.x_query), reading.prediction[..., -1])
    steps = reading.w[:, :, 1:] - reading.w[:, :, :-1]
    total = reading.gradient_term + reading.linear_term + reading.cubic_term
    torch.testing.assert_close(total, steps, atol=1e-12, rtol=0)


def test_terms_are_the_stated_preconditioned_gradients():
    model, b = _setup()
    reading = label_row_reading(model.value_row, model.query_columns, b.x, b.y, b.x_query)
    L = model.config.layers
    gamma = model.value_row[..., -1].detach()  # (E, L, H)
    alpha = model.query_columns[..., -1, :].detach()  # (E, L, H, d)
    for layer in range(L):
        w = reading.w[:, :, layer].clone().requires_grad_(True)
        Gam = reading.preconditioner[:, layer].unsqueeze(1)  # (E, 1, d, d)
        (gR,) = torch.autograd.grad(square_loss(w, b.x, b.y).sum(), w)
        step_R = -(Gam @ gR.unsqueeze(-1)).squeeze(-1)
        torch.testing.assert_close(reading.gradient_term[:, :, layer], step_R, atol=1e-12, rtol=0)
        # J1 = R + pᵀw: −Γ∇J1 reproduces gradient + linear terms (Γ invertible here)
        assert reading.linear_residual[:, :, layer].max() < 1e-9
        # cubic: −(u uᵀ/‖u‖²)∇J2 = 2R(w)u with u = Σ_h γ_h α_h
        u = (gamma[:, layer, :, None] * alpha[:, layer]).sum(1).unsqueeze(1).expand_as(w)
        (gJ,) = torch.autograd.grad(cubic_objective(w, b.x, b.y, u).sum(), w)
        proj = u * (u * gJ).sum(-1, keepdim=True) / (u * u).sum(-1, keepdim=True)
        torch.testing.assert_close(-proj, reading.cubic_term[:, :, layer], atol=1e-10, rtol=0)
    # objectives are reported before and after each layer's step
    assert reading.objective_1.shape == (2, 6, L, 2) and reading.objective_2.shape == (2, 6, L, 2)
    torch.testing.assert_close(
        reading.objective_2[..., 0, 0], torch.zeros(2, 6, dtype=torch.float64)
    )


def test_cubic_objective_is_cubic_along_its_direction():
    torch.manual_seed(0)
    x, y = torch.randn(9, 3, dtype=torch.float64), torch.randn(9, dtype=torch.float64)
    u = torch.randn(3, dtype=torch.float64)
    w0 = torch.randn(3, dtype=torch.float64)
    w0 = w0 - (w0 @ u) * u / (u @ u)  # u-component 0: J2(w0) = 0
    ts = torch.linspace(-2, 2, 9, dtype=torch.float64)
    vals = torch.stack([cubic_objective(w0 + t * u, x, y, u) for t in ts])
    coef = torch.linalg.lstsq(torch.vander(ts, 5), vals.unsqueeze(-1)).solution.squeeze(-1)
    assert abs(coef[0].item()) < 1e-9 and abs(coef[1].item()) > 1e-6  # degree exactly 3
