import itertools

import numpy as np
import pytest
import torch
from naive import lsa_naive

from iclab.models import LinearSelfAttention, LSAConfig
from iclab.tasks import LinearRegressionConfig, LinearRegressionTask


def _batch(d=4, n=6, seeds=(0, 1), size=5, covariance="rotated"):
    cfg = LinearRegressionConfig(d=d, n=n, covariance=covariance, noise_std=0.1)
    return LinearRegressionTask(cfg, seeds=list(seeds), dtype=torch.float64).sample(size, "t")


OPTIONS = list(
    itertools.product(["full", "pgd", "sparse_pgd"], [1, 2], [1, 3], ["negative", "positive"])
)


@pytest.mark.parametrize("parametrization, heads, layers, readout", OPTIONS)
def test_gram_tokens_and_naive_forward_agree(parametrization, heads, layers, readout):
    batch = _batch()
    cfg = LSAConfig(
        layers=layers, heads=heads, parametrization=parametrization, readout=readout, init_std=0.3
    )
    model = LinearSelfAttention(4, cfg, seeds=[0, 1], dtype=torch.float64)
    gram = model(batch.x, batch.y, batch.x_query)
    tokens = model.predict_tokens(batch.tokens())
    assert gram.shape == (2, 5)
    torch.testing.assert_close(gram, tokens, atol=1e-10, rtol=1e-10)
    P, Q = (m.detach().numpy() for m in model.matrices())
    tok = batch.tokens().numpy()
    naive = np.array(
        [[lsa_naive(tok[e, b], P[e], Q[e], model.sign) for b in range(5)] for e in range(2)]
    )
    np.testing.assert_allclose(gram.detach().numpy(), naive, atol=1e-10, rtol=1e-10)


def test_pgd_matrices_have_the_paper_structure():
    model = LinearSelfAttention(
        3, LSAConfig(parametrization="pgd", init_std=1.0), dtype=torch.float64
    )
    P, Q = model.matrices()
    assert torch.all(P[..., 3, :3] == 0) and torch.all(P[..., :3, 3] == 0)
    assert torch.all(P[..., 3, 3] == 1)
    assert torch.all(Q[..., 3, :] == 0) and torch.all(Q[..., :, 3] == 0)
    torch.testing.assert_close(Q[..., :3, :3], -model.A.transpose(-1, -2))
    torch.testing.assert_close(model.covariate_transforms(), model.B)
    sparse = LinearSelfAttention(3, LSAConfig(parametrization="sparse_pgd", init_std=1.0))
    assert torch.all(sparse.matrices()[0][..., :3, :3] == 0)


def test_effective_matrices_of_full_model_match_pgd_model():
    """A full model loaded with pgd matrices exposes the same effective A and B."""
    cfg = LSAConfig(parametrization="pgd", init_std=0.5, layers=2)
    pgd = LinearSelfAttention(3, cfg, seeds=[0, 1], dtype=torch.float64)
    full = LinearSelfAttention(
        3, cfg.model_copy(update={"parametrization": "full"}), seeds=[0, 1], dtype=torch.float64
    )
    full.set_matrices(*pgd.matrices())
    torch.testing.assert_close(full.preconditioners(), pgd.preconditioners())
    torch.testing.assert_close(full.covariate_transforms(), pgd.covariate_transforms())
    b = _batch(d=3)
    torch.testing.assert_close(full(b.x, b.y, b.x_query), pgd(b.x, b.y, b.x_query))


def test_one_layer_sparse_is_one_preconditioned_step():
    b = _batch()
    model = LinearSelfAttention(
        4,
        LSAConfig(layers=1, parametrization="sparse_pgd", init_std=1.0),
        seeds=[0, 1],
        dtype=torch.float64,
    )
    A = model.A[:, 0, 0]  # (E, d, d)
    h = torch.einsum("ebnd,ebn->ebd", b.x, b.y) / b.n
    expected = torch.einsum("ebd,edk,ebk->eb", b.x_query, A, h)
    torch.testing.assert_close(model(b.x, b.y, b.x_query), expected)


def test_ensemble_members_are_independent_of_ensemble_size():
    cfg = LSAConfig(init_std=0.2)
    big = LinearSelfAttention(4, cfg, seeds=[7, 8, 9])
    small = LinearSelfAttention(4, cfg, seeds=[8])
    torch.testing.assert_close(big.A[1], small.A[0])
    torch.testing.assert_close(big.B[1], small.B[0])


def test_data_with_one_member_broadcasts_over_model_ensemble():
    b = _batch(seeds=(0,))
    model = LinearSelfAttention(4, LSAConfig(init_std=0.3), seeds=[0, 1, 2], dtype=torch.float64)
    out = model(b.x, b.y, b.x_query)
    assert out.shape == (3, 5)
    torch.testing.assert_close(out, model.predict_tokens(b.tokens()))


