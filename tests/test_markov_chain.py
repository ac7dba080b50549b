"""Markov-chain prompts (Ding et al. 2025) and their Bayes predictor: laws checked by Monte Carlo,
counts and posterior checked against naive loops."""

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from iclab.tasks.markov_chain import MarkovChainConfig, MarkovChainTask, sample_gamma
from iclab.theory.markov_chain.bayes import (
    markov_bayes,
    markov_posterior_predictive,
    transition_counts,
)


def _task(seeds=(0,), dtype=torch.float64, **kw):
    return MarkovChainTask(MarkovChainConfig(**kw), list(seeds), dtype=dtype)


def _chains(b):
    return torch.cat(
        [
            torch.cat([b.x, b.y.unsqueeze(-1)], -1),
            torch.cat([b.x_query, b.y_query.unsqueeze(-1)], -1).unsqueeze(-2),
        ],
        dim=-2,
    ).long()  # (E, B, n+1, d+1)


@pytest.mark.parametrize("states, mixture", [(2, 1), (3, 1), (4, 2)])
def test_shapes_states_and_kernels(states, mixture):
    b = _task(seeds=(0, 1), d=4, n=6, states=states, mixture=mixture).sample(50, "t")
    assert b.x.shape == (2, 50, 6, 4) and b.y.shape == (2, 50, 6)
    assert b.x_query.shape == (2, 50, 4) and b.y_query.shape == (2, 50)
    assert b.kernels.shape == (2, 50, mixture, states, states)
    assert b.assignments.shape == (2, 50, 7) and b.assignments.dtype == torch.int64
    ch = _chains(b)
    assert ch.min() >= 0 and ch.max() < states
    torch.testing.assert_close(b.kernels.sum(-1), torch.ones_like(b.kernels[..., 0]))
    assert bool((b.kernels >= 0).all())
    assert b.to(torch.float32).assignments.dtype == torch.int64


def test_transitions_follow_the_assigned_kernel():
    """Σ over transitions a→· of (1{next = b} − P[a, b]) is a martingale sum: mean 0 within SE."""
    for kw in ({"states": 2}, {"states": 3, "mixture": 2}):
        b = _task(d=5, n=8, **kw).sample(3000, "law")
        ch = _chains(b)[0]  # (B, N, d+1)
        P = b.kernels[0][torch.arange(ch.shape[0])[:, None], b.assignments[0]]  # (B, N, S, S)
        a, nxt = ch[..., :-1], ch[..., 1:]
        rows = torch.gather(P, 2, a[..., None].expand(*a.shape, P.shape[-1]))  # (B, N, d, S)
        onehot = torch.nn.functional.one_hot(nxt, P.shape[-1]).double()
        resid = (onehot - rows).reshape(-1, P.shape[-1])
        z = resid.mean(0) / (resid.std(0) / math.sqrt(resid.shape[0]))
        assert z.abs().max().item() < 4


def test_binary_kernel_and_initial_law():
    b = _task(d=1, n=20, states=2, initial_prob=0.3).sample(20000, "init")
    p01, p10 = b.kernels[0, :, 0, 0, 1], b.kernels[0, :, 0, 1, 0]
    for p in (p01, p10):  # U(0, 1): mean 1/2, variance 1/12
        assert abs(p.mean().item() - 0.5) < 4 * math.sqrt(1 / 12 / 20000)
        assert abs(p.var().item() - 1 / 12) < 0.004
    starts = _chains(b)[0, :, :, 0].double()
    assert abs(starts.mean().item() - 0.3) < 4 * math.sqrt(0.21 / starts.numel())


def test_correlated_initial_states():
    rho, p = 0.6, 0.3
    b = _task(d=1, n=5, states=2, initial_prob=p, initial_correlation=rho).sample(40000, "c")
    s = _chains(b)[0, :, :, 0]
    equal = (s[:, 0] == s[:, 1]).double().mean().item()
    q = p * p + (1 - p) * (1 - p)  # two independent draws agree
    expected = rho * rho + (1 - rho * rho) * q
    assert abs(equal - expected) < 4 * math.sqrt(expected * (1 - expected) / 40000)


def test_dirichlet_rows_and_gamma_sampler():
    alpha, S = 0.5, 3
    b = _task(d=1, n=2, states=S, dirichlet_alpha=alpha).sample(20000, "dir")
    rows = b.kernels[0, :, 0].reshape(-1, S)
    mean, var = 1 / S, (1 / S) * (1 - 1 / S) / (S * alpha + 1)
    assert (rows.mean(0) - mean).abs().max().item() < 4 * math.sqrt(var / rows.shape[0])
    assert (rows.var(0) - var).abs().max().item() < 0.1 * var
    g = torch.Generator().manual_seed(0)
    for a in (0.4, 2.5):
        x = sample_gamma(a, (100000,), g, "cpu", torch.float64)
        assert abs(x.mean().item() - a) < 4 * math.sqrt(a / 1e5)
        assert abs(x.var().item() - a) < 0.05 * a


def test_one_kernel_prior_for_every_number_of_states():
    # binary chains follow dirichlet_alpha too: rows Beta(α, α); α = 1 keeps the U(0, 1) draws
    alpha = 0.05
    b = _task(d=1, n=2, states=2, dirichlet_alpha=alpha).sample(20000, "dir2")
    p01 = b.kernels[0, :, 0, 0, 1].double()
    var = 0.25 / (2 * alpha + 1)  # Beta(α, α)
    assert abs(p01.mean().item() - 0.5) < 4 * math.sqrt(var / p01.numel())
    assert abs(p01.var().item() - var) < 0.05 * var
    torch.testing.assert_close(b.kernels.sum(-1), torch.ones_like(b.kernels.sum(-1)))
    u = _task(d=1, n=2, states=2).sample(20000, "dir2").kernels[0, :, 0, 0, 1].double()
    assert abs(u.var().item() - 1 / 12) < 0.05 / 12  # U(0, 1)


