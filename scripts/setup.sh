#!/usr/bin/env bash
# Create or update .venv/ at the repository root with tideserve and everything it needs.
# Idempotent: a second run only checks. torch is installed first, pinned, so that nothing pulls
# a multi-GB CUDA build where a CPU build is wanted (set TORCH_SPEC to choose another build).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
torch_spec=${TORCH_SPEC:-torch==2.13.0}

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $($python --version)"
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "$torch_spec"
.venv/bin/python -m pip install --quiet -e ".[dev]"
echo "setup: .venv ready ($(.venv/bin/python -c 'import torch, grpc; print("torch", torch.__version__, "grpcio", grpc.__version__)'))"
