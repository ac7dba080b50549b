#!/usr/bin/env bash
# Install iclab (CPU torch pinned by constraints.txt) and run the quick reproductions of every
# paper iclab implements: figures and a report (report.md, report.json) per paper in
# OUT/<paper> (OUT defaults to runs/quick). Each quick budget fits in 10 min on 2 cores
# (measured 2026-12-01 at 5e7fc83 from a fresh clone, nothing else running: ahn2023 405 s,
# cheng2024 204 s, ding2025 569 s, zheng2024 121 s, garg2022 415 s).
# Exits non-zero when any report has a `fail` row (after running every paper).
#   bash scripts/quickstart.sh [OUT] [PAPER ...]     e.g. bash scripts/quickstart.sh runs/q cheng2024
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet -c constraints.txt -e .
out="${1:-runs/quick}"
shift || true
papers=("$@")
if [ ${#papers[@]} -eq 0 ]; then
  papers=(ahn2023 cheng2024 ding2025 zheng2024 garg2022)
fi
status=0
for paper in "${papers[@]}"; do
  iclab reproduce "$paper" --quick --out "$out/$paper" || status=1
done
exit "$status"
