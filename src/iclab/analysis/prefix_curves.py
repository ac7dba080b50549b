"""Error against the number of in-context examples: one curve per method, with bootstrap bands.

A *prefix curve* is the squared error of a predictor at every position ``k = 0, …, N−1`` of
sequences of N points, where the prediction at ``k`` may use the ``k`` labelled points before it
(the convention of :mod:`iclab.algorithms.prefix_baselines` and of the interleaved transformer's
``predict_all``). :class:`PrefixCurves` holds, for each method, the per-prompt squared errors
(E, B, N) divided by a normaliser (the zero predictor's expected error, so 1 is "learned
nothing"), NaN where a method was not evaluated. Every method is scored on the same prompts, so
differences between methods are paired: :meth:`PrefixCurves.paired_gap` gives the mean gap over
a range of positions with its standard error over prompts and seeds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from iclab.analysis.figures import save_figure
from iclab.analysis.metrics import bootstrap_ci

__all__ = ["Gap", "PrefixCurves", "plot_prefix_curves"]


@dataclass(frozen=True)
class Gap:
    """Mean over prompts of ``a − b`` averaged over positions, per seed, and its standard error.

    ``per_seed`` (E,) are the seeds' means; ``se`` the standard error of their mean: the larger of
    the seed spread ``std/√E`` and the prompt noise (per-seed prompt SEs combined), as in
    :func:`iclab.analysis.report.standard_error`.
    """

    per_seed: list[float]
    prompt_se: list[float]
    se: float

    @property
    def mean(self) -> float:
        return float(np.mean(self.per_seed))


@dataclass
class PrefixCurves:
    """Normalised per-prompt squared errors of several methods on the same prompts.

    ``errors[name]`` is (E, B, N) float64 on the CPU: ``(ŷ_k − y_k)² / scale``, NaN at positions
    the method did not evaluate; ``scale`` is the normaliser (the zero predictor's error).
    """

    scale: float
    errors: dict[str, torch.Tensor] = field(default_factory=dict)

    def add(self, name: str, predictions: torch.Tensor, targets: torch.Tensor) -> None:
        """Record method ``name`` from its predictions and the targets, both (E, B, N)."""
        if predictions.shape != targets.shape:
            raise ValueError(
                f"predictions: expected shape {tuple(targets.shape)}, got {tuple(predictions.shape)}"
            )
        err = (predictions.detach().double().cpu() - targets.detach().double().cpu()).square()
        self.errors[name] = err / self.scale

    def positions(self, *names: str) -> list[int]:
        """The positions every method in ``names`` evaluated."""
        ok = None
        for n in names:
            done = ~torch.isnan(self.errors[n]).all(0).all(0)  # (N,)
            ok = done if ok is None else ok & done
        assert ok is not None
        return [int(i) for i in torch.nonzero(ok).flatten()]

    def prompts(self, *names: str) -> int:
        """How many leading prompts every method in ``names`` evaluated (the per-prompt learners
        see only the first few)."""
        count = None
        for n in names:
            err = self.errors[n][..., self.positions(n)]
            done = ~torch.isnan(err).any(-1).any(0)  # (B,)
            c = int(done.long().cumprod(0).sum())
            count = c if count is None else min(count, c)
        assert count is not None
        return count

    def mean(self, name: str) -> torch.Tensor:
        """Mean over seeds and evaluated prompts at each position, (N,) (NaN where not
        evaluated)."""
        return self.errors[name][:, : self.prompts(name)].mean((0, 1))

    def per_seed(self, name: str, positions: Sequence[int]) -> torch.Tensor:
        """Per-seed mean over the evaluated prompts and ``positions``, (E,)."""
        return self.errors[name][:, : self.prompts(name), list(positions)].mean((-1, -2))

    def paired_gap(self, a: str, b: str, positions: Sequence[int]) -> Gap:
        """``errors[a] − errors[b]`` averaged over ``positions`` per prompt, then over the
        prompts both methods evaluated."""
        pos = list(positions)
        if not pos:
            raise ValueError("positions: need at least one position")
        B = self.prompts(a, b)
        diff = (self.errors[a][:, :B, pos] - self.errors[b][:, :B, pos]).mean(-1)  # (E, B)
        E = diff.shape[0]
        per_seed = diff.mean(-1)
        prompt_se = diff.std(-1, unbiased=True) / math.sqrt(B) if B > 1 else torch.zeros(E)
        spread = float(per_seed.std(unbiased=True)) / math.sqrt(E) if E > 1 else 0.0
        noise = math.sqrt(float(prompt_se.square().mean()) / E)
        return Gap(per_seed.tolist(), prompt_se.tolist(), max(spread, noise))

    def band(
        self, name: str, resamples: int = 1000, seed: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean and percentile-bootstrap 95% band at each evaluated position over the evaluated
        prompts pooled over seeds (with ``seed`` fixed, methods evaluated on the same prompts get
        the same resamples: paired bands). Positions not evaluated are NaN."""
        pos = self.positions(name)
        err = self.errors[name][:, : self.prompts(name), pos]
        mean = torch.full((self.errors[name].shape[-1],), float("nan"), dtype=torch.float64)
        lo, hi = mean.clone(), mean.clone()
        if pos:
            m, low, high = bootstrap_ci(err.reshape(-1, len(pos)).T, resamples=resamples, seed=seed)
            mean[pos], lo[pos], hi[pos] = m, low, high
        return mean, lo, hi


def plot_prefix_curves(
    panels: Mapping[str, PrefixCurves],
    path: Path,
    *,
    resamples: int = 1000,
    marks: Mapping[str, float] | None = None,
    ylabel: str = "squared error / zero predictor's",
) -> Path:
    """One panel per entry of ``panels``: each method's mean error vs the number of in-context
    examples with its bootstrap band; ``marks`` draws a dotted vertical line per panel (e.g. at
    k = d)."""
    cols = min(len(panels), 3)
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False)
    for ax, (title, curves) in zip(axes.flat, panels.items(), strict=False):
        for i, name in enumerate(curves.errors):
            mean, lo, hi = (t.numpy() for t in curves.band(name, resamples=resamples))
            k = np.arange(len(mean))
            ok = ~np.isnan(mean)
            style = "-" if ok.sum() == len(mean) else "o-"
            ax.plot(k[ok], mean[ok], style, color=f"C{i}", label=name, ms=3)
            ax.fill_between(k[ok], lo[ok], hi[ok], color=f"C{i}", alpha=0.2)
        if marks and title in marks:
            ax.axvline(marks[title], color="gray", ls=":", lw=1)
        ax.axhline(1.0, color="black", lw=0.6, alpha=0.5)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("in-context examples k")
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_ylim(bottom=0.0, top=max(1.5, 0.0))
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    return save_figure(fig, path)
