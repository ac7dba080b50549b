#!/usr/bin/env bash
# Install iclab with its test extras (CPU torch pinned by constraints.txt), lint, run all tests.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet -c constraints.txt -e ".[test]"
python -m ruff check src tests benchmarks
python -m ruff format --check src tests benchmarks
python -m pytest -q "$@"
