"""The trainer. A run folder holds::

    config.yaml              resolved configuration (what produced everything else)
    run.json                 status (running | completed | diverged), versions, timings
    metrics.jsonl            one JSON record per evaluation: step, lr, per-seed train/test loss
    checkpoint.safetensors   parameters + optimizer state at the last checkpoint (for resume)
    model.safetensors        final parameters

The trainer knows nothing model-specific: it builds the task and model the registry
(:mod:`iclab.registry`) names for the config's kinds and uses only the contract of
:class:`iclab.models.EnsembleModel`: ``prepare(batch) -> state``, ``loss_prepared(state, batch)
-> (E,)`` (the objective per member) and ``eval_metrics(state, batch) -> {name: per-seed
list}``, logged with every evaluation. Progress bars, TensorBoard and step hooks are callbacks
(:mod:`iclab.training.callbacks`).

Polishing (``train.polish``, LSA only): after ``train.steps`` first-order steps,
``polish.steps`` Levenberg–Marquardt iterations on one fixed batch (stream (seed, "polish", 0)),
then ``polish.averaging_steps`` Gauss–Newton steps on fresh batches (seed, "polish", j) with
step sizes 1/2, 1/3, … (see :mod:`iclab.training.levenberg_marquardt`). Every polishing step is
evaluated and checkpointed; its damping λ is part of the checkpoint. With
``polish.tail_scales`` the polishing batches (fixed and fresh) come from the task's
``sample_tilted`` on the same streams: each prompt's context covariates are scaled by a factor
drawn from the list and its squared error is weighted by the likelihood ratio p/q, so the
batches hold far more prompts with a large sample covariance (which dominate a deep LSA's loss)
while the weighted loss, the one logged as ``train_loss`` for these steps, stays unbiased. The
batch and its weights are a function of the stream alone, so resume redraws them exactly.

Starting weights: a run starts from its random initialization, or from another completed run's
final weights with ``train.init_from`` (e.g. a deeper LSA from a shallower one; see
:mod:`iclab.training.initialization`).

Determinism: training batch k is drawn from the stream (seed, "train", k) and the test set from
(seed, "test", 0), so the same config and seed give the same numbers, and a run killed at any
point resumes from its last checkpoint to exactly the metrics of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import iclab
from iclab import registry
from iclab.atomic_io import atomic_write_json, atomic_write_text
from iclab.config import (
    ConfigError,
    RunConfig,
    curriculum_ends,
    dump_config,
    load_config,
    make_config,
)
from iclab.device import matmul_precision, peak_memory, resolve_device, resolve_dtype
from iclab.models import EnsembleModel
from iclab.tasks import EnsembleTask
from iclab.training import checkpoint as io
from iclab.training.callbacks import (
    Callback,
    ProgressBar,
    RunInfo,
    StepFunction,
    TensorBoardLogger,
)
from iclab.training.checkpoint import RunFolderError
from iclab.training.initialization import (
    InitState,
    init_source,
    load_init_weights,
    read_init_source,
    source_changed,
)
from iclab.training.levenberg_marquardt import averaging_step, lm_iteration
from iclab.training.memory import check_memory
from iclab.training.optim import build_optimizer, clip_gradients, lr_factor
from iclab.training.run_folder import (
    FolderLock,
    check_out_path,
    fingerprint,
    remove_stale_temporaries,
)


class TrainingDiverged(RuntimeError):
    """Raised when a loss becomes NaN/inf; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    config: RunConfig
    model: Any  # an EnsembleModel of the registered kind
    task: Any  # an EnsembleTask of the registered kind
    metrics: list[dict[str, Any]]
    run_dir: Path | None
    wall_s: float
    steps_run: int
    info: dict[str, Any] = field(default_factory=dict)

    def final_test_loss(self) -> torch.Tensor:
        """Per-seed test loss at the last evaluation, (E,)."""
        return torch.tensor(self.metrics[-1]["test_loss"], dtype=torch.float64)


