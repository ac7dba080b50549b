"""Executors: where a list of independent runs is trained.

A :class:`Job` is one run: a name, a validated :class:`~iclab.config.RunConfig` and its run
folder. An executor trains a list of jobs and returns one :class:`Outcome` per job, in order;
a run that diverges or fails does not stop the others (the caller decides what a failure means).
Every run folder keeps its own guarantees (lock, fingerprint, resume from the last checkpoint),
so an executor may be stopped at any instant and run again: completed runs are skipped and the
interrupted ones resume to exactly the uninterrupted result. A job whose ``train.init_from``
names another job's run folder starts after that job completed (and fails without training when
it did not).

- :class:`LocalExecutor` trains the jobs in this process, one after another.
- :class:`RayExecutor` trains each job as a Ray task with ``num_cpus``/``num_gpus`` (fractions of
  a GPU let many small runs share one) and retries a task whose worker died; the retry resumes
  from the run's checkpoint. ``ray.init`` starts an embedded instance on this machine, or joins a
  cluster at ``address`` (or ``RAY_ADDRESS``). Ray is an optional extra: ``pip install
  'iclab[ray]'``.

Thread counts: float32 reductions on the CPU are split by thread, so the same config and seed
give bit-identical numbers only at the same torch thread count. Each run records its count in
``run.json`` (``threads``); both executors take ``threads_per_run`` (the Ray default is the
task's ``num_cpus``, so workers never oversubscribe the cores).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from iclab import registry
from iclab.config import ConfigError, RunConfig, make_config
from iclab.training.checkpoint import RunFolderError, read_run_info
from iclab.training.initialization import check_init_source, init_source, source_changed
from iclab.training.trainer import TrainingDiverged, train

EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class Job:
    """One run to train: ``config`` into the run folder ``run_dir``."""

    name: str
    config: RunConfig
    run_dir: Path


@dataclass(frozen=True)
class Outcome:
    """What became of a job: ``status`` is completed | diverged | failed."""

    name: str
    status: str
    steps_run: int = 0
    wall_s: float = 0.0
    message: str = ""
    error: str = ""  # the exception's class when the run failed (e.g. ConfigError)

    @property
    def ok(self) -> bool:
        return self.status == "completed"


def is_completed(job: Job) -> bool:
    """Whether ``job.run_dir`` already holds this configuration's completed run (nothing to do).
    A folder written by another configuration is not: training it reports the conflict."""
    from iclab.config import load_config
    from iclab.training.checkpoint import CONFIG

    info = read_run_info(job.run_dir)
    try:
        done = info.get("status") == "completed" and load_config(job.run_dir / CONFIG) == job.config
    except (OSError, ValueError):
        return False
    source = init_source(job.config, job.run_dir)
    if done and source is not None and isinstance(info.get("init_from"), dict):
        return source_changed(info["init_from"], source) is None  # else: training says why
    return done


def train_job(
    config: dict[str, Any],
    run_dir: str,
    name: str,
    threads: int | None = None,
    imports: Sequence[str] = (),
    progress: bool = False,
) -> Outcome:
    """Train one job (plain arguments, so a Ray worker can receive them); never raises for a
    run that diverged or failed, which becomes the :class:`Outcome`'s status and message."""
    for spec in imports:  # a worker process knows only the built-in kinds until told
        registry.import_user_module(spec)
    if threads is not None:
        torch.set_num_threads(max(1, int(threads)))
    try:
        res = train(make_config(config), run_dir, progress=progress)
    except TrainingDiverged as err:
        return Outcome(name, "diverged", message=str(err), error=type(err).__name__)
    except (ConfigError, RunFolderError, OSError, RuntimeError, ValueError) as err:
        return Outcome(name, "failed", message=str(err)[:500], error=type(err).__name__)
    return Outcome(name, "completed", res.steps_run, round(res.wall_s, 3))


def init_dependencies(jobs: Sequence[Job]) -> dict[int, int]:
    """{job index: index of the job it starts from} for the jobs whose ``train.init_from``
    names another job's run folder (a source outside the list must already be complete).
    Raises :class:`ConfigError` for runs that start from each other."""
    folders = {job.run_dir.resolve(): i for i, job in enumerate(jobs)}
    deps = {}
    for i, job in enumerate(jobs):
        source = init_source(job.config, job.run_dir)
        if source is None:
            continue
        if source.resolve() not in folders:  # must be complete now: checked before any run
            if not is_completed(job):
                check_init_source(job.config, source, job.run_dir)
            continue
        deps[i] = folders[source.resolve()]
        if deps[i] == i:
            raise ConfigError(f"train.init_from: run {job.name!r} names its own folder")
    for i in deps:
        seen, j = {i}, i
        while j in deps:
            j = deps[j]
            if j in seen:
                raise ConfigError(
                    f"train.init_from: runs {jobs[i].name!r} and {jobs[deps[i]].name!r} start "
                    "from each other; one of them must start from its random initialization"
                )
            seen.add(j)
    return deps