def test_gradients_flow_to_all_parameters():
    b = _batch(d=4)
    model = LinearSelfAttention(
        4,
        LSAConfig(parametrization="full", layers=2, init_std=0.3),
        seeds=[0, 1],
        dtype=torch.float64,
    )
    model(b.x, b.y, b.x_query).pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_compiled_forward_matches_eager():
    b = _batch(d=3, n=5, size=8)
    model = LinearSelfAttention(
        3,
        LSAConfig(parametrization="full", layers=3, init_std=0.3),
        seeds=[0, 1],
        dtype=torch.float64,
    )
    state = model.gram_state(b.x, b.y, b.x_query)
    compiled = torch.compile(model.predict_prepared, dynamic=False)
    torch.testing.assert_close(
        compiled(state), model.predict_prepared(state), atol=1e-12, rtol=1e-12
    )


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="d"):
        LinearSelfAttention(0, LSAConfig())
    with pytest.raises(ValueError, match="parametrization"):
        LSAConfig(parametrization="dense")
    with pytest.raises(ValueError, match="layers"):
        LSAConfig(layers=0)
    with pytest.raises(ValueError, match="sparse_pgd"):
        LinearSelfAttention(2, LSAConfig(parametrization="sparse_pgd")).set_pgd(
            torch.zeros(1, 3, 1, 2, 2), torch.zeros(1, 3, 1, 2, 2)
        )


def test_full_one_layer_effective_preconditioner_is_exact():
    """For one full layer, ŷ − x_qᵀ A (1/n)Xᵀy contains no term linear in y (A = effective A)."""
    b = _batch(d=3, n=6, size=50)
    model = LinearSelfAttention(
        3,
        LSAConfig(layers=1, parametrization="full", init_std=0.5),
        seeds=[0, 1],
        dtype=torch.float64,
    )
    A = model.preconditioners()[:, 0, 0]
    h = torch.einsum("ebnd,ebn->ebd", b.x, b.y) / b.n
    linear = torch.einsum("ebd,edk,ebk->eb", b.x_query, A, h)
    # the remainder is even in y: flipping the sign of all labels must not change it
    rest = model(b.x, b.y, b.x_query) - linear
    rest_flipped = model(b.x, -b.y, b.x_query) + linear
    torch.testing.assert_close(rest, rest_flipped)


def test_set_pgd_without_b_zeroes_the_covariate_maps():
    model = LinearSelfAttention(
        3, LSAConfig(parametrization="pgd", init_std=1.0), dtype=torch.float64
    )
    model.set_pgd(torch.eye(3, dtype=torch.float64).expand(1, 3, 1, 3, 3))
    assert torch.all(model.B == 0)
    torch.testing.assert_close(model.A, torch.eye(3, dtype=torch.float64).expand_as(model.A))


def test_label_row_parametrization_is_dings_one_layer_form():
    """One label_row layer predicts bᵀ G A x_q (positive readout); it equals a full model with
    the same P, Q, and multi-layer label_row models never move the covariates."""
    torch.manual_seed(0)
    d, n, E, B = 3, 7, 2, 5
    x = torch.randn(E, B, n, d, dtype=torch.float64)
    y = torch.randn(E, B, n, dtype=torch.float64)
    xq = torch.randn(E, B, d, dtype=torch.float64)
    cfg = LSAConfig(layers=1, parametrization="label_row", readout="positive", init_std=0.3)
    model = LinearSelfAttention(d, cfg, [0, 1], dtype=torch.float64)
    b = model.value_row[:, 0, 0]  # (E, d+1)
    A = model.query_columns[:, 0, 0]  # (E, d+1, d)
    z = torch.cat([x, y.unsqueeze(-1)], -1)
    G = z.transpose(-1, -2) @ z / n  # (E, B, d+1, d+1)
    direct = torch.einsum("ei,ebik,ekj,ebj->eb", b, G, A, xq)
    torch.testing.assert_close(model(x, y, xq), direct, rtol=1e-12, atol=1e-12)
    full = LinearSelfAttention(
        d, LSAConfig(layers=1, parametrization="full", readout="positive"), [0, 1],
        dtype=torch.float64,
    )  # fmt: skip
    P, Q = model.matrices()
    full.set_matrices(P.detach(), Q.detach())
    torch.testing.assert_close(full(x, y, xq), direct, rtol=1e-12, atol=1e-12)
    deep = LinearSelfAttention(
        d, LSAConfig(layers=3, parametrization="label_row", readout="positive", init_std=0.3),
        [0, 1], dtype=torch.float64,
    )  # fmt: skip
    tokens = torch.cat([z, torch.cat([xq, torch.zeros_like(xq[..., :1])], -1).unsqueeze(-2)], -2)
    stream = deep.forward_tokens(tokens)
    for Z in stream:
        torch.testing.assert_close(Z[..., :d], tokens[..., :d], rtol=0, atol=0)
    torch.testing.assert_close(deep.predict_tokens(tokens), stream[-1][..., -1, d])
    assert torch.all(deep.covariate_transforms() == 0)
    with pytest.raises(ValueError, match="label_row"):
        deep.set_pgd(torch.eye(d))
    deep.set_label_row(torch.ones(d + 1), torch.zeros(d + 1, d))
    assert torch.all(deep.value_row == 1) and torch.all(deep.query_columns == 0)