def test_ensemble_member_matches_single_seed_and_is_deterministic():
    kw = dict(d=3, n=4, states=3, mixture=2, initial_correlation=0.3)
    both = _task(seeds=(5, 6), **kw).sample(30, "e", 2)
    one = _task(seeds=(6,), **kw).sample(30, "e", 2)
    again = _task(seeds=(5, 6), **kw).sample(30, "e", 2)
    for name in ("x", "y", "x_query", "y_query", "kernels", "assignments"):
        torch.testing.assert_close(getattr(both, name)[1], getattr(one, name)[0], rtol=0, atol=0)
        torch.testing.assert_close(getattr(both, name), getattr(again, name), rtol=0, atol=0)


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"initial_prob": 0.0}, "initial_prob"),
        ({"initial_prob": 1.0}, "initial_prob"),
        ({"initial_prob": 1.5}, "initial_prob"),
        ({"states": 1}, "states"),
        ({"dirichlet_alpha": 0.0}, "dirichlet_alpha"),
        ({"dirichlet_alpha": -1.0}, "dirichlet_alpha"),
        ({"d": 0}, "d"),
        ({"n": 0}, "n"),
        ({"initial_correlation": 1.0}, "initial_correlation"),
        ({"mixture": 0}, "mixture"),
    ],
)
def test_bad_config_names_the_field(kw, field):
    with pytest.raises(ValidationError) as err:
        MarkovChainConfig(**kw)
    assert field in str(err.value)


def _naive_predictive(chains, S, alpha):
    """One prompt, explicit loops: chains (n+1, d+1) ints, the query's last state hidden."""
    counts = np.zeros((S, S))
    n = chains.shape[0] - 1
    for i in range(n):
        for t in range(chains.shape[1] - 1):
            counts[chains[i, t], chains[i, t + 1]] += 1
    q = chains[n, :-1]
    for t in range(len(q) - 1):
        counts[q[t], q[t + 1]] += 1
    row = counts[q[-1]]
    return (row + alpha) / (row.sum() + S * alpha)


@pytest.mark.parametrize("states, alpha, d", [(2, 1.0, 1), (2, 1.0, 4), (4, 0.7, 3)])
def test_posterior_predictive_matches_naive_loop(states, alpha, d):
    b = _task(seeds=(0, 1), d=d, n=5, states=states, dirichlet_alpha=alpha).sample(20, "nv")
    probs = markov_posterior_predictive(b.x, b.y, b.x_query, states, alpha)
    ch = _chains(b).numpy()
    for e in range(2):
        for i in range(20):
            np.testing.assert_allclose(
                probs[e, i].numpy(), _naive_predictive(ch[e, i], states, alpha), atol=1e-12
            )
    counts = transition_counts(b.x, b.y, b.x_query, states)
    assert counts.sum().item() == 2 * 20 * (5 * d + d - 1)


@pytest.mark.parametrize("states", [2, 3])
def test_bayes_is_the_posterior_mean_of_the_oracle(states):
    """Monte Carlo over the prior: the Bayes predictor p̂ = E[p_oracle | prompt] satisfies
    MSE(p̂) = MSE(oracle) + E(p_oracle − p̂)² and beats any other function of the prompt."""
    b = _task(d=3, n=6, states=states).sample(40000, "mc")
    bayes = markov_bayes(b)
    last = b.x_query[0, :, -1].long()
    P = b.kernels[0, :, 0]
    oracle_p = P[torch.arange(P.shape[0]), last]  # (B, S)
    values = torch.arange(states, dtype=torch.float64)
    oracle = oracle_p @ values
    y = b.y_query[0]
    mse_bayes = ((y - bayes.mean[0]) ** 2).mean().item()
    mse_oracle = ((y - oracle) ** 2).mean().item()
    gap = ((oracle - bayes.mean[0]) ** 2).mean().item()
    se = ((y - bayes.mean[0]) ** 2).std().item() / math.sqrt(y.numel())
    assert abs(mse_bayes - (mse_oracle + gap)) < 4 * se
    # a plug-in estimator (empirical row frequency, uniform when unseen) is worse
    counts = transition_counts(b.x, b.y, b.x_query, states)[0]
    row = counts[torch.arange(counts.shape[0]), last]
    plug = torch.where(row.sum(-1, keepdim=True) > 0, row / row.sum(-1, keepdim=True).clamp_min(1),
                       torch.full_like(row, 1 / states)) @ values  # fmt: skip
    assert ((y - plug) ** 2).mean().item() > mse_bayes + 2 * se
    # accuracy: the posterior mode agrees with the best accuracy decision
    assert bayes.mode.shape == (1, 40000)


def test_bayes_refuses_mixtures_and_bad_labels():
    b = _task(d=2, n=3, states=2, mixture=2).sample(4, "m")
    with pytest.raises(ValueError, match="mixture"):
        markov_bayes(b)
    ok = _task(d=2, n=3, states=2).sample(4, "m")
    with pytest.raises(ValueError, match="x, y"):
        markov_posterior_predictive(ok.x + 0.5, ok.y, ok.x_query, 2)
    with pytest.raises(ValueError, match="alpha"):
        markov_posterior_predictive(ok.x, ok.y, ok.x_query, 2, alpha=0.0)