def build_task(config: RunConfig, device: torch.device, dtype: torch.dtype) -> EnsembleTask:
    """The task sampler of the registered kind ``config.task.kind`` for the run's seeds."""
    builder = registry.task_kind(config.task.kind).builder  # type: ignore[attr-defined]
    return builder(config.task, config.seeds, device=device, dtype=dtype)


def build_model(config: RunConfig, device: torch.device, dtype: torch.dtype) -> EnsembleModel:
    """The ensemble model of the registered kind ``config.model.kind`` (``d`` from the task)."""
    builder = registry.model_kind(config.model.kind).builder  # type: ignore[attr-defined]
    return builder(config.task.d, config.model, config.seeds, device=device, dtype=dtype)  # type: ignore[attr-defined]


RUN_FILES = (io.CHECKPOINT, io.MODEL, io.METRICS, io.RUN_INFO)


def _prepare_run_dir(config: RunConfig, run_dir: Path, overwrite: bool) -> None:
    """With the folder's lock held: remove stale temporaries, refuse a folder whose results came
    from another configuration, and write ``config.yaml``. A folder without results (a run that
    failed before its first checkpoint) never blocks a corrected configuration."""
    remove_stale_temporaries(run_dir)
    cfg_path = run_dir / io.CONFIG
    has_results = any((run_dir / name).exists() for name in (io.CHECKPOINT, io.MODEL))
    if cfg_path.exists() and not overwrite and has_results:
        try:
            existing = load_config(cfg_path)
        except ConfigError as err:
            raise RunFolderError(f"{cfg_path}: unreadable ({str(err)[:200]})") from None
        if existing != config:
            raise ConfigError(
                f"out: {run_dir} holds a run with a different configuration; choose another "
                "--out, pass --overwrite, or continue it with --resume-from into a new folder"
            )
    if overwrite or not has_results:
        for name in RUN_FILES:
            (run_dir / name).unlink(missing_ok=True)
    atomic_write_text(cfg_path, dump_config(config))


def _repair_views(
    run_dir: Path,
    model: EnsembleModel,
    metrics: list[dict[str, Any]],
    total: int,
    config: RunConfig,
) -> None:
    """A completed run's views, rewritten from its checkpoint when damaged or missing:
    ``metrics.jsonl`` and the final ``model.safetensors`` (the checkpoint of the last step)."""
    try:
        intact = io.read_metrics(run_dir / io.METRICS) == metrics
    except RunFolderError:
        intact = False
    if not intact:
        io.write_metrics(run_dir / io.METRICS, metrics)
    if not (run_dir / io.MODEL).exists():
        _save_final_model(run_dir, model, total, config)


def _save_final_model(run_dir: Path, model: EnsembleModel, total: int, config: RunConfig) -> None:
    meta = {"step": total, "config": config.to_dict()}
    io.save_tensors(run_dir / io.MODEL, dict(model.state_dict()), meta)


def _same_config(meta: dict[str, Any], config: RunConfig) -> bool:
    """A checkpoint written before fingerprints (format 1): its stored configuration, completed
    with today's defaults for fields added since, must equal the run's."""
    try:
        return make_config(meta.get("config") or {}) == config
    except ConfigError:
        return False


