#!/usr/bin/env bash
# Every check CI runs, in order: lint, the docs build, then the test suite (offline: tests build tiny models on the fly).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
"$PY" -m ruff check .
NO_MKDOCS_2_WARNING=1 "$PY" -m mkdocs build --strict --site-dir site  # the docs site (site/ is ignored)
HF_HUB_OFFLINE=1 "$PY" -m pytest -q "$@"
