#!/usr/bin/env bash
# Create or update .venv/ at the repository root with tideserve, every extra and the dev tools.
# Idempotent: when .venv was set up from this very pyproject.toml, torch spec, Python and script
# (a hash of them kept in .venv/.setup-stamp), a second run installs nothing and only checks that
# the environment imports. torch is installed first, pinned, so that nothing pulls a multi-GB
# CUDA build where a CPU build is wanted (set TORCH_SPEC to choose another build).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
torch_spec=${TORCH_SPEC:-torch==2.13.0}
stamp=.venv/.setup-stamp

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $($python --version)"
    "$python" -m venv .venv
fi
wanted=$({ .venv/bin/python --version; echo "$torch_spec"; cat pyproject.toml scripts/setup.sh; } \
    | .venv/bin/python -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')
# Versions from the installed metadata: importing torch alone takes seconds.
report='import tideserve; from importlib.metadata import version as v; print("torch", v("torch"), "grpcio", v("grpcio"))'

if [ "$(cat "$stamp" 2>/dev/null)" = "$wanted" ] && versions=$(.venv/bin/python -c "$report" 2>/dev/null); then
    echo "setup: .venv is current ($versions)"
    exit 0
fi
rm -f "$stamp"
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "$torch_spec"
# Every role's extra: a developer runs and tests all of them.
.venv/bin/python -m pip install --quiet -e ".[worker,scaler,kubernetes,learning,report,dev]"
echo "$wanted" > "$stamp"
echo "setup: .venv ready ($(.venv/bin/python -c "$report"))"
