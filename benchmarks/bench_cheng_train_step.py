"""Training-step throughput for the Cheng, Chen & Sra (2024) configuration.

Gaussian-process prompts (exp kernel) with d=5, n=8, and an L=7 kernel-attention model (one
``exp`` head by default), batch 30000 prompts per seed, Adam at lr 0.01. A *step* is forward,
backward and Adam update on a fixed, pre-sampled batch. Rows:

- ``naive``: naive_kernel_attention.py (full token matrix updated every layer, per-head loop,
  masked (n+1)×(n+1) scores, one model + optimizer per seed looped in Python), 1 and 3 seeds;
- ``iclab before``: ``KernelAttention``'s label stream in plain autograd (per-layer batched
  products over the whole batch; the implementation before the hand-derived backward);
- ``iclab torch pass``: the trainer's objective in torch: one chunked pass with prompts on the
  last axis computes the loss and, chunk by chunk, its gradient
  (:mod:`iclab.models.kernel_label_stream`, ``ICLAB_COMPILED_KERNELS=0``);
- ``iclab``: the trainer's objective ``KernelAttention.loss_prepared`` as it runs by default on
  a CPU: the same pass compiled from C (:mod:`iclab.models.compiled_label_stream`; the
  torch pass where no C compiler is found). 1 seed and 3 seeds in one program.

The table gives ms per step, ms per seed-step, seed-steps per second and the speed-up over the
naive loop with the same seeds and heads (naive ms / row ms). Times are medians over --repeats steps after warm-up
(CUDA synchronized). Training draws a fresh batch every step, so the time to sample one training
batch (``task.sample(batch, "train", 0)``) is reported separately. Before timing, --check (on by
default) verifies in float64 on a small batch that the naive model computes the same predictions
(and gradients) as ``KernelAttention.predict_tokens`` when loaded with the same Q, K, v.

    python benchmarks/bench_cheng_train_step.py [--batch 30000] [--layers 7] [--repeats 10]
        [--heads exp exp,linear] [--device auto] [--no-naive] [--no-check]

``--heads`` takes one or more comma lists; each list is one model (``exp,linear``: two heads).
"""

from __future__ import annotations

import argparse
import os

import torch
from naive_kernel_attention import ACTIVATIONS, NaiveKernelAttention
from naive_lsa import naive_train_step
from timing import time_steps

from iclab.config import make_config
from iclab.device import resolve_device
from iclab.models import compiled_label_stream, mse_per_member
from iclab.models.kernel_attention import KernelAttention, KernelAttentionConfig
from iclab.seeding import make_generator
from iclab.training.optim import build_optimizer
from iclab.training.trainer import build_model, build_task

SEEDS = (1, 3)
CHECK_TOL = 1e-10


def _config(seeds: int, heads: list[str], args, device) -> object:
    return make_config(
        {
            "n_seeds": seeds,
            "device": str(device),
            "task": {"kind": "gaussian_process", "d": args.d, "n": args.n, "kernel": "exp"},
            "model": {"kind": "kernel_attention", "layers": args.layers, "heads": heads},
            "train": {"lr": 0.01, "batch_size": args.batch},
        }
    )


def bench_iclab(seeds: int, heads: list[str], args, device, mode: str = "default") -> float:
    """The trainer's step: ``loss_prepared``, backward, Adam. ``mode``: ``default`` (the
    compiled pass on a CPU), ``torch`` (the torch pass), ``before`` (the label stream in
    plain autograd, as before the hand-derived backward)."""
    if mode == "torch":
        saved = os.environ.get("ICLAB_COMPILED_KERNELS")
        os.environ["ICLAB_COMPILED_KERNELS"] = "0"
        try:
            return bench_iclab(seeds, heads, args, device)
        finally:
            if saved is None:
                del os.environ["ICLAB_COMPILED_KERNELS"]
            else:
                os.environ["ICLAB_COMPILED_KERNELS"] = saved
    before = mode == "before"
    cfg = _config(seeds, heads, args, device)
    task = build_task(cfg, device, torch.float32)
    model = build_model(cfg, device, torch.float32)
    opt = build_optimizer(model.parameters(), cfg.train)
    batch = task.sample(args.batch, "train", 0)
    state = model.prepare(batch)

    def objective():
        if before:
            return mse_per_member(model.sign * model._label_stream_autograd(state), batch.y_query)
        return model.loss_prepared(state, batch)

    def step():
        loss = objective()
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()

    return time_steps(step, args.repeats, device)


