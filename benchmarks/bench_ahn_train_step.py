"""Training-step throughput for the Ahn et al. configuration (d=5, n=20, L=3, batch 20000).

Prints ms per step and per seed-step for iclab's Gram-propagation LSA (eager and torch.compile),
1 seed and 5 seeds in one program, against the naive baseline in naive_lsa.py (explicit score
matrices, seeds looped in Python). With --time-to-loss it also trains the rotated 3-layer preset
and reports the wall time to reach a test loss of 1e-3.

    python benchmarks/bench_ahn_train_step.py [--repeats 20] [--parametrization full]
"""

from __future__ import annotations

import argparse

import torch
from naive_lsa import NaiveLSA, naive_train_step
from timing import time_steps

from iclab.config import make_config
from iclab.device import resolve_device
from iclab.models import mse_per_member
from iclab.seeding import make_generator
from iclab.training.optim import build_optimizer
from iclab.training.trainer import build_model, build_task


def bench_iclab(seeds: int, compile_: bool, args, device) -> float:
    cfg = make_config(
        {
            "n_seeds": seeds,
            "device": str(device),
            "task": {"d": 5, "n": 20},
            "model": {"layers": 3, "parametrization": args.parametrization, "init_std": 0.01},
            "train": {"lr": 1e-3, "batch_size": args.batch},
        }
    )
    task = build_task(cfg, device, torch.float32)
    model = build_model(cfg, device, torch.float32)
    opt = build_optimizer(model.parameters(), cfg.train)
    batch = task.sample(args.batch, "train", 0)
    state = model.prepare(batch)
    predict = (
        torch.compile(model.predict_prepared, dynamic=False) if compile_ else model.predict_prepared
    )

    def step():
        loss = mse_per_member(predict(state), batch.y_query)
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()

    return time_steps(step, args.repeats, device)


def bench_naive(seeds: int, args, device) -> float:
    cfg = make_config({"n_seeds": seeds, "task": {"d": 5, "n": 20}})
    task = build_task(cfg, device, torch.float32)
    batch = task.sample(args.batch, "train", 0)
    tokens, targets = batch.tokens(), batch.y_query
    models = [NaiveLSA(5, 3, 0.01, make_generator("cpu", s, "init")).to(device) for s in cfg.seeds]
    opts = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in models]
    return time_steps(
        lambda: naive_train_step(models, opts, tokens, targets),
        max(3, args.repeats // 4),
        device,
        warmup=1,
    )


def time_to_loss(target: float, device) -> None:
    from iclab.config import load_config
    from iclab.training import train

    cfg = load_config("ahn2023_rotated_L3", [f"device={device}", "n_seeds=1"])
    res = train(cfg, None, progress=False)
    hit = [m for m in res.metrics if sum(m["test_loss"]) / len(m["test_loss"]) <= target]
    final = res.metrics[-1]
    print(
        f"rotated L=3 preset ({cfg.train.optimizer}, {cfg.n_seeds} seed, {cfg.train.steps} steps): "
        f"wall {res.wall_s:.1f} s, final mean test loss {sum(final['test_loss']) / len(final['test_loss']):.3g}"
    )
    if hit:
        print(
            f"  reached mean test loss ≤ {target:g} at step {hit[0]['step']} after {hit[0]['wall_s']:.1f} s"
        )
    else:
        print(f"  did not reach mean test loss ≤ {target:g}")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--batch", type=int, default=20000)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--parametrization", default="full", choices=["full", "pgd", "sparse_pgd"])
    p.add_argument("--device", default="auto")
    p.add_argument("--no-naive", action="store_true", help="skip the (slow) naive baseline")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    p.add_argument(
        "--time-to-loss",
        type=float,
        default=None,
        metavar="LOSS",
        help="also train the rotated L=3 preset and report the time to reach LOSS",
    )
    args = p.parse_args()
    device = resolve_device(args.device)
    print(
        f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"d=5 n=20 L=3 batch={args.batch}, parametrization={args.parametrization}"
    )
    rows = []
    naive = {}
    if not args.no_naive:
        for seeds in (1, 5):
            naive[seeds] = bench_naive(seeds, args, device)
            rows.append(("naive (scores, seed loop)", seeds, naive[seeds]))
    variants = [("iclab eager", False)] + ([] if args.no_compile else [("iclab compiled", True)])
    for label, comp in variants:
        for seeds in (1, 5):
            rows.append((label, seeds, bench_iclab(seeds, comp, args, device)))
    print(
        f"{'implementation':28s} {'seeds':>5s} {'ms/step':>9s} {'ms/seed-step':>13s} {'seed-steps/s':>13s} {'speed-up':>9s}"
    )
    for label, seeds, t in rows:
        per_seed = t / seeds
        ref = naive.get(seeds)
        speed = f"{ref / t:8.1f}x" if ref else "       —"
        print(
            f"{label:28s} {seeds:5d} {t * 1e3:9.1f} {per_seed * 1e3:13.1f} {1 / per_seed:13.1f} {speed}"
        )
    if args.time_to_loss is not None:
        time_to_loss(args.time_to_loss, device)


if __name__ == "__main__":
    main()