def _blocked(job: Job, source: Outcome) -> Outcome:
    """The outcome of a job whose ``train.init_from`` run did not complete."""
    return Outcome(
        job.name,
        "failed",
        message=f"train.init_from: run {source.name!r} did not complete ({source.status}), so "
        "this run cannot start from it",
        error="RuntimeError",
    )


class Executor(ABC):
    """Trains a list of jobs; see the module docstring."""

    name: str

    @abstractmethod
    def run(
        self, jobs: Sequence[Job], on_done: Callable[[Outcome], None] | None = None
    ) -> list[Outcome]:
        """Train ``jobs`` (skipping completed ones); one :class:`Outcome` per job, in order.
        ``on_done`` is called as each finishes (in completion order)."""


class LocalExecutor(Executor):
    """Every job in this process, one after another (``threads_per_run``: None leaves torch's
    thread count as it is)."""

    name = "local"

    def __init__(self, threads_per_run: int | None = None, progress: bool = True) -> None:
        self.threads = threads_per_run
        self.progress = progress

    def run(
        self, jobs: Sequence[Job], on_done: Callable[[Outcome], None] | None = None
    ) -> list[Outcome]:
        deps = init_dependencies(jobs)
        before = torch.get_num_threads()
        outcomes: dict[int, Outcome] = {}
        try:
            for i in _start_order(len(jobs), deps):
                job = jobs[i]
                if is_completed(job):
                    out = Outcome(job.name, "completed")
                elif i in deps and not outcomes[deps[i]].ok:
                    out = _blocked(job, outcomes[deps[i]])
                else:
                    out = train_job(
                        job.config.to_dict(),
                        str(job.run_dir),
                        job.name,
                        self.threads,
                        progress=self.progress,
                    )
                outcomes[i] = out
                if on_done is not None:
                    on_done(out)
        finally:
            torch.set_num_threads(before)
        return [outcomes[i] for i in range(len(jobs))]


def _start_order(count: int, deps: dict[int, int]) -> list[int]:
    """Job indices in list order, except that a job comes after the job it starts from."""
    order: list[int] = []
    placed: set[int] = set()

    def place(i: int) -> None:
        if i in placed:
            return
        if i in deps:
            place(deps[i])
        placed.add(i)
        order.append(i)

    for i in range(count):
        place(i)
    return order


