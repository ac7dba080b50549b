"""Full-batch epoch time for the Zheng et al. configuration (m = 10000 sequences, T = 100, d = 5).

One epoch = forward over all T prefix predictions of every sequence, the paper's loss, backward
and one gradient-descent step. iclab forms the prefix Gram matrices C_t = Σ_{i≤t} e_i e_iᴴ once
per data set (they do not depend on the weights) and then costs O(T·d²) per sequence and epoch;
the naive baseline forms E_t E_tᴴ from the tokens for every t in every epoch, as the public
reference does. Both compute the same predictions (checked here to 1e-10 in float64 first).

    python benchmarks/bench_zheng_epoch.py [--m 10000] [--T 100] [--d 5] [--seeds 1 3]
"""

from __future__ import annotations

import argparse

import torch
from timing import time_steps

from iclab.config import make_config
from iclab.device import resolve_device
from iclab.models.causal_linear_attention import naive_predict_all
from iclab.training.trainer import build_model, build_task


def _config(m: int, T: int, d: int, seeds: int, device, dtype: str = "float32"):
    return make_config(
        {
            "n_seeds": seeds,
            "device": str(device),
            "dtype": dtype,
            "task": {"kind": "linear_dynamics", "d": d, "T": T, "x1": "gaussian"},
            "model": {"kind": "causal_linear_attention", "init": "gaussian", "init_std": 0.1},
        }
    )


def _setup(cfg, m: int, device, dtype=torch.float32):
    task = build_task(cfg, device, dtype)
    model = build_model(cfg, device, dtype)
    batch = task.sample(m, "train", 0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    return model, batch, opt


def check(device) -> float:
    cfg = _config(50, 12, 3, 2, device, "float64")
    model, batch, _ = _setup(cfg, 50, device, torch.float64)
    W_KQ, W_PV = model.projected_weights()
    fast = model.predict_all(batch.x)
    naive = naive_predict_all(W_KQ, W_PV, batch.x)
    return float((fast - naive).abs().max())


def bench(m: int, T: int, d: int, seeds: int, naive: bool, repeats: int, device) -> float:
    model, batch, opt = _setup(_config(m, T, d, seeds, device), m, device)
    x = batch.x
    if naive:

        def epoch() -> None:
            W_KQ, W_PV = model.projected_weights()
            y = naive_predict_all(W_KQ, W_PV, x)
            r = y[..., 1 : T - 1, :] - x[..., 2:, :]
            loss = 0.5 * r.abs().square().sum((-1, -2)).mean(-1)
            opt.zero_grad()
            loss.sum().backward()
            opt.step()

    else:
        state = model.prepare(batch)  # once per data set, reused by every epoch

        def epoch() -> None:
            loss = model.loss_prepared(state)
            opt.zero_grad()
            loss.sum().backward()
            opt.step()

    return time_steps(epoch, repeats, device, warmup=1)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--m", type=int, default=10000, help="sequences (full batch)")
    p.add_argument("--T", type=int, default=100, help="sequence length")
    p.add_argument("--d", type=int, default=5, help="state dimension")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 3], help="ensemble sizes to time")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-naive", action="store_true", help="skip the (slow) naive baseline")
    args = p.parse_args()
    device = resolve_device(args.device)
    err = check(device)
    print(f"check: max |iclab − naive| prediction (float64) {err:.2e}")
    if err > 1e-10:
        raise SystemExit("CHECK FAILED")
    print(
        f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"m={args.m} T={args.T} d={args.d}, complex64, SGD"
    )
    print(
        f"{'implementation':34s} {'seeds':>5s} {'s/epoch':>9s} {'s/seed-epoch':>13s} {'vs naive':>9s}"
    )
    naive = None
    if not args.no_naive:
        naive = bench(args.m, args.T, args.d, 1, True, max(2, args.repeats // 2), device)
        print(
            f"{'naive (E_t E_tᴴ for every t)':34s} {1:5d} {naive:9.3f} {naive:13.3f} {'1.0x':>9s}"
        )
    for seeds in args.seeds:
        t = bench(args.m, args.T, args.d, seeds, False, args.repeats, device)
        speed = f"{naive / (t / seeds):8.1f}x" if naive else "       —"
        print(f"{'iclab (prefix Gram sums)':34s} {seeds:5d} {t:9.3f} {t / seeds:13.3f} {speed}")


if __name__ == "__main__":
    main()