def _restore(
    path: Path,
    config: RunConfig,
    model: EnsembleModel,
    opt: torch.optim.Optimizer,
    total: int,
    *,
    foreign: bool = False,
) -> tuple[int, list[dict[str, Any]], dict[str, torch.Tensor], dict[str, Any]]:
    """Load a checkpoint into ``model`` and ``opt`` after checking that it belongs to this run:
    its configuration fingerprint (not for ``foreign``: a parent run continued with other
    settings), its step and its tensor set. Returns (step, metrics, tensors, metadata)."""
    tensors, meta = io.load_tensors(path)
    if not foreign:
        stored = meta.get("fingerprint")
        same = stored == fingerprint(config) if stored is not None else _same_config(meta, config)
        if not same:
            raise RunFolderError(
                f"{path}: written by a different configuration than {path.parent / io.CONFIG}; "
                "it cannot be resumed here (pass --overwrite to start over)"
            )
    step = meta.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= total:
        raise RunFolderError(
            f"{path}: its step {step!r} is not within this run's 0..{total} steps; the file was "
            "edited or belongs to another run"
        )
    params = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    expected = {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}
    found = {k: (tuple(v.shape), v.dtype) for k, v in params.items()}
    if found != expected:
        diff = sorted(set(expected) ^ set(found)) or [
            k for k in expected if expected[k] != found[k]
        ]
        raise RunFolderError(
            f"{path}: its parameters do not match this model (first difference: {diff[0]!r}; "
            f"expected {expected.get(diff[0])}, found {found.get(diff[0])})"
        )
    model.load_state_dict(params)
    optimizer_meta = meta.get("optimizer")
    if foreign:
        # a parent continued with other settings: keep this run's hyperparameters, and the
        # parent's moments only when the optimizer is the same kind
        parent_kind = (meta.get("config") or {}).get("train", {}).get("optimizer")
        if parent_kind != config.train.optimizer:
            optimizer_meta = None
        elif optimizer_meta is not None:
            optimizer_meta = {**optimizer_meta, "param_groups": opt.state_dict()["param_groups"]}
    if optimizer_meta is not None:
        try:
            io.restore_optimizer(opt, tensors, optimizer_meta)
        except (KeyError, ValueError, RuntimeError, TypeError) as err:
            raise RunFolderError(
                f"{path}: its optimizer state does not fit this run ({err})"
            ) from None
    elif not foreign:
        raise RunFolderError(f"{path}: has no optimizer state")
    if "metrics" in meta:
        metrics = [m for m in meta["metrics"] if m["step"] <= step]
    else:  # a checkpoint written before the metrics moved inside it
        metrics = [m for m in io.read_metrics(path.parent / io.METRICS) if m["step"] <= step]
    return step, metrics, tensors, meta


def train(
    config: RunConfig,
    out: str | Path | None = None,
    *,
    resume: bool = True,
    overwrite: bool = False,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
    callbacks: Sequence[Callback] = (),
    resume_from: str | Path | None = None,
) -> TrainResult:
    """Train ``config.n_seeds`` models in one tensor program; see the module docstring.

    ``progress`` adds a :class:`ProgressBar`, ``config.train.tensorboard`` a
    :class:`TensorBoardLogger` and ``on_step`` a :class:`StepFunction` to ``callbacks``.
    ``resume_from``: a run folder whose last good checkpoint starts this run (which may change
    training settings, e.g. a smaller ``train.lr`` after a divergence); ``out`` records it as
    the parent. Nothing is written before the configuration, the folder and the memory estimate
    have been checked; the folder is locked while the run writes it."""
    run_dir = check_out_path(out) if out is not None else None
    parent = None
    if resume_from is not None:
        parent = Path(resume_from)
        if run_dir is None:
            raise ConfigError("resume_from: needs a new run folder to write (--out)")
        if not (parent / io.CHECKPOINT).is_file():
            raise ConfigError(f"resume-from: {parent} has no checkpoint to continue from")
        if parent.resolve() == run_dir.resolve():
            raise ConfigError("resume-from: must differ from --out (the parent is kept as it was)")
    hooks: list[Callback] = [ProgressBar()] if progress else []
    if config.train.tensorboard:
        if run_dir is None:
            raise ConfigError("train.tensorboard: needs a run folder (--out)")
        try:
            hooks.append(TensorBoardLogger())
        except ImportError:
            raise ConfigError(
                "train.tensorboard: needs the 'tensorboard' package (pip install 'iclab[tensorboard]')"
            ) from None
    hooks += list(callbacks)
    if on_step is not None:
        hooks.append(StepFunction(on_step))
    check_memory(config)
    device = resolve_device(config.device)
    init = init_source(config, run_dir)
    if init is not None and parent is not None:
        _check_parent_init(config, parent)
    own = run_dir is not None and resume and not overwrite and (run_dir / io.CHECKPOINT).exists()
    start_state = None
    if init is not None and run_dir is not None and parent is None and not own:
        # a fresh start: the source and its weights are checked before anything is written
        start_state = read_init_source(config, init, run_dir)
        load_init_weights(
            build_model(config, torch.device("cpu"), resolve_dtype(config.dtype)), start_state
        )
    with contextlib.ExitStack() as held:
        if run_dir is not None:
            held.enter_context(FolderLock(run_dir))
        precision = held.enter_context(matmul_precision(config.precision, device))
        return _train(
            config, run_dir, resume, overwrite, hooks, parent, precision, init, start_state
        )


