"""The reproduction report contract (v2): ``report.md`` for people, ``report.json`` for machines.

A report is a list of rows, one per quantity the paper makes a statement about::

    quantity · theory · paper · trained_mean · trained_std · n_seeds · threshold · verdict · note

- ``theory``: iclab's closed-form (or Monte Carlo) value the trained number is held against;
- ``paper``: the paper's own number, or its claim in words (None when it states neither);
- ``threshold``: the test, spelled out with its numbers, e.g. ``|mean − θ| ≤ 3·SE + 5%·θ = …``;
- ``verdict``:

  * ``pass`` — the claim was reproduced within the stated threshold;
  * ``fail`` — not reproduced: a defect or an unconverged budget (never acceptable in a shipped
    budget);
  * ``refuted`` — the claim was tested properly and does not hold; the note gives the evidence
    (the caller passes ``evidence`` only when that evidence was itself established);
  * ``check`` — an internal identity (e.g. a model equals its recursion to 1e-15): not counted
    as a reproduction. A broken identity is a ``fail``.

Thresholds have a basis: a trained number is compared with its target within ``k`` standard
errors of the mean (measured over seeds and, where given, test prompts) plus a stated
optimization tolerance (:class:`Tolerance`). ``report.json`` is ``{"contract": 2, "title",
"budget", "wall_s", "git_commit", "date", "versions", "seeds", "extra", "summary", "rows": [...]}``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from iclab.analysis.metrics import mean_std
from iclab.atomic_io import atomic_write_json, atomic_write_text

Verdict = Literal["pass", "fail", "refuted", "check"]
VERDICTS: tuple[Verdict, ...] = ("pass", "fail", "refuted", "check")
Relation = Literal["≈", "≤", "≥"]
CONTRACT_VERSION = 2


@dataclass(frozen=True)
class ReportRow:
    quantity: str
    theory: float | None
    paper: float | str | None
    trained_mean: float | None
    trained_std: float | None
    n_seeds: int
    threshold: str
    verdict: Verdict
    note: str = ""

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict: expected one of {VERDICTS}, got {self.verdict!r}")

    @property
    def is_claim(self) -> bool:
        """A reproduction row (pass / fail / refuted), as opposed to an internal ``check``."""
        return self.verdict != "check"

    def as_json(self) -> dict[str, Any]:
        def clean(v: Any) -> Any:
            if isinstance(v, float) and not math.isfinite(v):
                return None
            return v

        return {k: clean(v) for k, v in asdict(self).items()}


def standard_error(values: Sequence[float], prompt_se: Sequence[float] | None = None) -> float:
    """Standard error of the mean over seeds of per-seed ``values``.

    With one seed, or when the per-seed values carry their own test-prompt standard errors
    ``prompt_se``, the larger of the two estimates is used: the seed-to-seed spread
    ``std/√E`` and the test-prompt noise ``√(mean(se_i²)/E)`` (three seeds estimate a spread
    poorly; the prompt noise is a floor any seed count must respect).
    """
    t = torch.as_tensor(list(values), dtype=torch.float64)
    e = t.numel()
    spread = mean_std(t)[1] / math.sqrt(e) if e > 1 else 0.0
    noise = 0.0
    if prompt_se is not None:
        s = torch.as_tensor(list(prompt_se), dtype=torch.float64)
        noise = math.sqrt(float(s.pow(2).mean()) / e)
    return max(spread, noise)


@dataclass(frozen=True)
class Tolerance:
    """A comparison tolerance: ``k`` standard errors plus an optimization tolerance, stated as a
    fraction ``rel`` of the target plus an absolute ``abs``."""

    k: float = 3.0
    rel: float = 0.0
    abs: float = 0.0

    def value(self, se: float, target: float) -> float:
        return self.k * se + self.rel * abs(target) + self.abs

    def describe(self, se: float, target: float) -> str:
        parts = [f"{self.k:g}·SE({se:.2g})"]
        if self.rel:
            parts.append(f"{self.rel:.3g}·|target|")
        if self.abs:
            parts.append(f"{self.abs:.2g}")
        return " + ".join(parts) + f" = {self.value(se, target):.3g}"


def _fmt(v: float | None) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return f"{v:.4g}"


def compare(
    quantity: str,
    values: Sequence[float],
    target: float,
    relation: Relation,
    tolerance: Tolerance,
    *,
    se: float | None = None,
    prompt_se: Sequence[float] | None = None,
    theory: float | None = None,
    paper: float | str | None = None,
    note: str = "",
    evidence: str | None = None,
    max_tolerance: float | None = None,
) -> ReportRow:
    """A claim row: the mean over seeds of ``values`` against ``target``.

    ``relation`` is the claim: ``≈`` (|mean − target| ≤ tol), ``≤`` (mean ≤ target + tol) or
    ``≥`` (mean ≥ target − tol), with ``tol = tolerance.value(se, target)`` and ``se`` the
    standard error (measured by :func:`standard_error` from the per-seed spread and
    ``prompt_se`` when not given). ``theory`` defaults to ``target``. When the claim fails and
    ``evidence`` is given (the caller established that the test itself was sound, e.g. the run
    converged), the verdict is ``refuted`` with the evidence in the note; otherwise ``fail``.

    A test must have power: when the tolerance exceeds ``max_tolerance`` (default ``|target|``
    for a non-zero target — a tolerance that wide cannot tell the target from 0 or from twice
    it), the row cannot pass: it fails as inconclusive (the seeds disagree too much, e.g. one
    diverged). A mean outside even that wide tolerance violates the claim under the most lenient
    reading, so ``evidence`` may still make it ``refuted``.
    """
    vals = [float(v) for v in values]
    mean, std = mean_std(vals)
    if se is None:
        se = standard_error(vals, prompt_se)
    tol = tolerance.value(se, target)
    if max_tolerance is None:
        max_tolerance = abs(target) if target != 0 else math.inf
    powerless = not tol <= max_tolerance
    if relation == "≈":
        within = abs(mean - target) <= tol
    elif relation == "≤":
        within = mean <= target + tol
    elif relation == "≥":
        within = mean >= target - tol
    else:
        raise ValueError(f"relation: expected one of ≈, ≤, ≥, got {relation!r}")
    ok = math.isfinite(mean) and within and not powerless
    lhs = "|mean − target|" if relation == "≈" else "mean"
    rhs = {"≈": "", "≤": f"{target:.4g} + ", "≥": f"{target:.4g} − "}[relation]
    op = "≥" if relation == "≥" else "≤"
    threshold = f"{lhs} {op} {rhs}{tolerance.describe(se, target)}"
    if relation != "≈":  # the describe() total is the tolerance; spell out the bound itself
        threshold += f", i.e. mean {op} {target + tol if relation == '≤' else target - tol:.4g}"
    if powerless and within:
        threshold += f" (inconclusive: exceeds {max_tolerance:.3g})"
        note = f"{note} Inconclusive: the tolerance exceeds {max_tolerance:.3g}.".strip()
        evidence = None
    elif powerless:  # the claim fails even the too-wide tolerance: a refutation may stand
        threshold += f" (tolerance exceeds {max_tolerance:.3g}; the mean is outside even that)"
    verdict: Verdict = "pass" if ok else ("refuted" if evidence else "fail")
    if verdict == "refuted":
        note = f"{note} Refuted: {evidence}".strip()
    return ReportRow(
        quantity,
        target if theory is None else theory,
        paper,
        mean,
        std,
        len(vals),
        threshold,
        verdict,
        note,
    )


def claim(
    quantity: str,
    values: Sequence[float],
    ok: bool,
    threshold: str,
    *,
    theory: float | None = None,
    paper: float | str | None = None,
    note: str = "",
    evidence: str | None = None,
) -> ReportRow:
    """A claim row decided by the caller (``ok``), for tests that are not a mean-vs-target
    comparison (a sign test, a trend fitted with its uncertainty, a ranking); ``threshold``
    must state the test and its numbers."""
    vals = [float(v) for v in values]
    mean, std = mean_std(vals) if vals else (float("nan"), float("nan"))
    verdict: Verdict = "pass" if ok else ("refuted" if evidence else "fail")
    if verdict == "refuted":
        note = f"{note} Refuted: {evidence}".strip()
    return ReportRow(quantity, theory, paper, mean, std, len(vals), threshold, verdict, note)


def check(
    quantity: str,
    error: float | Sequence[float],
    bound: float,
    *,
    theory: float | None = 0.0,
    note: str = "",
) -> ReportRow:
    """An internal identity: the largest ``error`` must be ≤ ``bound`` (verdict ``check``;
    ``fail`` if the identity is broken)."""
    errs = [float(error)] if isinstance(error, (int, float)) else [float(e) for e in error]
    worst = max(errs) if errs else float("nan")
    ok = math.isfinite(worst) and worst <= bound
    mean, std = mean_std(errs)
    return ReportRow(
        quantity,
        theory,
        None,
        mean,
        std,
        len(errs),
        f"max ≤ {bound:.2g} (identity)",
        "check" if ok else "fail",
        note,
    )


def summary(rows: Sequence[ReportRow]) -> dict[str, int]:
    return {v: sum(r.verdict == v for r in rows) for v in VERDICTS}


@dataclass
class ReportMeta:
    """What produced a report: budget, wall time, commit, versions, seeds; ``date`` is when the
    run started (UTC, ISO 8601)."""

    budget: str
    wall_s: float
    git_commit: str | None
    versions: dict[str, str]
    seeds: list[int]
    extra: dict[str, Any] = field(default_factory=dict)
    date: str | None = None


def _md_cell(v: Any) -> str:
    if isinstance(v, float) or v is None:
        return _fmt(v)
    return str(v).replace("|", "\\|")


def write_report(
    out: Path,
    title: str,
    rows: list[ReportRow],
    sections: list[str] | None = None,
    meta: ReportMeta | None = None,
) -> None:
    """Write ``report.md`` (table, one summary line per verdict, sections with figures) and
    ``report.json`` (the same rows plus ``meta``)."""
    counts = summary(rows)
    lines = [f"# {title}", ""]
    if meta is not None:
        walls = f"wall {meta.wall_s:.0f} s"
        if "train_wall_s" in meta.extra:
            walls = (
                f"training {float(meta.extra['train_wall_s']):.0f} s (the runs' own time, summed) "
                f"· this call {meta.wall_s:.0f} s"
            )
            if "runs_trained_now" in meta.extra:
                walls += (
                    f" ({meta.extra['runs_trained_now']} of {meta.extra.get('runs')} runs trained)"
                )
        lines += [
            f"Budget **{meta.budget}** · {walls} · commit "
            f"`{meta.git_commit or 'unknown'}` · started {meta.date or 'unknown'} · "
            f"seeds {meta.seeds} · " + ", ".join(f"{k} {v}" for k, v in meta.versions.items()),
            "",
        ]
    claims = counts["pass"] + counts["fail"] + counts["refuted"]
    lines += [
        f"- **pass**: {counts['pass']} of {claims} claim rows reproduced within their threshold",
        f"- **refuted**: {counts['refuted']} claim rows tested and found not to hold (evidence "
        "in the note)",
        f"- **fail**: {counts['fail']} claim rows not reproduced (a defect or an unconverged "
        "budget)",
        f"- **check**: {counts['check']} internal identities hold",
        "",
        "| quantity | theory | paper | trained (mean ± std) | seeds | threshold | verdict | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        trained = f"{_fmt(r.trained_mean)} ± {_fmt(r.trained_std)}"
        verdict = "**FAIL**" if r.verdict == "fail" else f"**{r.verdict}**"
        lines.append(
            f"| {_md_cell(r.quantity)} | {_fmt(r.theory)} | {_md_cell(r.paper)} | {trained} | "
            f"{r.n_seeds} | {_md_cell(r.threshold)} | {verdict} | {_md_cell(r.note)} |"
        )
    lines.append("")
    for s in sections or []:
        lines += [s, ""]
    atomic_write_text(out / "report.md", "\n".join(lines))
    doc: dict[str, Any] = {"contract": CONTRACT_VERSION, "title": title}
    if meta is not None:
        doc.update(asdict(meta))
    doc["summary"] = counts
    doc["rows"] = [r.as_json() for r in rows]
    atomic_write_json(out / "report.json", doc)


def read_report(path: str | Path) -> list[ReportRow]:
    """The rows of a ``report.json`` (contract v2)."""
    doc = json.loads(Path(path).read_text())
    return [ReportRow(**row) for row in doc["rows"]]


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
