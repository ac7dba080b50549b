"""scikit-learn regressors fitted on every prefix: greedy decision trees and gradient boosting.

These learners have no batched form: each (prompt, prefix) pair is a separate scikit-learn fit on
CPU numpy arrays (float64; the trees themselves split on float32 copies of ``x``, as scikit-learn
does), with predictions moved back to the input's device and dtype. Prompts are split into chunks
fitted in a ``concurrent.futures.ProcessPoolExecutor`` (``workers`` processes, started with
``spawn``, which is safe after torch has started threads); ``workers = 1`` fits in the calling
process. Every fit is a fresh clone of the given estimator with its fixed ``random_state``, so
results do not depend on the number of workers or the chunking. scikit-learn is a dependency of
iclab, imported only when these functions are called.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch

from iclab.algorithms.prefix_baselines.sequence_shapes import (
    check_counts,
    check_positions,
    check_sequences,
    new_predictions,
)

__all__ = ["prefix_decision_tree", "prefix_gradient_boosting", "prefix_sklearn"]


def _fit_chunk(estimator, x: np.ndarray, y: np.ndarray, positions: list[int]) -> np.ndarray:
    """Prefix predictions (n_prompts, len(positions)) for prompts x (n, N, d), y (n, N)."""
    from sklearn.base import clone

    out = np.zeros((x.shape[0], len(positions)))
    for p in range(x.shape[0]):
        for k, i in enumerate(positions):
            if i > 0:
                model = clone(estimator).fit(x[p, :i], y[p, :i])
                out[p, k] = model.predict(x[p, i : i + 1])[0]
    return out


def prefix_sklearn(
    estimator,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    positions: Sequence[int] | None = None,
    workers: int = 1,
) -> torch.Tensor:
    """Prediction at ``x_i`` of ``clone(estimator)`` fitted on each prefix (module docstring).

    Args:
        estimator: an unfitted scikit-learn regressor (picklable; fix its ``random_state`` for
            reproducible results).
        x: (E, B, N, d) covariates.
        y: (E, B, N) labels.
        positions: prefix lengths to evaluate (default all).
        workers: worker processes (1: fit in this process).

    Returns:
        (E, B, N) prefix predictions (NaN at positions not evaluated).
    """
    N, d = check_sequences(x, y)
    check_counts(workers=workers)
    pos = check_positions(positions, N)
    out = new_predictions(x, pos)
    fit = [i for i in pos if i > 0]
    if not fit:
        return out
    E, B = x.shape[:2]
    xs = x.detach().to("cpu", torch.float64).reshape(E * B, N, d).numpy()
    ys = y.detach().to("cpu", torch.float64).reshape(E * B, N).numpy()
    if workers == 1:
        preds = _fit_chunk(estimator, xs, ys, fit)
    else:
        chunks = np.array_split(np.arange(E * B), min(E * B, 4 * workers))
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            parts = [pool.submit(_fit_chunk, estimator, xs[c], ys[c], fit) for c in chunks]
            preds = np.concatenate([f.result() for f in parts])
    idx = torch.tensor(fit, device=x.device)
    out[..., idx] = torch.as_tensor(preds.reshape(E, B, len(fit)), dtype=x.dtype).to(x.device)
    return out


def prefix_decision_tree(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    max_depth: int | None = None,
    random_state: int = 0,
    positions: Sequence[int] | None = None,
    workers: int = 1,
) -> torch.Tensor:
    """Greedy regression tree ``DecisionTreeRegressor(max_depth=max_depth)`` on each prefix.

    scikit-learn defaults otherwise (squared error, best splits, ``min_samples_split=2``; a fully
    grown tree for ``max_depth=None``). ``random_state`` fixes the order in which features are
    tried, which only matters for exactly tied splits. Returns (E, B, N); see
    :func:`prefix_sklearn`.
    """
    from sklearn.tree import DecisionTreeRegressor

    estimator = DecisionTreeRegressor(max_depth=max_depth, random_state=random_state)
    return prefix_sklearn(estimator, x, y, positions=positions, workers=workers)


def prefix_gradient_boosting(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    n_estimators: int = 100,
    learning_rate: float = 0.1,
    max_depth: int = 3,
    random_state: int = 0,
    positions: Sequence[int] | None = None,
    workers: int = 1,
) -> torch.Tensor:
    """Gradient-boosted trees ``GradientBoostingRegressor`` on each prefix.

    scikit-learn's defaults: squared-error loss, ``n_estimators=100`` trees of ``max_depth=3``,
    ``learning_rate=0.1``, no subsampling (Garg et al. use XGBoost, which is not a dependency
    here). Returns (E, B, N); see :func:`prefix_sklearn`.
    """
    from sklearn.ensemble import GradientBoostingRegressor

    estimator = GradientBoostingRegressor(
        n_estimators=n_estimators,
        learning_rate=learning_rate,
        max_depth=max_depth,
        random_state=random_state,
    )
    return prefix_sklearn(estimator, x, y, positions=positions, workers=workers)
