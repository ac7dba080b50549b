"""The reproduction report contract: ``report.md`` for people, ``report.json`` for machines.

``report.json`` is a list of rows ``{quantity, theory, trained_mean, trained_std, n_seeds,
verdict: pass|fail, note}``; every ``iclab reproduce NAME --out DIR`` writes one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

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