def _check_parent_init(config: RunConfig, parent: Path) -> None:
    """``--resume-from`` continues the parent's checkpoint, so a ``train.init_from`` can only be
    the one the parent itself started from (inherited with its configuration)."""
    try:
        theirs = load_config(parent / io.CONFIG).train.init_from
    except ConfigError:
        theirs = None
    if theirs != config.train.init_from:
        raise ConfigError(
            f"train.init_from: {config.train.init_from!r} cannot start a run continued with "
            f"--resume-from, which starts from its parent's checkpoint (the parent's value: "
            f"{theirs!r}); set train.init_from={'null' if theirs is None else theirs}"
        )


def _train(
    config: RunConfig,
    run_dir: Path | None,
    resume: bool,
    overwrite: bool,
    hooks: list[Callback],
    parent: Path | None,
    precision: str,
    init: Path | None = None,
    start_state: InitState | None = None,
) -> TrainResult:
    """``precision``: what :func:`matmul_precision` put into effect, recorded in ``run.json``;
    ``init``: the ``train.init_from`` folder, and ``start_state`` its weights as :func:`train`
    checked and read them (read here if a fresh start was not expected there)."""
    tcfg = config.train
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # bfloat16 autocast of the training forward (precision: bf16); evaluation stays float32
    autocast = (
        (lambda: torch.autocast(device.type, dtype=torch.bfloat16))
        if config.precision == "bf16"
        else contextlib.nullcontext
    )
    if run_dir is not None:
        _prepare_run_dir(config, run_dir, overwrite)

    task = build_task(config, device, dtype)
    model = build_model(config, device, dtype)
    opt = build_optimizer(model.parameters(), tcfg)
    polish = tcfg.polish
    # first-order steps, Levenberg–Marquardt on one fixed batch, Gauss–Newton averaging steps
    total = tcfg.steps + polish.steps + polish.averaging_steps
    damping = torch.full((config.n_seeds,), polish.damping, dtype=torch.float64, device=device)
    metrics: list[dict[str, Any]] = []
    start = 0
    lineage: dict[str, Any] = {}
    started_from: dict[str, Any] = {}  # train.init_from: the run whose weights start this one
    source = None
    continued = False  # started from the parent's checkpoint: none of this folder's own yet
    if run_dir is not None and resume and (run_dir / io.CHECKPOINT).exists():
        source = run_dir / io.CHECKPOINT
    elif parent is not None:
        source, continued = parent / io.CHECKPOINT, True
    if source is not None:
        start, metrics, tensors, meta = _restore(
            source, config, model, opt, total, foreign=continued
        )
        if "polish.damping" in tensors:
            damping = tensors["polish.damping"].to(device, torch.float64)
        lineage = meta.get("parent") or {}
        started_from = meta.get("init_from") or {}
        if started_from and init is not None and not continued:
            changed = source_changed(started_from, init)
            if changed:
                raise RunFolderError(changed)
        if continued:
            lineage = {
                "run_dir": str(source.parent.resolve()),
                "step": start,
                "fingerprint": meta.get("fingerprint"),
            }
    elif init is not None and run_dir is not None:  # a fresh start (a resume never reads it)
        start_state = start_state or read_init_source(config, init, run_dir)
        load_init_weights(model, start_state)
        started_from = start_state.record
    if run_dir is not None and start >= total and (run_dir / io.RUN_INFO).exists():
        # already complete: report it as it was, only repairing damaged views
        try:
            done_info = json.loads((run_dir / io.RUN_INFO).read_text())
        except ValueError:
            done_info = {}  # a damaged run.json: finish the run again, which rewrites it
        if isinstance(done_info, dict) and done_info.get("status") == "completed":
            _repair_views(run_dir, model, metrics, total, config)
            return TrainResult(
                config, model, task, metrics, run_dir, float(done_info.get("wall_s", 0.0)),
                0, done_info,
            )  # fmt: skip
    objective = model.loss_prepared  # the per-member objective (E,)
    if tcfg.compile:
        # every model instance (and each train/eval shape) is a new guard on the same code object
        limit = torch._dynamo.config.recompile_limit
        torch._dynamo.config.recompile_limit = max(limit, 64)
        objective = torch.compile(model.loss_prepared, dynamic=False)

    test_batch = task.sample(tcfg.test_size, "test", 0)
    with torch.no_grad():
        test_state = model.prepare(test_batch)

    def evaluate() -> torch.Tensor:
        with torch.no_grad():
            return objective(test_state, test_batch)

    def extra_metrics() -> dict[str, Any]:
        """Model-specific per-seed diagnostics logged with every evaluation (e.g. ``ab``)."""
        with torch.no_grad():
            return model.eval_metrics(test_state, test_batch)

    info: dict[str, Any] = {
        "status": "running",
        "iclab": iclab.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "dtype": config.dtype,
        "precision": precision,
        "threads": torch.get_num_threads(),  # float32 CPU sums are split by thread count
        **({"implementation": impl} if (impl := model.implementation()) else {}),
        "resumed_from_step": start,
        "fingerprint": fingerprint(config),
        **({"parent": lineage} if lineage else {}),
        **({"init_from": started_from} if started_from else {}),
    }
    if run_dir is not None:
        atomic_write_json(run_dir / io.RUN_INFO, info)

    last_checkpoint = start if (run_dir is not None and start > 0 and not continued) else None

    def save_checkpoint(step: int, evaluated: bool) -> None:
        """Commit a checkpoint, but only of parameters seen to be good: finite, with a finite
        test loss (``evaluated``: the caller just checked it at this step)."""
        nonlocal last_checkpoint
        if run_dir is None:
            return
        if not evaluated:
            test = evaluate()
            if not torch.isfinite(test).all():
                raise diverged(step, "the test loss", test)
        for name, p in model.named_parameters():
            if not torch.isfinite(p).all():
                raise diverged(step, f"parameter {name}", None)
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
        ot, ometa = io.optimizer_tensors(opt)
        tensors.update(ot)
        if polish.steps + polish.averaging_steps > 0:
            tensors["polish.damping"] = damping
        meta = {
            "format": 2,
            "step": step,
            "optimizer": ometa,
            "config": config.to_dict(),
            "fingerprint": info["fingerprint"],
            "metrics": metrics,
            **({"parent": lineage} if lineage else {}),
            **({"init_from": started_from} if started_from else {}),
        }
        io.save_tensors(run_dir / io.CHECKPOINT, tensors, meta)  # the commit point
        last_checkpoint = step
        io.write_metrics(run_dir / io.METRICS, metrics)  # a view of the checkpoint's metrics

    def diverged(step: int, what: str, values: torch.Tensor | None) -> TrainingDiverged:
        """``values``: per-seed losses naming the bad seeds; None when the model itself raised."""
        bad = (
            [config.seeds[e] for e in range(len(values)) if not torch.isfinite(values[e])]
            if values is not None
            else list(config.seeds)
        )
        if last_checkpoint is not None:
            kept = f"The last good checkpoint (step {last_checkpoint}) is kept at {run_dir / io.CHECKPOINT}."
        elif run_dir is not None:
            kept = "No checkpoint had been written yet (the last good checkpoint is none)."
        else:
            kept = "No run folder: nothing was written (the last good checkpoint is none)."
        msg = (
            f"training diverged at step {step}: {what} is not finite for seed(s) {bad}. {kept} "
            "Try a smaller train.lr, a schedule with warm-up, or train.clip.mode=global."
        )
        if run_dir is not None:
            atomic_write_json(run_dir / io.RUN_INFO, {**info, "status": "diverged", "message": msg})
        return TrainingDiverged(msg)

    prior_wall = float(metrics[-1].get("wall_s", 0.0)) if metrics else 0.0
    t0 = time.perf_counter()

    def record(done: int, lr: float, loss: torch.Tensor, **extra: Any) -> None:
        """Evaluate on the test set and append a metrics record (diverged if not finite)."""
        try:
            test = evaluate()
        except FloatingPointError as err:
            raise diverged(done, f"the test forward pass [{err}]", None) from err
        if not torch.isfinite(test).all():
            raise diverged(done, "the test loss", test)
        metrics.append(
            {
                "step": done,
                "lr": lr,
                "train_loss": loss.detach().cpu().tolist(),
                "test_loss": test.cpu().tolist(),
                "wall_s": round(prior_wall + time.perf_counter() - t0, 3),
                **extra_metrics(),
                **extra,
            }
        )
        for h in hooks:
            h.on_evaluation(metrics[-1])

    def finish_step(done: int) -> None:
        for h in hooks:
            h.on_step(done)

    ends = curriculum_ends(config.task)  # a curriculum grows the training prompts to these

    def first_order_steps() -> None:
        state, grow = None, {}
        for step in range(start, tcfg.steps):
            if state is None or step % tcfg.resample_every == 0:
                first = step - step % tcfg.resample_every  # the same on resume
                grow = tcfg.curriculum.at(first, ends) if tcfg.curriculum else {}
                batch = task.sample(tcfg.batch_size, "train", step // tcfg.resample_every, **grow)
                with torch.no_grad():
                    state = model.prepare(batch)
                model.plan(state, min(first + tcfg.resample_every, tcfg.steps) - first)
            lr = tcfg.lr * lr_factor(step, tcfg.steps, tcfg.schedule)
            for g in opt.param_groups:
                g["lr"] = lr
            try:
                with autocast():
                    loss = objective(state, batch)
            except FloatingPointError as err:  # e.g. an exp logit overflowed in kernel attention
                raise diverged(step + 1, f"the forward pass [{err}]", None) from err
            if not torch.isfinite(loss).all():
                raise diverged(step + 1, "the training loss", loss.detach())
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()
            clip_gradients(model.parameters(), tcfg.clip)
            opt.step()
            done = step + 1
            evaluated = done % tcfg.eval_every == 0 or done == tcfg.steps
            if evaluated:
                record(done, lr, loss, **({"curriculum": grow} if tcfg.curriculum else {}))
            if done % tcfg.checkpoint_every == 0 or done == tcfg.steps:
                save_checkpoint(done, evaluated)
            finish_step(done)

    def polishing_steps() -> None:
        nonlocal damping
        weights: torch.Tensor | None = None  # per-prompt weights of a tilted polishing batch
        for step in range(max(start, tcfg.steps), total):
            # Levenberg–Marquardt on batch 0, then averaging on batch k − steps + 1
            k = step - tcfg.steps
            fresh = k >= polish.steps
            if fresh or step == max(start, tcfg.steps):
                index = k - polish.steps + 1 if fresh else 0
                if polish.tail_scales is None:
                    batch = task.sample(polish.batch_size, "polish", index)
                else:  # importance-sampled: more tail prompts, each with its weight p/q
                    batch, weights = task.sample_tilted(  # type: ignore[attr-defined]
                        polish.batch_size, "polish", index, polish.tail_scales
                    )
                with torch.no_grad():
                    state = model.prepare(batch)
            try:
                if fresh:
                    eta = 1.0 / (k - polish.steps + 2)
                    loss = averaging_step(model, state, batch.y_query, damping, eta, weights)
                else:
                    damping, loss = lm_iteration(model, state, batch.y_query, damping, weights)
            except FloatingPointError as err:
                raise diverged(step + 1, f"the forward pass [{err}]", None) from err
            if not torch.isfinite(loss).all():
                raise diverged(step + 1, "the polishing loss", loss)
            done = step + 1
            record(done, 0.0, loss, damping=damping.tolist())
            save_checkpoint(done, True)
            finish_step(done)

    for h in hooks:
        h.on_start(RunInfo(config.name, total, start, run_dir))
    try:
        first_order_steps()
        polishing_steps()
    except TrainingDiverged:
        raise  # run.json already says diverged, with the message
    except BaseException as err:
        if run_dir is not None:  # say what stopped the run; the last checkpoint stays resumable
            status = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
            reason = f"{type(err).__name__}: {err}"[:500]
            with contextlib.suppress(OSError):  # e.g. a full disk: the checkpoint is what counts
                atomic_write_json(
                    run_dir / io.RUN_INFO, {**info, "status": status, "message": reason}
                )
        raise
    finally:
        for h in hooks:
            h.close()
    wall = time.perf_counter() - t0
    steps_run = total - start
    total_wall = prior_wall + wall
    if start == total and not metrics:
        metrics.append(
            {"step": start, "lr": 0.0, "train_loss": [], "test_loss": evaluate().tolist()}
        )
    info.update(
        status="completed",
        wall_s=total_wall,
        session_wall_s=wall,
        steps_run=steps_run,
        steps_per_s=steps_run / wall if wall > 0 else None,
        peak_memory=peak_memory(device),  # of this process (a sweep's runs share one)
    )
    if run_dir is not None:
        _save_final_model(run_dir, model, total, config)
        io.write_metrics(run_dir / io.METRICS, metrics)
        atomic_write_json(run_dir / io.RUN_INFO, info)
    return TrainResult(config, model, task, metrics, run_dir, total_wall, steps_run, info)


def load_run(run_dir: str | Path, device: str | None = None) -> TrainResult:
    """Load a finished (or interrupted) run folder: config, final/last parameters, metrics."""
    run_dir = Path(run_dir)
    if not (run_dir / io.CONFIG).is_file():
        raise ConfigError(f"run_dir: {run_dir} is not a run folder (no {io.CONFIG})")
    config = load_config(run_dir / io.CONFIG)
    dev = resolve_device(device or config.device)
    dtype = resolve_dtype(config.dtype)
    model = build_model(config, dev, dtype)
    path = run_dir / io.MODEL if (run_dir / io.MODEL).exists() else run_dir / io.CHECKPOINT
    tensors, _ = io.load_tensors(path)
    # model.safetensors holds bare parameter names; a checkpoint prefixes them with "model." next
    # to the optimizer's "optim.*" and the polishing state "polish.*"
    sd = {
        k.removeprefix("model."): v
        for k, v in tensors.items()
        if not k.startswith(("optim.", "polish."))
    }
    model.load_state_dict(sd)
    import json

    info = (
        json.loads((run_dir / io.RUN_INFO).read_text()) if (run_dir / io.RUN_INFO).exists() else {}
    )
    return TrainResult(
        config,
        model,
        build_task(config, dev, dtype),
        io.read_metrics(run_dir / io.METRICS),
        run_dir,
        float(info.get("wall_s", 0.0)),
        int(info.get("steps_run", 0)),
        info,
    )
