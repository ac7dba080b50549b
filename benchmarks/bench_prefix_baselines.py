"""Prompts per second of Garg et al.'s baselines at every prefix length, batched vs naive.

One "prompt" = one sequence (N pairs) with a prediction at every prefix length 0, …, N−1. Each
batched baseline of iclab.algorithms.prefix_baselines is timed on B prompts (median of a few runs
after a warm-up); its naive form — one numpy / scikit-learn / torch fit per prompt per prefix,
written out here — is timed on a few prompts, and both rates are printed with the speed-up:

- least squares: numpy.linalg.lstsq (min-norm); averaging: numpy;
- k-NN: KNeighborsRegressor(n_neighbors=min(3, i));
- Lasso over the grid (1e-3, 1e-2, 0.1, 1): sklearn Lasso(fit_intercept=False) at its default
  tol = 1e-4 (looser than the batched solver's certified 1e-12 gap);
- two-layer net (width 100, Adam lr 5e-3, ``--net-steps`` steps): a per-prompt torch loop;
- decision tree / gradient boosting: a direct scikit-learn loop vs the process pool
  (``--workers``).

    python benchmarks/bench_prefix_baselines.py [--d 20] [--N 41] [--B 1000] [--threads 1]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import Lasso
from sklearn.neighbors import KNeighborsRegressor
from sklearn.tree import DecisionTreeRegressor
from timing import time_steps

from iclab.algorithms.prefix_baselines import (
    DEFAULT_ALPHAS,
    prefix_averaging,
    prefix_decision_tree,
    prefix_gradient_boosting,
    prefix_knn,
    prefix_lasso_path,
    prefix_least_squares,
    prefix_two_layer_net,
    two_layer_net_init,
)


# ------------------------------------------------------------------------------ naive forms
def naive_prefix(fit_predict, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per prompt, per prefix: ``fit_predict(X_i, y_i, x_i)``; x (n, N, d), y (n, N)."""
    out = np.zeros(y.shape, dtype=object)
    for p in range(x.shape[0]):
        for i in range(1, x.shape[1]):
            out[p, i] = fit_predict(x[p, :i], y[p, :i], x[p, i : i + 1])
    return out


def lstsq(X, Y, q):
    return (q @ np.linalg.lstsq(X, Y, rcond=None)[0])[0]


def averaging(X, Y, q):
    return (q @ (Y @ X / len(Y)))[0]


def knn(X, Y, q):
    return KNeighborsRegressor(n_neighbors=min(3, len(Y))).fit(X, Y).predict(q)[0]


def lasso_grid(X, Y, q):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return [Lasso(alpha=a, fit_intercept=False).fit(X, Y).predict(q)[0] for a in DEFAULT_ALPHAS]


def tree(X, Y, q):
    return DecisionTreeRegressor(random_state=0).fit(X, Y).predict(q)[0]


def boosting(X, Y, q):
    return GradientBoostingRegressor(random_state=0).fit(X, Y).predict(q)[0]


def naive_net(x: torch.Tensor, y: torch.Tensor, steps: int) -> None:
    n, N, d = x.shape
    init = two_layer_net_init(1, n, d, 100, 0, dtype=x.dtype)
    for b in range(n):
        for i in range(1, N):
            p = [init[k][0, b].clone().requires_grad_(True) for k in ("W1", "b1", "w2", "b2")]
            opt = torch.optim.Adam(p, lr=5e-3)
            for _ in range(steps):
                opt.zero_grad()
                pred = torch.relu(x[b, :i] @ p[0].T + p[1]) @ p[2] + p[3]
                ((pred - y[b, :i]) ** 2).mean().backward()
                opt.step()


# ------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, default=20)
    ap.add_argument("--N", type=int, default=41)
    ap.add_argument("--B", type=int, default=1000, help="prompts for the cheap baselines")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--net-steps", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    d, N, dev = args.d, args.N, torch.device("cpu")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, args.B, N, d, generator=g, dtype=torch.float64)
    w = torch.randn(1, args.B, d, generator=g, dtype=torch.float64)
    y = (x * w.unsqueeze(-2)).sum(-1)
    xn, yn = x[0].numpy(), y[0].numpy()

    def sub(b: int):
        return x[:, :b], y[:, :b]

    # (name, prompts batched, batched call, prompts naive, naive call)
    B = args.B
    rows = [
        ("least squares", B, lambda: prefix_least_squares(x, y), 100, lambda n: naive_prefix(lstsq, xn[:n], yn[:n])),
        ("averaging", B, lambda: prefix_averaging(x, y), 100, lambda n: naive_prefix(averaging, xn[:n], yn[:n])),
        ("3-NN", B, lambda: prefix_knn(x, y), 20, lambda n: naive_prefix(knn, xn[:n], yn[:n])),
        ("Lasso, 4 alphas", 200, lambda: prefix_lasso_path(*sub(200)), 4, lambda n: naive_prefix(lasso_grid, xn[:n], yn[:n])),
        (f"2-layer net, {args.net_steps} steps", 8, lambda: prefix_two_layer_net(*sub(8), steps=args.net_steps), 1, lambda n: naive_net(x[0, :n], y[0, :n], args.net_steps)),
        (f"decision tree ({args.workers} workers)", 200, lambda: prefix_decision_tree(*sub(200), workers=args.workers), 50, lambda n: naive_prefix(tree, xn[:n], yn[:n])),
        (f"gradient boosting ({args.workers} workers)", 8, lambda: prefix_gradient_boosting(*sub(8), workers=args.workers), 2, lambda n: naive_prefix(boosting, xn[:n], yn[:n])),
    ]  # fmt: skip
    print(
        f"d = {d}, N = {N} (predictions at all {N} prefix lengths), float64, CPU, torch threads = {args.threads}"
    )
    print(f"{'baseline':<34}{'B':>6}{'batched /s':>13}{'naive /s':>11}{'speed-up':>10}")
    for name, nb, batched, nn, naive in rows:
        repeats = 3 if nb >= 100 and "tree" not in name else 1
        tb = time_steps(batched, repeats, dev, warmup=1)
        t0 = time.perf_counter()
        naive(nn)
        tn = time.perf_counter() - t0
        rb, rn = nb / tb, nn / tn
        print(f"{name:<34}{nb:>6}{rb:>13.1f}{rn:>11.1f}{rb / rn:>9.1f}x")


if __name__ == "__main__":
    main()
