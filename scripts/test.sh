#!/usr/bin/env bash
# Install iclab with its test extras (CPU torch pinned by constraints.txt), lint, build the
# documentation (strict: a broken link or reference fails), run all tests.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet -c constraints.txt -e ".[test]"
python -m ruff check src tests benchmarks examples
python -m ruff format --check src tests benchmarks examples
python -m mkdocs build --strict --quiet --site-dir "${TMPDIR:-/tmp}/iclab-site"
python -m pytest -q "$@"
