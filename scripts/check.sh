#!/usr/bin/env bash
# Every check CI runs, in order: lint, then the test suite (offline: tests build tiny models on the fly).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
"$PY" -m ruff check .
HF_HUB_OFFLINE=1 "$PY" -m pytest -q "$@"
