#!/usr/bin/env bash
# The test command (CI runs exactly this through .ci/run): set up .venv, check generated code and
# lint, prepare the real external parts the tests drive (a Docker engine with the tideserve images,
# Triton's perf_analyzer), then run every test. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
.venv/bin/python scripts/gen_protos.py --check
# The performance pages' figure tables are rendered from docs/performance/results/*.json.
.venv/bin/python -m bench.docs --check
.venv/bin/ruff check .
# The layers and the absence of import cycles ([tool.importlinter] in pyproject.toml).
.venv/bin/lint-imports --no-logo

# Docker: install and start an engine and build the images offline (see scripts/docker_offline.sh).
# Only where no engine can be had at all do the Docker tests skip, saying why.
if [ "${TIDESERVE_SKIP_DOCKER:-0}" != 1 ]; then
    scripts/docker_offline.sh || echo "test: no Docker engine could be prepared; Docker tests will skip"
fi
# Triton's perf_analyzer, as a real client of the batcher.
bench/setup.sh --perf-analyzer-only
# A real Prometheus server scrapes the local stack in tests/integration/test_prometheus.py.
if ! command -v prometheus >/dev/null; then
    apt-get install -y prometheus >/dev/null \
        || { apt-get update >/dev/null && apt-get install -y prometheus >/dev/null; } \
        || echo "test: could not install prometheus; its integration test will skip"
fi

exec .venv/bin/python -m pytest tests "$@"
