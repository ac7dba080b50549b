"""Acceptance: a trained one-layer full LSA matches Theorem 1 (the slowest tests, ~1 min)."""

import pytest
import torch

from iclab.analysis import relative_error
from iclab.config import load_config
from iclab.theory import optimal_one_layer_loss, preconditioner_optimum
from iclab.training import train


@pytest.mark.slow
@pytest.mark.parametrize("covariance", ["identity", "rotated"])
def test_one_layer_full_lsa_learns_the_optimal_preconditioner(covariance):
    cfg = load_config(f"ahn2023_one_layer_{covariance}", ["n_seeds=1", "device=cpu"])
    res = train(cfg, None, progress=False)
    task = res.task
    a_star = preconditioner_optimum(task.covariance, task.weight_covariance, task.config.n)
    f_star = optimal_one_layer_loss(task.covariance, task.weight_covariance, task.config.n)
    learned = res.model.preconditioners().detach()[:, 0, 0].double()
    assert relative_error(learned, a_star).max().item() < 0.05
    # test loss on 20000 fresh prompts (its Monte-Carlo standard error is about 1%)
    loss = res.final_test_loss()
    assert torch.all((loss - f_star).abs() / f_star < 0.05)
