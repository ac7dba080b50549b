"""The Bayes-optimal predictor for Markov-chain prompts: the ceiling every model is held
against.

All chains of a prompt share one kernel ``P`` whose rows are independent ``Dirichlet(α·1)``
draws, for every |S| (binary chains with α = 1: ``p01, p10 ~ U(0, 1)``). The initial law does
not depend on ``P``, so the posterior of ``P`` given the prompt depends only on the transition
counts ``c_{ab}`` (a → b) over the n context chains (d transitions each) and the query's own
d − 1 transitions, and rows stay independent: row ``a`` is ``Dirichlet(α + c_a·)`` a posteriori.
The posterior predictive of the query's next state given its last state ``a = s_d`` is

    P(y_q = b | prompt) = (c_ab + α) / (Σ_b' c_ab' + |S| α).

Under the square loss on the state value the Bayes prediction is the posterior mean
``Σ_b b · P(y_q = b | prompt)``; for accuracy (a prediction rounded to a state) it is the
posterior mode. Prompts that mix k > 1 kernels need a sum over kernel assignments and are not
covered here (:func:`markov_posterior_predictive` refuses them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from iclab.prompt_shapes import check_prompts

__all__ = ["MarkovBayes", "markov_bayes", "markov_posterior_predictive", "transition_counts"]


def _states(t: torch.Tensor, num_states: int, name: str) -> torch.Tensor:
    s = t.round().long()
    if bool(((t - s).abs() > 1e-6).any()) or bool(((s < 0) | (s >= num_states)).any()):
        raise ValueError(f"{name}: expected states in {{0, …, {num_states - 1}}}")
    return s


def transition_counts(
    x: torch.Tensor, y: torch.Tensor, x_query: torch.Tensor, num_states: int
) -> torch.Tensor:
    """Counts ``c[a, b]`` of transitions a → b over the context chains ``[x_i, y_i]`` and the
    query's ``x_q``: (E, B, S, S) float64. Shapes as in iclab's prompts (x (E, B, n, d))."""
    check_prompts(x, y, x_query)
    if num_states < 2:
        raise ValueError(f"num_states: must be >= 2, got {num_states}")
    chains = _states(torch.cat([x, y.unsqueeze(-1)], dim=-1), num_states, "x, y")
    query = _states(x_query, num_states, "x_query")
    S = num_states
    E, B = x.shape[:2]
    pairs = [(chains[..., :-1] * S + chains[..., 1:]).flatten(2)]  # (E, B, n·d)
    if x_query.shape[-1] > 1:
        pairs.append(query[..., :-1] * S + query[..., 1:])  # (E, B, d−1)
    idx = torch.cat(pairs, dim=-1)
    counts = torch.zeros(E, B, S * S, dtype=torch.float64, device=x.device)
    counts.scatter_add_(-1, idx, torch.ones_like(idx, dtype=torch.float64))
    return counts.view(E, B, S, S)


def markov_posterior_predictive(
    x: torch.Tensor,
    y: torch.Tensor,
    x_query: torch.Tensor,
    num_states: int,
    alpha: float = 1.0,
) -> torch.Tensor:
    """``P(y_q = b | prompt)`` (E, B, S) float64 for single-kernel prompts (module docstring).

    ``alpha``: the Dirichlet concentration of the kernel rows (1.0 for binary U(0, 1) chains).
    """
    if not alpha > 0:
        raise ValueError(f"alpha: must be > 0, got {alpha}")
    counts = transition_counts(x, y, x_query, num_states)
    last = _states(x_query[..., -1], num_states, "x_query")  # (E, B)
    row = torch.gather(counts, 2, last[..., None, None].expand(*last.shape, 1, num_states)).squeeze(
        2
    )  # (E, B, S)
    return (row + alpha) / (row.sum(-1, keepdim=True) + num_states * alpha)


@dataclass(frozen=True)
class MarkovBayes:
    """The Bayes predictor on a batch: probabilities (E, B, S), the square-loss prediction
    (posterior mean state, (E, B)) and the accuracy prediction (posterior mode, (E, B) int64;
    ties go to the smaller state)."""

    probabilities: torch.Tensor
    mean: torch.Tensor
    mode: torch.Tensor


def markov_bayes(batch) -> MarkovBayes:
    """Bayes predictor for a :class:`~iclab.tasks.markov_chain.MarkovChainBatch` (k = 1)."""
    cfg = batch.config
    if cfg.mixture != 1:
        raise ValueError(
            f"mixture: the closed-form Bayes predictor needs one kernel per prompt, got "
            f"mixture={cfg.mixture}"
        )
    probs = markov_posterior_predictive(
        batch.x, batch.y, batch.x_query, cfg.states, cfg.dirichlet_alpha
    )
    values = torch.arange(cfg.states, dtype=probs.dtype, device=probs.device)
    return MarkovBayes(probabilities=probs, mean=probs @ values, mode=probs.argmax(-1))
