"""Full-batch epoch time for the Zheng et al. configuration (m = 10000 sequences, T = 100, d = 5).

One epoch = the paper's loss over all T prefix predictions of every sequence, its gradient and one
gradient-descent step, on a fixed training set. Rows, side by side in one run:

- naive: forms E_t E_tᴴ from the tokens for every t in every epoch, as the public reference does;
- before: iclab up to this change, kept here as a reference: all prefix Gram matrices
  C_t = Σ_{i≤t} e_i e_iᴴ stored once per data set (800 MB for m = 10000 in complex64), autograd
  through one batched mat-vec per position;
- after, streaming: a data set trained on for fewer epochs than the model's moment threshold
  (40 for d = 5): chunks of sequences form their C_t, the gradients are summed in the same pass
  (memory = data + one chunk);
- after, moments: every epoch of a data set trained on for longer: the loss and its gradients
  from the prediction moments (M, H, S), built once per data set (its one-off time is printed)
  — cost independent of m.

All compute the same loss (checked first against naive in float64, to 1e-10, gradients included).

    python benchmarks/bench_zheng_epoch.py [--m 10000] [--T 100] [--d 5] [--seeds 1]
"""

from __future__ import annotations

import argparse
import time

import torch
from timing import sync, time_steps

from iclab.config import make_config
from iclab.device import resolve_device
from iclab.models.causal_linear_attention import naive_predict_all, tokens
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


def _naive_loss(model, x: torch.Tensor) -> torch.Tensor:
    W_KQ, W_PV = model.projected_weights()
    y = naive_predict_all(W_KQ, W_PV, x)
    r = y[..., 1:-1, :] - x[..., 2:, :]
    return 0.5 * r.abs().square().sum((-1, -2)).mean(-1)


def _before_loss(model, e: torch.Tensor, C: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The previous iclab path: stored C_t, k_t = W_KQ e_t, u_t = C_t k_t, ŷ_t = W_PV u_t/(t−1)."""
    W_KQ, W_PV = model.projected_weights()
    T = x.shape[-2]
    k = torch.einsum("eij,emtj->emti", W_KQ, e)
    u = (C @ k.unsqueeze(-1)).squeeze(-1)
    t = torch.arange(1, T + 1, device=x.device, dtype=x.real.dtype)
    y = torch.einsum("eij,emtj->emti", W_PV, u) / (t - 1).clamp_min(1).unsqueeze(-1)
    r = y[..., 1 : T - 1, :] - x[..., 2:, :]
    return 0.5 * (r.real.square() + r.imag.square()).sum(dim=(-1, -2)).mean(dim=-1)


def _stored_gram(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    e = tokens(x)
    return e, (e.unsqueeze(-1) * e.conj().unsqueeze(-2)).cumsum(dim=-3)


def _loss_and_grads(model, loss_fn) -> tuple[torch.Tensor, ...]:
    model.zero_grad()
    loss = loss_fn()
    loss.sum().backward()
    out = (loss.detach(), model.W_KQ.grad.clone(), model.W_PV.grad.clone())
    model.zero_grad()
    return out


def check(device) -> float:
    """Largest relative difference from naive (loss, gradients) of before/streaming/moments."""
    cfg = _config(50, 12, 3, 2, device, "float64")
    model, batch, _ = _setup(cfg, 50, device, torch.float64)
    x = batch.x
    ref = _loss_and_grads(model, lambda: _naive_loss(model, x))
    e, C = _stored_gram(x)
    streaming = model.prepare(batch)  # not planned: streams
    moments = model.prepare(batch)
    model.build_moments(moments)
    worst = 0.0
    for fn in (
        lambda: _before_loss(model, e, C, x),
        lambda: model.loss_prepared(streaming),
        lambda: model.loss_prepared(moments),
    ):
        got = _loss_and_grads(model, fn)
        for a, b in zip(got, ref):
            worst = max(worst, float((a - b).abs().max() / b.abs().max()))
    return worst


def bench(
    m: int, T: int, d: int, seeds: int, kind: str, repeats: int, device
) -> tuple[float, float]:
    """(seconds per epoch, one-off seconds per data set) of ``kind``."""
    model, batch, opt = _setup(_config(m, T, d, seeds, device), m, device)
    x = batch.x
    t0 = time.perf_counter()
    if kind == "naive":
        loss_fn = lambda: _naive_loss(model, x)  # noqa: E731
    elif kind == "before":
        e, C = _stored_gram(x)
        loss_fn = lambda: _before_loss(model, e, C, x)  # noqa: E731
    else:
        state = model.prepare(batch)  # once per data set, reused by every epoch
        if kind == "moments":
            model.build_moments(state)
        loss_fn = lambda: model.loss_prepared(state)  # noqa: E731
    sync(device)
    once = time.perf_counter() - t0

    def epoch() -> None:
        loss = loss_fn()
        opt.zero_grad()
        loss.sum().backward()
        opt.step()

    return time_steps(epoch, repeats, device, warmup=1), once


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--m", type=int, default=10000, help="sequences (full batch)")
    p.add_argument("--T", type=int, default=100, help="sequence length")
    p.add_argument("--d", type=int, default=5, help="state dimension")
    p.add_argument("--seeds", type=int, nargs="+", default=[1], help="ensemble sizes to time")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-naive", action="store_true", help="skip the (slow) naive baseline")
    args = p.parse_args()
    device = resolve_device(args.device)
    err = check(device)
    print(f"check: max relative |loss, gradients − naive| (float64) {err:.2e}")
    if err > 1e-10:
        raise SystemExit("CHECK FAILED")
    print(
        f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"m={args.m} T={args.T} d={args.d}, complex64 weights, SGD"
    )
    print(
        f"{'implementation':40s} {'seeds':>5s} {'once/data s':>11s} {'s/epoch':>9s} "
        f"{'s/seed-epoch':>13s} {'vs naive':>9s}"
    )
    rows = [
        ("naive", "naive (E_t E_tᴴ for every t)"),
        ("before", "before (stored prefix Gram sums)"),
        ("streaming", "after: streaming (short runs)"),
        ("moments", "after: moments (>= 40 epochs)"),
    ]
    naive = None
    for kind, label in rows:
        if kind == "naive" and args.no_naive:
            continue
        for seeds in [1] if kind == "naive" else args.seeds:
            reps = max(2, args.repeats // 2) if kind in ("naive", "streaming") else args.repeats
            t, once = bench(args.m, args.T, args.d, seeds, kind, reps, device)
            if kind == "naive":
                naive = t
            speed = f"{naive / (t / seeds):8.1f}x" if naive else "       —"
            print(
                f"{label:40s} {seeds:5d} {once:11.2f} {t:9.4f} {t / seeds:13.4f} {speed}",
                flush=True,
            )


if __name__ == "__main__":
    main()