class RayExecutor(Executor):
    """Each job as a Ray task; at most ``workers`` at a time (see the module docstring).

    ``cpus_per_run`` and ``gpus_per_run`` are the task's Ray resources (``gpus_per_run=None``:
    the cluster's GPUs shared evenly by the workers, capped at one per run; none without GPUs).
    ``retries``: how often a task whose worker process died is started again.
    """

    name = "ray"

    def __init__(
        self,
        workers: int = 2,
        *,
        address: str | None = None,
        cpus_per_run: float = 1.0,
        gpus_per_run: float | None = None,
        threads_per_run: int | None = None,
        retries: int = 3,
        imports: Sequence[str] = (),
    ) -> None:
        if workers < 1:
            raise ConfigError(f"workers: must be >= 1, got {workers}")
        if cpus_per_run <= 0:
            raise ConfigError(f"cpus-per-run: must be > 0, got {cpus_per_run}")
        if gpus_per_run is not None and gpus_per_run < 0:
            raise ConfigError(f"gpus-per-run: must be >= 0, got {gpus_per_run}")
        if retries < 0:
            raise ConfigError(f"retries: must be >= 0, got {retries}")
        self.ray = import_ray()
        self.workers = workers
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.cpus = cpus_per_run
        self.gpus = gpus_per_run
        self.threads = threads_per_run or max(1, int(cpus_per_run))
        self.retries = retries
        self.imports = tuple(str(Path(i).resolve()) if i.endswith(".py") else i for i in imports)

    def _connect(self) -> bool:
        """Start or join Ray unless already connected; True when this call connected."""
        ray = self.ray
        if ray.is_initialized():
            return False
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if self.address:
            kwargs["address"] = self.address
        else:  # an embedded instance with this machine's cores
            kwargs["num_cpus"] = max(os.cpu_count() or 1, int(self.workers * self.cpus))
        ray.init(**kwargs)
        return True

    def _gpus(self) -> float:
        if self.gpus is not None:
            return self.gpus
        total = float(self.ray.cluster_resources().get("GPU", 0.0))
        return min(1.0, total / self.workers) if total > 0 else 0.0

    def run(
        self, jobs: Sequence[Job], on_done: Callable[[Outcome], None] | None = None
    ) -> list[Outcome]:
        deps = init_dependencies(jobs)
        todo = []
        outcomes: dict[int, Outcome] = {}
        for i in _start_order(len(jobs), deps):
            job = jobs[i]
            if is_completed(job):
                outcomes[i] = Outcome(job.name, "completed")
            elif i in deps and deps[i] in outcomes and not outcomes[deps[i]].ok:
                outcomes[i] = _blocked(job, outcomes[deps[i]])
            else:
                todo.append(i)
                continue
            if on_done is not None:
                on_done(outcomes[i])
        if todo:
            connected = self._connect()
            try:
                self._run_remote(jobs, todo, deps, outcomes, on_done)
            finally:
                if connected:
                    self.ray.shutdown()
        return [outcomes[i] for i in range(len(jobs))]

    def _run_remote(
        self,
        jobs: Sequence[Job],
        todo: list[int],
        deps: dict[int, int],
        outcomes: dict[int, Outcome],
        on_done: Callable[[Outcome], None] | None,
    ) -> None:
        """Train the jobs ``todo`` (indices, in start order); a job waits until the job it
        starts from has its outcome, and fails without training when that one did not
        complete."""
        ray = self.ray
        task = ray.remote(_ray_train_job).options(
            num_cpus=self.cpus,
            num_gpus=self._gpus(),
            max_retries=self.retries,  # a dead worker: the retry resumes from the checkpoint
            retry_exceptions=False,  # a run's own failure is an Outcome, not retried
        )
        pending: dict[Any, int] = {}
        queue = list(todo)

        def settle(i: int, out: Outcome) -> None:
            outcomes[i] = out
            if on_done is not None:
                on_done(out)

        while queue or pending:
            blocked = True
            while blocked:  # a failed source blocks its whole chain of dependents
                blocked = False
                for i in list(queue):
                    if i in deps and deps[i] in outcomes and not outcomes[deps[i]].ok:
                        queue.remove(i)
                        settle(i, _blocked(jobs[i], outcomes[deps[i]]))
                        blocked = True
            ready = [i for i in queue if i not in deps or deps[i] in outcomes]
            while ready and len(pending) < self.workers:
                i = ready.pop(0)
                queue.remove(i)
                job = jobs[i]
                args = (job.config.to_dict(), str(job.run_dir.resolve()), job.name)
                pending[task.remote(*args, self.threads, self.imports)] = i
            if not pending:
                continue  # only jobs whose source just failed were left
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                i = pending.pop(ref)
                try:
                    out = Outcome(**ray.get(ref))
                except Exception as err:  # the worker died more often than retries allow
                    out = Outcome(
                        jobs[i].name, "failed", message=str(err)[:500], error=type(err).__name__
                    )
                settle(i, out)


def _ray_train_job(
    config: dict[str, Any], run_dir: str, name: str, threads: int, imports: Sequence[str]
) -> dict[str, Any]:
    return asdict(train_job(config, run_dir, name, threads, imports))


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "executor: 'ray' needs the ray package (pip install 'iclab[ray]'); or use --executor "
            "local"
        ) from None
    return ray


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def make_executor(
    name: str = "auto",
    *,
    workers: int = 1,
    address: str | None = None,
    cpus_per_run: float | None = None,
    gpus_per_run: float | None = None,
    threads_per_run: int | None = None,
    retries: int = 3,
    progress: bool = True,
    imports: Sequence[str] = (),
) -> Executor:
    """The executor ``name``: local | ray | auto (ray when it is installed and more than one
    worker or an address is asked for; local otherwise). ``cpus_per_run`` defaults to this
    machine's cores shared by the workers."""
    if name not in ("auto", *EXECUTORS):
        raise ConfigError(f"executor: expected one of auto, local, ray; got {name!r}")
    if workers < 1:
        raise ConfigError(f"workers: must be >= 1, got {workers}")
    if threads_per_run is not None and threads_per_run < 1:
        raise ConfigError(f"threads-per-run: must be >= 1, got {threads_per_run}")
    wants_ray = workers > 1 or bool(address or os.environ.get("RAY_ADDRESS"))
    if name == "auto":
        name = "ray" if wants_ray and ray_available() else "local"
    if name == "local":
        if workers > 1:
            raise ConfigError(
                f"workers: the local executor trains one run at a time (got {workers}); use "
                "--executor ray for parallel runs"
            )
        if address:
            raise ConfigError("address: only the ray executor joins a cluster")
        return LocalExecutor(threads_per_run, progress)
    cpus = cpus_per_run if cpus_per_run is not None else max(1, (os.cpu_count() or 1) // workers)
    return RayExecutor(
        workers,
        address=address,
        cpus_per_run=cpus,
        gpus_per_run=gpus_per_run,
        threads_per_run=threads_per_run,
        retries=retries,
        imports=imports,
    )
