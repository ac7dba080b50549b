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


def _cmd_kinds(args: argparse.Namespace) -> int:
    import iclab.config  # noqa: F401  (registers the built-in kinds)
    from iclab import registry

    print("task kinds (the batch each samples; the models that read it):")
    for name, t in sorted(registry.TASKS.items()):
        models = ", ".join(registry.compatible_models(name))
        print(f"  {name:24s} {t.batch.__name__:22s} models: {models}")
    print("model kinds (the batches each reads):")
    for name, m in sorted(registry.MODELS.items()):
        accepts = ", ".join(a.__name__ for a in m.accepts)
        print(f"  {name:24s} {accepts}")
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
    source = args.config
    if source is None:
        if args.resume_from is None:
            raise ConfigError("config: name a preset or a YAML file (or give --resume-from DIR)")
        source = str(Path(args.resume_from) / "config.yaml")
    config = load_config(source, overrides)
    res = train(
        config,
        args.out,
        resume=not args.no_resume,
        overwrite=args.overwrite,
        progress=not args.quiet,
        resume_from=args.resume_from,
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

    run_dir = Path(args.run_dir)
    res = load_run(run_dir, device="cpu")  # refuses a folder that is not a run
    out = run_dir / "figures"
    figures.loss_curves({res.config.name: res.metrics}, out / "loss.png")
    last = res.metrics[-1]
    print(f"run {res.config.name}: step {last['step']}, per-seed test loss {last['test_loss']}")
    # the effective weights of the first seed: every (…, r, c) matrix, one panel per layer/head
    mats, titles = [], []
    for name, w in res.model.effective_weights().items():
        w = w[0].abs() if w.is_complex() else w[0]
        if w.ndim < 2 or w.shape[-1] * w.shape[-2] < 4:
            continue
        flat = w.reshape(-1, *w.shape[-2:])
        for i, m in enumerate(flat[:8]):
            mats.append(m.float())
            titles.append(f"{name} {i + 1}" if len(flat) > 1 else name)
    if mats:
        figures.matrix_heatmaps(
            mats[:24],
            titles[:24],
            out / "matrices.png",
            suptitle=f"{res.config.name}: effective weights (seed {res.config.seed})",
        )
    print(f"figures written to {out}")
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from iclab.experiments import reproduce

    rows = reproduce(
        args.name,
        args.out,
        quick=args.quick,
        device=args.device,
        progress=not args.quiet,
        executor=_executor(args),
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


def _executor(args: argparse.Namespace):
    from iclab.training.executors import make_executor

    return make_executor(
        args.executor,
        workers=args.workers,
        address=args.address,
        cpus_per_run=args.cpus_per_run,
        gpus_per_run=args.gpus_per_run,
        threads_per_run=args.threads_per_run,
        retries=args.retries,
        progress=not args.quiet,
        imports=args.imports,
    )


def _cmd_sweep(args: argparse.Namespace) -> int:
    from iclab.experiments.sweep import RESULTS, expand, load_sweep, run_sweep

    spec = load_sweep(args.grid)
    points = expand(spec)  # every point is checked before an executor starts
    if args.dry_run:
        _print_sweep_plan(points, Path(args.out))
        return 0
    executor = _executor(args)
    print(f"sweep: {len(points)} runs on the {executor.name} executor → {args.out}/runs")

    def done(outcome) -> None:
        extra = f" ({outcome.message.splitlines()[0][:160]})" if outcome.message else ""
        trained = (
            f", {outcome.steps_run} steps in {outcome.wall_s:.1f} s" if outcome.steps_run else ""
        )
        print(f"  [{outcome.status}] {outcome.name}{trained}{extra}", flush=True)

    rows = run_sweep(spec, args.out, executor, on_done=done)
    bad = [r for r in rows if r["status"] != "completed"]
    print(
        f"{len(rows) - len(bad)} completed, {len(bad)} not; results: "
        f"{Path(args.out) / RESULTS}, figure: {Path(args.out) / 'figures' / 'sweep.png'}"
    )
    return 1 if bad else 0


def _print_sweep_plan(points: list, out: Path) -> None:
    """Each point's run folder, whether it is done, and its memory estimate; writes nothing."""
    from iclab.experiments.sweep import RUNS
    from iclab.training.executors import Job, is_completed
    from iclab.training.memory import estimate_bytes

    done = 0
    for p in points:
        run_dir = out / RUNS / p.name
        if is_completed(Job(p.name, p.config, run_dir)):
            state, done = "completed", done + 1
        else:
            state = "to resume" if run_dir.exists() else "to train"
        gib = sum(estimate_bytes(p.config).values()) / 2**30
        steps = p.config.train.steps
        print(f"  {p.name}: {state}, {steps} steps, ~{gib:.2g} GiB")
    print(f"sweep (dry run): {len(points)} runs, {done} completed, nothing written under {out}")


def _cmd_theory(args: argparse.Namespace) -> int:
    import torch

    from iclab.tasks import LinearRegressionConfig, LinearRegressionTask
    from iclab.theory import best_pgd_scalars, optimal_one_layer_loss, preconditioner_optimum

    torch.set_printoptions(precision=5, sci_mode=False)
    if args.what == "markov-one-layer":
        return _theory_markov_one_layer(args)
    if args.what == "mesa":
        return _theory_mesa(args)
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

    from iclab.theory.markov_chain import (
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


def _theory_mesa(args: argparse.Namespace) -> int:
    import math

    from iclab.theory.linear_dynamics.mesa_optimizer import (
        limit_ab,
        predicted_mean_ratio,
        recovers_sequence,
        x1_moments,
    )

    d = 5 if args.d is None else args.d
    if args.T < 3:
        raise ValueError(f"--T: must be >= 3, got {args.T}")
    law = args.x1
    moments = x1_moments(
        law,
        d,
        sigma=args.sigma if law == "gaussian" else None,
        c=args.scale if law == "sparse" else None,
    )
    c_star = limit_ab(args.T, d, moments)
    c_inf = limit_ab(math.inf, d, moments)
    print(
        f"linear dynamics x_(t+1) = W x_t, W diagonal unitary, x_1 {law}, d={d}, T={args.T}: "
        f"κ2 = {moments.kappa2:.6g}, κ4 = {moments.kappa4:.6g}, κ6 = {moments.kappa6:.6g}, "
        f"κ24 = {moments.kappa24:.6g}"
    )
    print(f"c* (minimizer of the population loss over ab) = {c_star:.6g}; T → ∞: {c_inf:.6g}")
    print(
        f"mean prediction/truth ratio at the last step ≈ c*·κ2 = {predicted_mean_ratio(c_star, moments):.6g}"
    )
    print(
        "recovers the sequence: exactly at every T: "
        f"{'yes' if recovers_sequence(moments) else 'no'}; as T → ∞: "
        f"{'yes' if recovers_sequence(moments, asymptotic=True) else 'no'}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="iclab",
        description="iclab: sample in-context-learning problems, train attention models on them, "
        "and check what they learn against closed-form theory.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p.add_argument(
        "--debug",
        action="store_true",
        help="show the Python traceback of an error instead of one line",
    )
    p.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import a Python module first, e.g. one that registers its own task or model kinds "
        "(repeatable; a file path or a dotted module name)",
    )
    s = sub.add_parser("presets", help="list the shipped YAML presets")
    s.set_defaults(func=_cmd_presets)

    s = sub.add_parser(
        "kinds",
        help="list the registered task and model kinds and which pairs fit",
        description="Every task kind with the batch type it samples and the model kinds that "
        "read it; every model kind with the batch types it reads. Kinds registered by a module "
        "given with --import are listed too.",
    )
    s.set_defaults(func=_cmd_kinds)

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
    s.add_argument(
        "config",
        nargs="?",
        help="preset name (see 'iclab presets') or path to a YAML file (default with "
        "--resume-from: the parent run's config.yaml)",
    )
    s.add_argument(
        "--out",
        required=True,
        help="run folder to write (created if missing; an existing one must be an iclab run)",
    )
    s.add_argument("--set", **setopt)
    s.add_argument("--device", help="override the device: auto, cpu, cuda, cuda:1 …")
    s.add_argument("--overwrite", action="store_true", help="discard an existing run in --out")
    s.add_argument(
        "--no-resume", action="store_true", help="start from step 0 even if a checkpoint exists"
    )
    s.add_argument(
        "--resume-from",
        metavar="DIR",
        help="continue another run (e.g. a diverged one) from its last good checkpoint into the "
        "new folder --out, with the settings given here (e.g. --set train.lr=1e-4); the new "
        "run records DIR as its parent and DIR is left as it was (to start a fresh run from a "
        "completed run's final weights instead, e.g. a deeper LSA from a shallower one: --set "
        "train.init_from=NAME, a path relative to --out's parent)",
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
    _executor_options(s)
    s.set_defaults(func=_cmd_reproduce)

    s = sub.add_parser(
        "sweep",
        help="train a grid of runs around a preset and tabulate the final losses",
        description="GRID.yaml names a preset (or a YAML config file), fixed overrides and a "
        "grid of dotted keys to lists, e.g. 'preset: ahn2023_identity_L3', 'set: {train.steps: "
        "200}', 'grid: {model.layers: [1, 2, 3], task.n: [10, 20]}'. Every point is validated "
        "before any run. Each trains into OUT/runs/<values>_<hash>; completed runs are skipped "
        "and interrupted ones resume, so the same command finishes an interrupted sweep. "
        "OUT/results.csv has one row per run (the swept keys, test_loss_mean, test_loss_std, "
        "steps, wall_s, status, run) and OUT/figures/sweep.png the final loss against each key.",
    )
    s.add_argument("grid", help="the grid file (YAML)")
    s.add_argument("--out", required=True, help="sweep folder (runs/, results.csv, figures/)")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.add_argument(
        "--dry-run",
        action="store_true",
        help="validate every point and list the runs (completed, to resume, to train) with "
        "their memory estimates; train nothing, write nothing",
    )
    _executor_options(s)
    s.set_defaults(func=_cmd_sweep)

    s = sub.add_parser(
        "theory",
        help="closed-form theory of the four papers (Ahn, Cheng, Ding, Zheng et al.)",
        description="one-layer: A* and f* of Theorem 1. pgd-scalars / sparse-scalars: "
        "best a_ℓ (and b_ℓ) inside the class of Theorems 3–4 (Σ_w = Σ⁻¹). functional-gd: "
        "test loss of L-step functional GD per activation kernel (steps tuned on held-out "
        "prompts, float64) on GP prompts, with the Bayes (GP posterior mean) floor. "
        "markov-one-layer: Ding et al.'s convex optimum X* = H⁻¹h of one LSA layer on binary "
        "Markov chains (exact; d = 1 in closed form), whether an LSA realizes it, and the best "
        "(b, A) found with a certificate when it does not. mesa: Zheng et al.'s limit c* of "
        "the trained ab, the predicted prediction/truth ratio and whether the x_1 law lets the "
        "mesa-optimizer recover the sequence.",
    )
    s.add_argument(
        "what",
        choices=[
            "one-layer",
            "pgd-scalars",
            "sparse-scalars",
            "functional-gd",
            "markov-one-layer",
            "mesa",
        ],
        help="which quantity (see the description above)",
    )
    s.add_argument(
        "--d",
        type=int,
        default=None,
        help="input dimension (default 5; markov-one-layer: 1)",
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
    s.add_argument("--T", type=int, default=100, help="mesa: sequence length T (default 100)")
    s.add_argument(
        "--x1",
        default="gaussian",
        choices=["gaussian", "sparse", "ones"],
        help="mesa: law of x_1 (default gaussian)",
    )
    s.add_argument("--sigma", type=float, default=1.0, help="mesa: σ of a Gaussian x_1 (default 1)")
    s.add_argument("--scale", type=float, default=1.0, help="mesa: c of a sparse x_1 = ±c e_k")
    s.set_defaults(func=_cmd_theory)
    return p


def _executor_options(s: argparse.ArgumentParser) -> None:
    g = s.add_argument_group("executor (where the runs train)")
    g.add_argument(
        "--executor",
        default="auto",
        choices=["auto", "local", "ray"],
        help="local: in this process, one run after another; ray: each run a Ray task, "
        "--workers at a time, retried when its worker dies (pip install 'iclab[ray]'); auto "
        "(default): ray when it is installed and --workers > 1 or --address is given, else local",
    )
    g.add_argument(
        "--workers", type=int, default=1, help="runs trained at the same time (ray; default 1)"
    )
    g.add_argument(
        "--address",
        default=None,
        help="join the Ray cluster at ADDR (e.g. 10.0.0.1:6379 or 'auto'; default: $RAY_ADDRESS, "
        "else start a Ray instance on this machine)",
    )
    g.add_argument(
        "--cpus-per-run",
        type=float,
        default=None,
        help="Ray CPUs per run (default: this machine's cores / --workers)",
    )
    g.add_argument(
        "--gpus-per-run",
        type=float,
        default=None,
        help="Ray GPUs per run, fractions allowed, e.g. 0.25 puts four runs on a GPU (default: "
        "the cluster's GPUs shared by the workers, at most 1; 0 without GPUs)",
    )
    g.add_argument(
        "--threads-per-run",
        type=int,
        default=None,
        help="torch threads of each run (ray default: its CPUs; local default: torch's own). "
        "float32 CPU sums depend on it: equal counts give bit-identical numbers",
    )
    g.add_argument(
        "--retries",
        type=int,
        default=3,
        help="ray: how often a run whose worker process died is restarted (it resumes from "
        "its checkpoint; default 3)",
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from iclab import registry
    from iclab.training.checkpoint import RunFolderError
    from iclab.training.trainer import TrainingDiverged

    try:
        for module in args.imports:
            registry.import_user_module(module)
        return int(args.func(args) or 0)
    except (ConfigError, ValueError, KeyError) as err:  # bad usage or configuration
        if args.debug:
            raise
        print(f"iclab: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except (TrainingDiverged, RunFolderError, OSError, RuntimeError) as err:  # the run failed
        if args.debug:
            raise
        print(f"iclab: error: {_one_line(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "iclab: interrupted (the last checkpoint is kept; run again to resume)", file=sys.stderr
        )
        return 130


def _one_line(err: BaseException) -> str:
    """The error as one line: a KeyError's quotes removed, an OSError with its file."""
    if isinstance(err, KeyError) and err.args:
        return str(err.args[0])
    if isinstance(err, OSError) and err.filename:
        return f"{err.strerror or err}: {err.filename}"
    return str(err)


if __name__ == "__main__":
    sys.exit(main())