def bench_naive(seeds: int, heads: list[str], args, device) -> float:
    cfg = _config(seeds, heads, args, device)
    task = build_task(cfg, device, torch.float32)
    batch = task.sample(args.batch, "train", 0)
    tokens, targets = batch.tokens(), batch.y_query
    models = [
        NaiveKernelAttention(
            args.d, args.layers, heads, cfg.model.init_std, make_generator("cpu", s, "init")
        ).to(device)
        for s in cfg.seeds
    ]
    opts = [torch.optim.Adam(m.parameters(), lr=cfg.train.lr) for m in models]
    return time_steps(
        lambda: naive_train_step(models, opts, tokens, targets),
        max(3, args.repeats // 2),
        device,
        warmup=1,
    )


def bench_sampling(seeds: int, args, device) -> float:
    task = build_task(_config(seeds, ["exp"], args, device), device, torch.float32)
    return time_steps(
        lambda: task.sample(args.batch, "train", 0), max(3, args.repeats // 2), device, warmup=1
    )


def check_same_function(heads: list[str], args, device, batch_size: int = 64) -> float:
    """Max |Δ| between naive and iclab predictions and gradients (float64, 3 seeds), and
    between the gradients of ``predict_tokens`` and of the fused ``loss_prepared``."""
    E = 3
    dt = torch.float64
    cfg = _config(E, heads, args, device)
    task = build_task(cfg, device, dt)
    batch = task.sample(batch_size, "test", 0)
    tokens = batch.tokens()
    model = KernelAttention(
        args.d, KernelAttentionConfig(layers=args.layers, heads=heads), cfg.seeds, device, dt
    )
    H = len(heads)
    g = torch.Generator().manual_seed(1234)
    Q = 0.5 * torch.randn(E, args.layers, H, args.d, args.d, generator=g, dtype=dt)
    K = 0.5 * torch.randn(E, args.layers, H, args.d, args.d, generator=g, dtype=dt)
    v = 0.3 * torch.randn(E, args.layers, H, generator=g, dtype=dt)
    model.set_weights(Q=Q, K=K, v=v)
    pred = model.predict_tokens(tokens)
    mse_per_member(pred, batch.y_query).sum().backward()
    # the trainer's fused objective: same loss, same gradients
    params = [model.Q, model.K, model.v]
    fused = torch.autograd.grad(model.loss_prepared(tokens, batch).sum(), params)
    diff = max((a - p.grad).abs().max().item() for a, p in zip(fused, params))

    for e in range(E):
        naive = NaiveKernelAttention(args.d, args.layers, heads, 0.0, torch.Generator())
        naive = naive.to(device=device, dtype=dt)
        with torch.no_grad():
            naive.Q.copy_(Q[e])
            naive.K.copy_(K[e])
            naive.v.copy_(v[e])
        p = naive(tokens[e])
        (p - batch.y_query[e]).pow(2).mean().backward()
        diff = max(diff, (p - pred[e]).abs().max().item())
        for name in ("Q", "K", "v"):
            ref = getattr(model, name).grad[e]
            diff = max(diff, (getattr(naive, name).grad - ref).abs().max().item())
    return diff


def _heads(text: str) -> list[str]:
    heads = [h.strip() for h in text.split(",") if h.strip()]
    bad = [h for h in heads if h not in ACTIVATIONS]
    if not heads or bad:
        raise argparse.ArgumentTypeError(
            f"heads: a comma list of {', '.join(ACTIVATIONS)}; got {text!r}"
        )
    return heads


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--batch", type=int, default=30000, help="prompts per seed and step")
    p.add_argument("--layers", type=int, default=7)
    p.add_argument("--n", type=int, default=8, help="context length")
    p.add_argument("--d", type=int, default=5, help="input dimension")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--heads",
        type=_heads,
        nargs="+",
        default=[["exp"]],
        metavar="LIST",
        help="one or more comma lists of head activations, each one model (default: exp)",
    )
    p.add_argument("--no-naive", action="store_true", help="skip the (slow) naive baseline")
    p.add_argument(
        "--check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="verify naive == iclab in float64 on a small batch before timing (default: on)",
    )
    args = p.parse_args()
    device = resolve_device(args.device)
    print(
        f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"d={args.d} n={args.n} L={args.layers} batch={args.batch}, GP kernel exp, Adam lr 0.01"
    )
    compiled = device.type == "cpu" and compiled_label_stream.library() is not None
    print(f"iclab row: {'compiled C pass' if compiled else 'torch pass (no compiled pass here)'}")

    if args.check:
        specs = [*args.heads, list(ACTIVATIONS)]
        for heads in [h for i, h in enumerate(specs) if h not in specs[:i]]:
            diff = check_same_function(heads, args, device)
            print(f"check heads={','.join(heads)}: max |naive − iclab| (pred, grads) {diff:.2e}")
            if not diff <= CHECK_TOL:
                raise SystemExit(
                    f"CHECK FAILED: naive and iclab differ by {diff:.3e} > {CHECK_TOL:g} "
                    f"for heads={heads}"
                )

    rows = []
    for heads in args.heads:
        tag = f"[{','.join(heads)}]"
        naive = {}
        if not args.no_naive:
            for seeds in SEEDS:
                naive[seeds] = bench_naive(seeds, heads, args, device)
                rows.append((f"naive {tag}", seeds, naive[seeds], None))
        for seeds in SEEDS:
            for mode, label in [("before", "iclab before"), ("torch", "iclab torch pass"),
                                ("default", "iclab")]:  # fmt: skip
                t = bench_iclab(seeds, heads, args, device, mode)
                rows.append((f"{label} {tag}", seeds, t, naive))
    print(
        f"{'implementation':32s} {'seeds':>5s} {'ms/step':>9s} {'ms/seed-step':>13s} "
        f"{'seed-steps/s':>13s} {'speed-up':>9s}"
    )
    for label, seeds, t, naive in rows:
        per_seed = t / seeds
        ref = naive.get(seeds) if naive else None
        speed = f"{ref / t:8.1f}x" if ref else "       —"
        print(
            f"{label:32s} {seeds:5d} {t * 1e3:9.1f} {per_seed * 1e3:13.1f} "
            f"{1 / per_seed:13.1f} {speed}"
        )

    print(f"\nsampling one training batch (GP exp kernel, {args.batch} prompts per seed):")
    print(f"{'seeds':>5s} {'ms/batch':>9s} {'ms/seed-batch':>14s}")
    for seeds in SEEDS:
        t = bench_sampling(seeds, args, device)
        print(f"{seeds:5d} {t * 1e3:9.1f} {t / seeds * 1e3:14.1f}")


if __name__ == "__main__":
    main()
