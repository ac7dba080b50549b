"""Publish reproduction outputs under docs/results/<paper>/ and index them.

    python scripts/publish_results.py OUT/ahn2023 [OUT/cheng2024 ...] [--dest docs/results]

Copies each report folder's report.md, report.json and figures (re-encoded as small PNGs, at most
900 px wide) into DEST/<paper>/ (paper = the folder's name) and rewrites DEST/README.md: one line
per published report with its budget, commit, date, wall time and verdict counts.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
from pathlib import Path

from PIL import Image

MAX_WIDTH = 900


def _small_png(src: Path, dst: Path) -> None:
    with Image.open(src) as im:
        if im.width > MAX_WIDTH:
            im = im.resize((MAX_WIDTH, round(im.height * MAX_WIDTH / im.width)), Image.LANCZOS)
        im.convert("RGB").quantize(colors=128).save(dst, optimize=True)


def publish(report_dir: Path, dest: Path) -> dict:
    doc = json.loads((report_dir / "report.json").read_text())
    target = dest / report_dir.name
    if target.exists():
        shutil.rmtree(target)
    (target / "figures").mkdir(parents=True)
    shutil.copy2(report_dir / "report.md", target / "report.md")
    shutil.copy2(report_dir / "report.json", target / "report.json")
    for png in sorted((report_dir / "figures").glob("*.png")):
        _small_png(png, target / "figures" / png.name)
    return {"paper": report_dir.name, "date": _date(doc, report_dir), **doc}


def _date(doc: dict, folder: Path) -> str:
    """When the report's run started (``date`` in report.json; older reports: the file's time)."""
    if doc.get("date"):
        return str(doc["date"])[:10]
    stamp = dt.datetime.fromtimestamp((folder / "report.json").stat().st_mtime, dt.UTC)
    return stamp.strftime("%Y-%m-%d")


def write_index(dest: Path) -> None:
    lines = [
        "# Published reproductions",
        "",
        "Each folder holds a report written by `iclab reproduce PAPER` (report.md, report.json,",
        "figures), with the budget, commit and wall time it was produced with.",
        "",
        "`training (s)` is the runs' own training time summed; `report (s)` the wall time of the",
        "`iclab reproduce` call that wrote the report (analysis only when the runs had finished",
        "before it: `runs trained` 0).",
        "",
        "| paper | budget | commit | date | training (s) | report (s) | runs trained | pass | "
        "refuted | check | fail |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for folder in sorted(p for p in dest.iterdir() if (p / "report.json").exists()):
        doc = json.loads((folder / "report.json").read_text())
        s, extra = doc.get("summary", {}), doc.get("extra", {})
        lines.append(
            f"| [{folder.name}]({folder.name}/report.md) | {doc.get('budget')} | "
            f"`{doc.get('git_commit')}` | {_date(doc, folder)} | {extra.get('train_wall_s')} | "
            f"{doc.get('wall_s')} | {extra.get('runs_trained_now', '?')} of {extra.get('runs')} | "
            f"{s.get('pass', 0)} | {s.get('refuted', 0)} | {s.get('check', 0)} | {s.get('fail', 0)} |"
        )
    (dest / "README.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("reports", nargs="+", type=Path, help="report folders (OUT/<paper>)")
    ap.add_argument("--dest", type=Path, default=Path("docs/results"))
    args = ap.parse_args()
    args.dest.mkdir(parents=True, exist_ok=True)
    for r in args.reports:
        info = publish(r, args.dest)
        print(f"published {info['paper']} ({info.get('budget')}) to {args.dest / r.name}")
    write_index(args.dest)


if __name__ == "__main__":
    main()
