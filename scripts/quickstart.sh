#!/usr/bin/env bash
# Install iclab (CPU torch pinned by constraints.txt) and run the quick Ahn et al. reproduction:
# figures and a report (report.md, report.json) in runs/ahn2023-quick (about 10 min on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet -c constraints.txt -e .
iclab reproduce ahn2023 --quick --out "${1:-runs/ahn2023-quick}"
