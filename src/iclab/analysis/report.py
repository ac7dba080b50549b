"""The reproduction report contract: ``report.md`` for people, ``report.json`` for machines.

``report.json`` is a list of rows ``{quantity, theory, trained_mean, trained_std, n_seeds,
verdict: pass|fail, note}``; every ``iclab reproduce NAME --out DIR`` writes one.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from iclab.analysis.metrics import mean_std
from iclab.training.checkpoint import atomic_write_json, atomic_write_text


@dataclass(frozen=True)
class ReportRow:
    quantity: str
    theory: float | None
    trained_mean: float
    trained_std: float
    n_seeds: int
    verdict: Literal["pass", "fail"]
    note: str = ""

    def as_json(self) -> dict:
        def clean(v: float | None) -> float | None:
            return None if v is None or not math.isfinite(v) else float(v)

        d = asdict(self)
        d.update(
            theory=clean(self.theory),
            trained_mean=clean(self.trained_mean),
            trained_std=clean(self.trained_std),
        )
        return d


def report_row(quantity: str, theory: float | None, values, ok: bool, note: str = "") -> ReportRow:
    """A row from per-seed ``values`` (mean ± sample std) and a pass/fail decision."""
    m, s = mean_std(values)
    return ReportRow(quantity, theory, m, s, len(values), "pass" if ok else "fail", note)


def _fmt(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:.4g}"


def write_report(
    out: Path, title: str, rows: list[ReportRow], sections: list[str] | None = None
) -> None:
    """Write ``report.md`` (table + free-form sections with figures) and ``report.json``."""
    lines = [
        f"# {title}",
        "",
        "| quantity | theory | trained (mean ± std) | seeds | verdict | note |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        trained = f"{_fmt(r.trained_mean)} ± {_fmt(r.trained_std)}"
        verdict = "**pass**" if r.verdict == "pass" else "**FAIL**"
        lines.append(
            f"| {r.quantity} | {_fmt(r.theory)} | {trained} | {r.n_seeds} | {verdict} | {r.note} |"
        )
    passed = sum(r.verdict == "pass" for r in rows)
    lines += ["", f"{passed}/{len(rows)} checks pass.", ""]
    for s in sections or []:
        lines += [s, ""]
    atomic_write_text(out / "report.md", "\n".join(lines))
    atomic_write_json(out / "report.json", [r.as_json() for r in rows])


def runs_table(runs_dir: Path, preamble: str = "") -> str:
    """A ``## Runs`` markdown section: steps, wall time and final per-seed test loss of each run
    folder under ``runs_dir`` (read from its ``run.json`` and ``metrics.jsonl``)."""
    lines = ["## Runs", ""]
    if preamble:
        lines += [preamble, ""]
    lines += ["| run | steps | wall (s) | final test loss per seed |", "|---|---|---|---|"]
    for run in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        info = json.loads((run / "run.json").read_text()) if (run / "run.json").exists() else {}
        text = (run / "metrics.jsonl").read_text() if (run / "metrics.jsonl").exists() else ""
        metrics = [json.loads(x) for x in text.splitlines() if x]
        last = metrics[-1] if metrics else {"step": 0, "test_loss": []}
        losses = ", ".join(f"{v:.3g}" for v in last["test_loss"])
        wall = info.get("wall_s", float("nan"))
        lines.append(f"| {run.name} | {last['step']} | {wall:.1f} | {losses} |")
    return "\n".join(lines)
