#!/usr/bin/env bash
# The main job: set up .venv, then run the whole suite locally on the default model with a demo
# load. Extra arguments go to `tideserve up` (e.g. --exit-after-demo, --demo-stream).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/tideserve up --demo "$@"
