import torch

from iclab.algorithms import ols, preconditioned_gd
from iclab.analysis.alignment import alignment, input_sensitivity
from iclab.models import LinearSelfAttention, LSAConfig
from iclab.tasks import LinearRegressionConfig, LinearRegressionTask


def _prompts(scale=1.0):
    cfg = LinearRegressionConfig(d=4, n=10, covariance="rotated", weight_prior="inverse_covariance")
    b = LinearRegressionTask(cfg, seeds=[0, 1], dtype=torch.float64).sample(300, "align")
    return b.x * scale, b.y * scale, b.x_query * scale, b


def _pgd_model(A):
    model = LinearSelfAttention(
        4,
        LSAConfig(layers=A.shape[1], parametrization="sparse_pgd"),
        seeds=[0, 1],
        dtype=torch.float64,
    )
    model.set_pgd(A.unsqueeze(2))
    return model


def test_a_model_built_to_be_pgd_is_perfectly_aligned_with_pgd_in_and_out_of_distribution():
    g = torch.Generator().manual_seed(0)
    A = 0.3 * torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)  # (E, L, d, d)
    model = _pgd_model(A)

    def pgd(x, y, xq):
        return preconditioned_gd(
            x, y, xq, torch.ones(2, 3, dtype=torch.float64), preconditioner=A
        ).prediction

    for scale in (1.0, 3.0):
        x, y, xq, _ = _prompts(scale)
        a = alignment(model, pgd, x, y, xq)
        assert a.prediction_difference.max() < 1e-20
        torch.testing.assert_close(a.sensitivity_cosine, torch.ones(2, dtype=torch.float64))


def test_sensitivity_of_a_linear_predictor_is_its_weight_vector():
    x, y, xq, _ = _prompts()
    pred = ols(x, y, xq)
    grad = input_sensitivity(lambda a, b, c: ols(a, b, c).prediction, x, y, xq)
    torch.testing.assert_close(grad, pred.weights)


def test_one_gd_step_is_measurably_misaligned_with_ols():
    x, y, xq, batch = _prompts()
    A = torch.linalg.inv(batch.covariance)[:, None] * 0.5  # one Σ⁻¹-preconditioned step
    model = _pgd_model(A)

    def least_squares(a, b, c):
        return ols(a, b, c).prediction

    a = alignment(model, least_squares, x, y, xq)
    assert torch.all(a.prediction_difference > 0.01)
    assert torch.all(a.sensitivity_cosine < 0.99) and torch.all(a.sensitivity_cosine > 0.0)
