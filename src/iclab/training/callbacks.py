"""Trainer callbacks: what a run reports while it trains, kept out of the training loop.

The trainer calls, in order: ``on_start(run)`` once, ``on_step(step)`` after every optimizer or
polishing step, ``on_evaluation(record)`` with every metrics record, and ``close()`` when training
ends for any reason (completed, diverged, interrupted). ``run`` is a :class:`RunInfo`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RunInfo:
    name: str
    total_steps: int
    start_step: int
    run_dir: Path | None


class Callback:
    """Base class: every hook does nothing."""

    def on_start(self, run: RunInfo) -> None:
        pass

    def on_step(self, step: int) -> None:
        pass

    def on_evaluation(self, record: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class ProgressBar(Callback):
    """A tqdm bar over all steps, with the latest mean test loss."""

    def __init__(self) -> None:
        self.bar: Any = None

    def on_start(self, run: RunInfo) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=run.total_steps, initial=run.start_step, desc=run.name, dynamic_ncols=True
        )

    def on_step(self, step: int) -> None:
        self.bar.update(1)

    def on_evaluation(self, record: dict[str, Any]) -> None:
        test = record["test_loss"]
        self.bar.set_postfix(test=f"{sum(test) / len(test):.3g}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class TensorBoardLogger(Callback):
    """Mean train and test loss as TensorBoard scalars under ``RUN_DIR/tensorboard``."""

    def __init__(self) -> None:
        from torch.utils.tensorboard import SummaryWriter  # ImportError without tensorboard

        self._writer_class = SummaryWriter
        self.writer: Any = None

    def on_start(self, run: RunInfo) -> None:
        assert run.run_dir is not None, "TensorBoardLogger needs a run folder"
        self.writer = self._writer_class(str(run.run_dir / "tensorboard"))

    def on_evaluation(self, record: dict[str, Any]) -> None:
        for key, name in (("test_loss", "loss/test_mean"), ("train_loss", "loss/train_mean")):
            values = record.get(key) or []
            if values:
                self.writer.add_scalar(name, sum(values) / len(values), record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class StepFunction(Callback):
    """Calls ``fn(step)`` after every step (e.g. to stop a run from a test)."""

    def __init__(self, fn: Callable[[int], None]) -> None:
        self.fn = fn

    def on_step(self, step: int) -> None:
        self.fn(step)
