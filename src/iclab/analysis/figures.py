"""Matplotlib figures (Agg backend, files only)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.ticker import MaxNLocator


def save_figure(fig: plt.Figure, path: Path) -> Path:
    """Save atomically (temp file + rename) and close the figure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    fig.savefig(tmp, dpi=130, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def log_band(mean: np.ndarray, std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mean ± std band for a log axis: ``(m/k, m·k)`` with ``k = 1 + std/m``, the upper edge
    ``m + std`` mirrored in log space (``m − std`` may be ≤ 0, which a log axis cannot show: a
    clipped floor would draw a heavy-tailed seed spread as decades of range it does not have)."""
    k = 1.0 + np.divide(std, mean, out=np.zeros_like(std), where=mean > 0)
    return mean / k, mean * k


def loss_curves(
    runs: Mapping[str, Sequence[Mapping]],
    path: Path,
    *,
    theory: Mapping[str, float] | None = None,
    title: str = "test loss",
) -> Path:
    """Mean ± std (over seeds) of the test loss vs step for each run, log scale, theory lines."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (label, metrics) in enumerate(runs.items()):
        steps = np.array([m["step"] for m in metrics])
        loss = np.array([m["test_loss"] for m in metrics])  # (T, E)
        mean, std = loss.mean(1), loss.std(1, ddof=1) if loss.shape[1] > 1 else np.zeros(len(loss))
        color = f"C{i}"
        ax.plot(steps, mean, color=color, label=f"{label} (mean of {loss.shape[1]})")
        ax.fill_between(steps, *log_band(mean, std), color=color, alpha=0.2)
    for j, (label, value) in enumerate((theory or {}).items()):
        ax.axhline(value, color=f"C{j + len(runs)}", ls="--", lw=1, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("test loss  E[(ŷ − y)²]")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def matrix_heatmaps(
    matrices: Sequence[torch.Tensor], titles: Sequence[str], path: Path, *, suptitle: str = ""
) -> Path:
    """One heat-map per matrix, shared symmetric color scale per matrix."""
    k = len(matrices)
    fig, axes = plt.subplots(1, k, figsize=(2.6 * k, 2.6), squeeze=False)
    for ax, m, t in zip(axes[0], matrices, titles):
        a = m.detach().cpu().double().numpy()
        v = max(abs(a).max(), 1e-12)
        im = ax.imshow(a, cmap="RdBu_r", vmin=-v, vmax=v)
        ax.set_title(t, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return save_figure(fig, path)


def loss_versus(
    x: Sequence[float],
    series: Mapping[str, tuple[Sequence[float], Sequence[float] | None]],
    path: Path,
    *,
    xlabel: str,
    title: str,
    logy: bool = True,
) -> Path:
    """Loss vs a swept quantity; each series is (mean, std or None)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (label, (mean, std)) in enumerate(series.items()):
        m = np.asarray(mean, dtype=float)
        ax.plot(x, m, marker="o", color=f"C{i}", label=label)
        if std is not None:
            s = np.asarray(std, dtype=float)
            lo, hi = log_band(m, s) if logy else (m - s, m + s)
            ax.fill_between(x, lo, hi, color=f"C{i}", alpha=0.2)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test loss")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def loss_grid(
    x: Sequence[float],
    panels: Sequence[Sequence[Mapping]],
    path: Path,
    *,
    xlabel: str,
    suptitle: str = "",
    logy: bool = True,
    ylabel: str = "test loss",
) -> Path:
    """A grid of :func:`loss_versus`-style panels sharing x.

    ``panels[i][j]`` is a mapping with ``title``, ``series`` ({label: (mean, std or None)}) and
    optionally ``lines`` ({label: value}, dashed horizontal lines such as a Bayes floor).
    Colors follow the label, so the same series has the same color in every panel.
    """
    rows, cols = len(panels), max(len(r) for r in panels)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.9 * rows), squeeze=False)
    colors: dict[str, str] = {}

    def color(label: str) -> str:
        return colors.setdefault(label, f"C{len(colors) % 10}")

    for i, row in enumerate(panels):
        for j in range(cols):
            ax = axes[i][j]
            if j >= len(row):
                ax.axis("off")
                continue
            panel = row[j]
            for label, (mean, std) in panel["series"].items():
                m = np.asarray(mean, dtype=float)
                ax.plot(x, m, marker="o", ms=3, color=color(label), label=label)
                if std is not None:
                    s = np.asarray(std, dtype=float)
                    lo, hi = log_band(m, s) if logy else (m - s, m + s)
                    ax.fill_between(x, lo, hi, color=color(label), alpha=0.2)
            for label, value in panel.get("lines", {}).items():
                ax.axhline(value, color=color(label), ls="--", lw=1, label=label)
            if logy:
                ax.set_yscale("log")
            ax.set_title(panel["title"], fontsize=9)
            ax.set_xticks(list(x))
            if i == rows - 1:
                ax.set_xlabel(xlabel)
            if j == 0:
                ax.set_ylabel(ylabel)
            ax.legend(fontsize=6)
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)


def sweep_panels(
    rows: Sequence[Mapping[str, Any]], keys: Sequence[str], path: Path, *, title: str = ""
) -> Path:
    """Final test loss (mean ± std over seeds) against each swept key, one panel per key; runs
    that agree on the other keys are joined by a line (labelled by those keys' values)."""
    done = [r for r in rows if r.get("test_loss_mean") is not None]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.8), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        values = list(dict.fromkeys(str(r[key]) for r in rows))  # grid order
        numeric = all(_is_number(r[key]) for r in rows)
        groups: dict[str, list[Mapping[str, Any]]] = {}
        for r in done:
            label = ", ".join(f"{k}={r[k]}" for k in keys if k != key) or "loss"
            groups.setdefault(label, []).append(r)
        for i, (label, members) in enumerate(groups.items()):
            members = sorted(members, key=lambda r: values.index(str(r[key])))
            x = [float(r[key]) if numeric else values.index(str(r[key])) for r in members]
            y = np.array([float(r["test_loss_mean"]) for r in members])
            e = np.array([float(r["test_loss_std"] or 0.0) for r in members])
            ax.errorbar(
                x, y, yerr=e, marker="o", capsize=3, color=f"C{i % 10}",
                label=label if i < 10 else None,
            )  # fmt: skip
        if not numeric:
            ax.set_xticks(range(len(values)), values, rotation=30, fontsize=8)
        elif all(isinstance(r[key], int) for r in rows):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if done and min(float(r["test_loss_mean"]) for r in done) > 0:
            ax.set_yscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel("final test loss (mean ± std over seeds)")
        if len(groups) > 1:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
