"""Population loss of the Ahn et al. PGD class (d = 5, n = 20, L = 3): exact against Monte Carlo.

The loss per prompt is a polynomial of degree 26 in the eigenvalues of XᵀX/n, so its mean is
carried by rare prompts. Rows, side by side in one run, each at the exact optimum of the class and
at the optimum of plain draws (≈ the paper's rotated scalars):

- exact: ``pgd_class_loss_exact`` (Wishart trace moments by the Stein recursion, rational sums);
  the moments' one-off time is printed separately;
- Monte Carlo, plain draws (``wishart_eigenvalues``) and importance-sampled draws
  (``wishart_sample``), drawing included: value, its standard error, and its error against the
  exact value in units of that standard error.

    python benchmarks/bench_pgd_class_loss.py [--draws 1000000] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import torch

from iclab.theory import (
    pgd_class_loss,
    pgd_class_loss_exact,
    wishart_eigenvalues,
    wishart_sample,
)
from iclab.theory.linear_regression import wishart_moments

POINTS = {
    "exact optimum": ((0.33830, 2.09084, 8.56806), (0.87758, 0.57816, 0.0)),
    "plain-draw optimum": ((0.378, 2.4086, 9.618), (0.9066, 0.5655, 0.0)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=1_000_000, help="Monte Carlo draws")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draws")
    args = parser.parse_args()
    d, n = 5, 20
    wishart_moments._moments.cache_clear()
    t = time.perf_counter()
    wishart_moments.wishart_trace_moments(d, n, 26)
    print(f"exact moments E[tr S^k], k ≤ 26: {time.perf_counter() - t:.3f} s once per (d, n)")
    t = time.perf_counter()
    plain = wishart_eigenvalues(d, n, args.draws, args.seed)
    t_plain = time.perf_counter() - t
    t = time.perf_counter()
    lam, w = wishart_sample(d, n, args.draws, args.seed)
    t_weighted = time.perf_counter() - t
    print(
        f"drawing {args.draws} eigenvalue sets: plain {t_plain:.2f} s, weighted {t_weighted:.2f} s"
    )
    print(f"{'point':<20} {'method':<22} {'loss':>11} {'SE':>9} {'error/SE':>9} {'time':>9}")
    for name, (a, b) in POINTS.items():
        t = time.perf_counter()
        exact = pgd_class_loss_exact(a, b, d, n)
        t_exact = time.perf_counter() - t
        print(f"{name:<20} {'exact':<22} {exact:>11.4g} {0:>9.2g} {'':>9} {t_exact:>8.4f}s")
        at, bt = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
        for method, sample, weights, t_draw in (
            ("Monte Carlo, plain", plain, None, t_plain),
            ("Monte Carlo, weighted", lam, w, t_weighted),
        ):
            t = time.perf_counter()
            value, se = pgd_class_loss(at, bt, sample, n, weights=weights)
            t_eval = time.perf_counter() - t + t_draw
            z = (float(value) - exact) / float(se)
            print(
                f"{name:<20} {method:<22} {float(value):>11.4g} {float(se):>9.2g} {z:>9.1f} "
                f"{t_eval:>8.2f}s"
            )


if __name__ == "__main__":
    main()
