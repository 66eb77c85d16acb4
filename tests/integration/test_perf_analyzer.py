"""Triton's perf_analyzer completes a short measurement against tideserve's batcher without errors.

Why: issue 3 promises drop-in compatibility with Triton's own benchmark client; perf_analyzer
exits early on any gap (ServerMetadata, ModelMetadata, ModelConfig, statistics, response
decoding), so one short run exercises the whole client-facing contract the benchmark relies on.

For now the batcher is found through ``TIDESERVE_BATCHER`` (host:port, e.g. 127.0.0.1:8001) and the
test is skipped when it is unset; it will move to the suite's cluster fixture. The model is
``TIDESERVE_BENCH_MODEL`` (default ``mlp``, batch-1 FP32 [256] input). perf_analyzer comes from
``bench/setup.sh``; the test is skipped when that has not run.
"""

from __future__ import annotations

import os

import pytest

from bench import perf

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def batcher_address() -> str:
    """Address of a running batcher; skip when none is given or perf_analyzer is absent."""
    address = os.environ.get("TIDESERVE_BATCHER")
    if not address:
        pytest.skip("TIDESERVE_BATCHER not set (host:port of a running tideserve batcher)")
    if not perf.PERF_ANALYZER.exists():
        pytest.skip("perf_analyzer not installed: run bench/setup.sh")
    host = address.rsplit(":", 1)[0]
    if host not in ("127.0.0.1", "localhost", "[::1]"):
        pytest.skip("benchmark traffic goes to loopback only")
    return address


@pytest.mark.parametrize(
    ("streaming", "concurrency"),
    [(False, 4), (True, 2)],
    ids=["unary-c4", "stream-c2"],
)
def test_perf_analyzer_short_measurement(
    batcher_address: str, streaming: bool, concurrency: int
) -> None:
    """A 1-second-window measurement finishes, reports throughput, and logs no errors.

    perf_analyzer runs under its own ``timeout`` (120 s), so the test is bounded in time without
    pytest-timeout.
    Loose stability and a 2 GiB address-space cap: this checks compatibility, not speed, and the
    cap keeps a runaway ``--streaming`` client (seen growing to 17 GB) from hurting the machine.
    """
    model = os.environ.get("TIDESERVE_BENCH_MODEL", "mlp")
    record = perf.run_perf_analyzer(
        batcher_address,
        model,
        concurrency,
        streaming=streaming,
        measurement_ms=1000,
        timeout_s=120,
        mem_limit_bytes=2 << 30,
        stability_pct=50.0,
    )
    assert record["ok"], record.get("error")
    assert not record["timed_out"]
    assert (record["throughput_infer_per_s"] or 0) > 0
    assert (record["p99_us"] or 0) > 0
