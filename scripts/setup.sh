#!/usr/bin/env bash
# Set up dece-trainer for development on a fresh machine: torch first (a CPU build where there is no GPU,
# so pip does not pull gigabytes of CUDA packages), then the package with its test and docs extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"

if "$PY" -c "import torch" 2>/dev/null; then
    echo "setup: keeping installed torch $("$PY" -c 'import torch; print(torch.__version__)')"
elif command -v nvidia-smi >/dev/null 2>&1; then
    "$PY" -m pip install "torch==${TORCH_VERSION}"
else
    # No GPU: a CPU build. A local wheel (pip's find-links) where the machine has one, else PyTorch's CPU index.
    if "$PY" -m pip install --no-index --no-deps "torch==${TORCH_VERSION}"; then
        "$PY" -m pip install "torch==${TORCH_VERSION}"  # its dependencies, from the package index
    else
        "$PY" -m pip install "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu \
            --extra-index-url https://pypi.org/simple
    fi
fi
"$PY" -m pip install -e ".[dev,docs]"
