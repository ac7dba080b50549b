"""The ``iclab`` command. ``iclab --help`` and ``iclab COMMAND --help`` explain every option."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from iclab.config import ConfigError


def _cmd_presets(args: argparse.Namespace) -> int:
    import importlib.resources

    from iclab.config import preset_names

    for name in preset_names():
        text = (importlib.resources.files("iclab") / "presets" / f"{name}.yaml").read_text()
        first = next((ln[1:].strip() for ln in text.splitlines() if ln.startswith("#")), "")
        print(f"{name:34s} {first}")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from iclab.config import dump_config, load_config

    print(dump_config(load_config(args.config, args.set)), end="")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from iclab.config import load_config
    from iclab.training import train

    overrides = list(args.set)
    if args.device:
        overrides.append(f"device={args.device}")
    config = load_config(args.config, overrides)
    res = train(
        config,
        args.out,
        resume=not args.no_resume,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    last = res.metrics[-1]
    print(
        json.dumps(
            {
                "run_dir": str(args.out),
                "step": last["step"],
                "test_loss": last["test_loss"],
                "wall_s": round(res.wall_s, 2),
            }
        )
    )
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from iclab.analysis import figures
    from iclab.training.trainer import load_run

    res = load_run(args.run_dir, device="cpu")
    out = Path(args.run_dir) / "figures"
    figures.loss_curves({res.config.name: res.metrics}, out / "loss.png")
    last = res.metrics[-1]
    print(f"run {res.config.name}: step {last['step']}, per-seed test loss {last['test_loss']}")
    if not hasattr(res.model, "preconditioners"):  # effective A_ℓ/B_ℓ exist for LSA models only
        print(f"figures written to {out}")
        return 0
    A = res.model.preconditioners().detach()[0, :, 0]
    B = res.model.covariate_transforms().detach()[0, :, 0]
    L = A.shape[0]
    figures.matrix_heatmaps(
        [*A, *B],
        [f"A layer {i + 1}" for i in range(L)] + [f"B layer {i + 1}" for i in range(L)],
        out / "matrices.png",
        suptitle=f"{res.config.name} (seed {res.config.seed})",
    )
    print(f"figures written to {out}")
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from iclab.experiments import reproduce

    rows = reproduce(
        args.name, args.out, quick=args.quick, device=args.device, progress=not args.quiet
    )
    for r in rows:
        print(
            f"[{r.verdict:7s}] {r.quantity}: trained {r.trained_mean} ± {r.trained_std}, "
            f"theory {r.theory}, paper {r.paper}"
        )
    counts = {v: sum(r.verdict == v for r in rows) for v in ("pass", "refuted", "fail", "check")}
    print(
        ", ".join(f"{n} {v}" for v, n in counts.items())
        + f"; report: {Path(args.out) / 'report.md'}"
    )
    return 1 if counts["fail"] else 0


def _cmd_theory(args: argparse.Namespace) -> int:
    import torch

    from iclab.tasks import LinearRegressionConfig, LinearRegressionTask
    from iclab.theory import best_pgd_scalars, optimal_one_layer_loss, preconditioner_optimum

    torch.set_printoptions(precision=5, sci_mode=False)
    if args.what == "markov-one-layer":
        return _theory_markov_one_layer(args)
    args.d = 5 if args.d is None else args.d
    if args.what == "functional-gd":
        return _theory_functional_gd(args)
    args.n = 20 if args.n is None else args.n
    if args.what == "one-layer":
        cfg = LinearRegressionConfig(
            d=args.d,
            n=args.n,
            covariance=args.covariance,
            weight_prior=args.weight_prior,
            noise_std=args.noise,
        )
        task = LinearRegressionTask(cfg, seeds=[args.seed], dtype=torch.float64)
        a = preconditioner_optimum(
            task.covariance[0], task.weight_covariance[0], args.n, args.noise
        )
        f = optimal_one_layer_loss(
            task.covariance[0], task.weight_covariance[0], args.n, args.noise
        )
        print(f"Σ =\n{task.covariance[0]}\nA* =\n{a}\nf* = {float(f):.6g}")
    else:
        r = best_pgd_scalars(
            args.layers, args.d, args.n, args.noise, sparse=args.what == "sparse-scalars"
        )
        print(r)
    return 0


def _theory_functional_gd(args: argparse.Namespace) -> int:
    import torch
    from pydantic import ValidationError

    from iclab.algorithms import tune_functional_gd_steps
    from iclab.config import format_validation_error
    from iclab.tasks import GaussianProcessConfig, GaussianProcessTask
    from iclab.theory import gp_expected_loss

    allowed = ("linear", "relu", "exp", "softmax")
    acts = [a.strip() for a in args.activations.split(",") if a.strip()]
    for a in acts:
        if a not in allowed:
            raise ValueError(f"--activations: unknown {a!r}; allowed: {', '.join(allowed)}")
    try:
        depths = [int(v) for v in args.depths.split(",")]
    except ValueError:
        raise ValueError(
            f"--depths: expected a comma list of integers, got {args.depths!r}"
        ) from None
    if not depths or min(depths) < 1:
        raise ValueError(f"--depths: every L must be >= 1, got {args.depths!r}")
    if args.prompts < 1:
        raise ValueError(f"--prompts: must be >= 1, got {args.prompts}")
    try:
        cfg = GaussianProcessConfig(
            d=args.d, n=8 if args.n is None else args.n, kernel=args.kernel, noise_std=args.noise
        )
    except ValidationError as err:  # name the option: --kernel, --d, --n, --noise
        raise ConfigError(format_validation_error(err).replace("kernel.0.name", "kernel")) from None
    task = GaussianProcessTask(cfg, seeds=[args.seed], dtype=torch.float64)
    tune = task.sample(args.prompts, "tune")
    test = task.sample(args.prompts, "test")
    bayes = gp_expected_loss(test.x, test.x_query, cfg.kernel, cfg.noise_std, cfg.jitter)
    print(
        f"data kernel {args.kernel}, d={cfg.d}, n={cfg.n}, σ={cfg.noise_std}, "
        f"{args.prompts} test prompts: E[y_q²] = {test.y_query.pow(2).mean().item():.4g}, "
        f"Bayes (GP posterior mean) = {bayes.mean().item():.4g}"
    )
    print("tuned L-step functional GD (Q = K = I), test loss:")
    print(f"{'activation':>10s} " + " ".join(f"{'L=' + str(L):>9s}" for L in depths))
    for act in acts:
        losses = []
        for L in depths:
            tuned = tune_functional_gd_steps(tune.x, tune.y, tune.x_query, tune.y_query, act, L)
            pred = tuned.predict(test.x, test.y, test.x_query).prediction
            losses.append((pred - test.y_query).pow(2).mean().item())
        print(f"{act:>10s} " + " ".join(f"{v:9.4g}" for v in losses))
    return 0


def _theory_markov_one_layer(args: argparse.Namespace) -> int:
    import torch

    from iclab.theory.markov_one_layer import (
        non_realizability_certificate,
        one_layer_optimum_d1,
        one_layer_optimum_exact,
        recover_parameters,
    )

    d = 1 if args.d is None else args.d
    n = 10 if args.n is None else args.n
    if not 0 < args.p < 1:
        raise ValueError(f"--p: must be in (0, 1), got {args.p}")
    if d < 1 or d > 4:
        raise ValueError(f"--d: exact optimum for 1 <= d <= 4 (2^(d+1) chains), got {d}")
    torch.set_printoptions(precision=5, sci_mode=False)
    opt = one_layer_optimum_d1(args.p, n) if d == 1 else one_layer_optimum_exact(args.p, n, d)
    print(f"binary chains, d={d}, n={n}, p={args.p}: X* = H⁻¹h =\n{opt.X_star}")
    print(f"f̃(X*) = {opt.loss_star:.6g}   (E[y_q²] = {opt.y2_mean:.6g})")
    cert = non_realizability_certificate(opt.X_star, d, opt.H)
    rec = recover_parameters(opt.X_star, d, H=opt.H, minimize="loss")
    if cert.fires:
        print(
            f"not realizable by any one-layer LSA: certified loss gap ≥ {cert.loss_gap_bound:.4g}"
            f"; best (b, A) found: loss gap {rec.loss_gap:.4g}, residual {rec.residual:.4g}"
        )
    else:
        print(f"best (b, A) found: residual ‖φ(b, A) − X*‖ = {rec.residual:.3g}")
    print(f"b = {rec.b}\nA =\n{rec.A}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="iclab",
        description="iclab: sample in-context-learning problems, train attention models on them, "
        "and check what they learn against closed-form theory.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("presets", help="list the shipped YAML presets")
    s.set_defaults(func=_cmd_presets)

    setopt = dict(
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set train.lr=0.01 (repeatable; values are YAML)",
    )

    s = sub.add_parser("show", help="print the fully resolved configuration of a preset or file")
    s.add_argument("config", help="preset name (see 'iclab presets') or path to a YAML file")
    s.add_argument("--set", **setopt)
    s.set_defaults(func=_cmd_show)

    s = sub.add_parser(
        "train",
        help="train an ensemble of seeds and write a run folder",
        description="Train config.n_seeds models in one tensor program. The run folder "
        "gets config.yaml, metrics.jsonl, safetensors checkpoints and run.json; "
        "running the same command again resumes from the last checkpoint.",
    )
    s.add_argument("config", help="preset name (see 'iclab presets') or path to a YAML file")
    s.add_argument("--out", required=True, help="run folder to write (created if missing)")
    s.add_argument("--set", **setopt)
    s.add_argument("--device", help="override the device: auto, cpu, cuda, cuda:1 …")
    s.add_argument("--overwrite", action="store_true", help="discard an existing run in --out")
    s.add_argument(
        "--no-resume", action="store_true", help="start from step 0 even if a checkpoint exists"
    )
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_cmd_train)

    s = sub.add_parser("report", help="figures (loss curve, A_ℓ/B_ℓ heat-maps) for a run folder")
    s.add_argument("run_dir", help="a folder written by 'iclab train'")
    s.set_defaults(func=_cmd_report)

    from iclab.experiments import EXPERIMENTS

    s = sub.add_parser(
        "reproduce",
        help="reproduce a paper: runs, figures, report.md and report.json",
        description="Experiments: " + "; ".join(f"{k}: {v[0]}" for k, v in EXPERIMENTS.items()),
    )
    s.add_argument("name", choices=sorted(EXPERIMENTS), help="which paper")
    s.add_argument(
        "--out", required=True, help="output folder (runs/, figures/, report.md, report.json)"
    )
    s.add_argument(
        "--quick", action="store_true", help="small budget: about 10 minutes on 2 CPU cores"
    )
    s.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda …")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.set_defaults(func=_cmd_reproduce)

    s = sub.add_parser(
        "theory",
        help="closed-form theory: Ahn et al. (2023), Cheng et al. (2024)",
        description="one-layer: A* and f* of Theorem 1. pgd-scalars / sparse-scalars: "
        "best a_ℓ (and b_ℓ) inside the class of Theorems 3–4 (Σ_w = Σ⁻¹). functional-gd: "
        "test loss of L-step functional GD per activation kernel (steps tuned on held-out "
        "prompts, float64) on GP prompts, with the Bayes (GP posterior mean) floor. "
        "markov-one-layer: Ding et al.'s convex optimum X* = H⁻¹h of one LSA layer on binary "
        "Markov chains (exact; d = 1 in closed form), whether an LSA realizes it, and the best "
        "(b, A) found with a certificate when it does not.",
    )
    s.add_argument(
        "what",
        choices=["one-layer", "pgd-scalars", "sparse-scalars", "functional-gd", "markov-one-layer"],
    )
    s.add_argument(
        "--d", type=int, default=None, help="input dimension (default 5; markov-one-layer: 1)"
    )
    s.add_argument(
        "--n",
        type=int,
        default=None,
        help="context examples (default 20; functional-gd: 8; markov-one-layer: 10)",
    )
    s.add_argument("--layers", type=int, default=3, help="layers for *-scalars (default 3)")
    s.add_argument(
        "--covariance", default="identity", choices=["identity", "rotated"], help="Σ (one-layer)"
    )
    s.add_argument(
        "--weight-prior",
        default="identity",
        choices=["identity", "inverse_covariance"],
        help="Σ_w (one-layer)",
    )
    s.add_argument("--noise", type=float, default=0.0, help="label noise σ (default 0)")
    s.add_argument("--seed", type=int, default=0, help="seed of the rotation / of the GP prompts")
    s.add_argument(
        "--kernel", default="exp", help="functional-gd: data kernel, linear | relu | exp"
    )
    s.add_argument(
        "--activations",
        default="linear,relu,exp,softmax",
        help="functional-gd: comma list of attention kernels (default all four)",
    )
    s.add_argument(
        "--depths", default="1,3,5,7", help="functional-gd: comma list of L (default 1,3,5,7)"
    )
    s.add_argument(
        "--prompts", type=int, default=4000, help="functional-gd: tuning and test prompts"
    )
    s.add_argument("--p", type=float, default=0.5, help="markov-one-layer: P(s_1 = 1), in (0, 1)")
    s.set_defaults(func=_cmd_theory)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, ValueError) as err:
        print(f"iclab: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
