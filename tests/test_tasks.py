import pytest
import torch

from iclab.config import ConfigError, make_config
from iclab.tasks import LinearRegressionConfig, LinearRegressionTask, rotated_covariance


def test_shapes_and_ground_truth_consistency():
    cfg = LinearRegressionConfig(d=4, n=7, noise_std=0.0)
    batch = LinearRegressionTask(cfg, seeds=[0, 1, 2], dtype=torch.float64).sample(11, "train")
    assert batch.x.shape == (3, 11, 7, 4) and batch.y.shape == (3, 11, 7)
    assert batch.x_query.shape == (3, 11, 4) and batch.y_query.shape == (3, 11)
    # noise-free labels are exactly wᵀx
    torch.testing.assert_close(batch.y, torch.einsum("ebnd,ebd->ebn", batch.x, batch.w))
    torch.testing.assert_close(batch.y_query, (batch.x_query * batch.w).sum(-1))
    tok = batch.tokens()
    assert tok.shape == (3, 11, 8, 5)
    assert torch.all(tok[:, :, -1, -1] == 0)


def test_same_seed_same_data_and_member_independence():
    cfg = LinearRegressionConfig(covariance="rotated", weight_prior="inverse_covariance")
    a = LinearRegressionTask(cfg, seeds=[3, 4]).sample(5, "train", 2)
    b = LinearRegressionTask(cfg, seeds=[4]).sample(5, "train", 2)
    c = LinearRegressionTask(cfg, seeds=[3, 4]).sample(5, "train", 3)
    assert torch.equal(a.x[1], b.x[0]) and torch.equal(a.y[1], b.y[0])
    assert not torch.equal(a.x, c.x)


def test_rotated_covariance_spectrum_and_per_seed_rotation():
    spectrum = [1.0, 1.0, 0.5, 0.25, 1.0]
    s0 = rotated_covariance(5, spectrum, seed=0)
    s1 = rotated_covariance(5, spectrum, seed=1)
    eig = torch.linalg.eigvalsh(s0)
    torch.testing.assert_close(
        eig, torch.tensor(sorted(v**2 for v in spectrum), dtype=torch.float64)
    )
    assert torch.linalg.cond(s0).item() == pytest.approx(16.0)
    assert not torch.allclose(s0, s1)


def test_monte_carlo_moments_match_covariances():
    cfg = LinearRegressionConfig(d=3, n=1, covariance="rotated", weight_prior="inverse_covariance")
    task = LinearRegressionTask(cfg, seeds=[5], dtype=torch.float64)
    batch = task.sample(200_000, "mc")
    x = batch.x[0, :, 0]
    emp = x.T @ x / x.shape[0]
    torch.testing.assert_close(emp, task.covariance[0], atol=0.03, rtol=0)
    w = batch.w[0]
    torch.testing.assert_close(
        w.T @ w / w.shape[0], task.weight_covariance[0], atol=0.15, rtol=0.03
    )


def test_label_noise_variance():
    cfg = LinearRegressionConfig(d=2, n=3, noise_std=0.5)
    b = LinearRegressionTask(cfg, seeds=[0], dtype=torch.float64).sample(100_000, "mc")
    resid = b.y - torch.einsum("ebnd,ebd->ebn", b.x, b.w)
    assert resid.var().item() == pytest.approx(0.25, rel=0.02)


@pytest.mark.parametrize(
    "task, field",
    [
        ({"n": 0}, "task.n"),
        ({"d": 0}, "task.d"),
        ({"noise_std": -1.0}, "task.noise_std"),
        ({"d": 2, "covariance": [[1.0, 0.0], [0.0, -1.0]]}, "positive semi-definite"),
        ({"d": 2, "covariance": [[1.0, float("nan")], [0.0, 1.0]]}, "finite number"),
        ({"d": 2, "covariance": [[1.0, 0.5], [0.0, 1.0]]}, "symmetric"),
        ({"d": 2, "covariance": [[1.0, 0.0, 0.0]]}, "2x2"),
        ({"d": 2, "weight_prior": [[1.0, 0.0], [0.0, float("inf")]]}, "weight_prior"),
        ({"covariance": "diagonal"}, "task.covariance"),
        ({"d": 2, "spectrum": [1.0]}, "spectrum"),
    ],
)
def test_bad_task_config_names_the_field(task, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        make_config({"task": task})


def test_task_rejects_bad_batch_size():
    task = LinearRegressionTask(LinearRegressionConfig(), seeds=[0])
    with pytest.raises(ValueError, match="batch_size"):
        task.sample(0, "train")
