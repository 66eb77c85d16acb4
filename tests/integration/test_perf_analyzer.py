"""Triton's perf_analyzer completes a short measurement against tideserve's batcher without errors.

Why: tideserve promises drop-in compatibility with Triton's own benchmark client; perf_analyzer
exits early on any gap (ServerMetadata, ModelMetadata, ModelConfig, statistics, response
decoding), so one short run exercises the whole client-facing contract the benchmark relies on.

The batcher is the integration suite's cluster (tests/integration/conftest.py); the model is the
overhead-bound mlp from the shared workloads when present, else the default model. perf_analyzer
comes from ``bench/setup.sh`` (the test command runs it); the test is skipped when it is absent.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cluster import Cluster
from harness.perf_analyzer import PERF_ANALYZER, run_perf_analyzer
from services.worker.models import DEFAULT_MODEL

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def batcher_address(cluster: Cluster) -> str:
    if not PERF_ANALYZER.exists():
        pytest.skip("perf_analyzer not installed: run bench/setup.sh")
    return cluster.batcher


@pytest.mark.parametrize(
    ("streaming", "concurrency", "extra_args"),
    [
        (False, 4, []),
        (True, 2, []),
        # Inputs and outputs in system shared memory, registered through Triton's extension.
        (False, 4, ["--shared-memory", "system"]),
    ],
    ids=["unary-c4", "stream-c2", "unary-c4-system-shared-memory"],
)
def test_perf_analyzer_short_measurement(
    batcher_address: str,
    model_repository: Path,
    streaming: bool,
    concurrency: int,
    extra_args: list[str],
) -> None:
    """A 1-second-window measurement finishes, reports throughput and the server-side
    breakdown, and logs no errors.

    perf_analyzer runs under its own ``timeout`` (120 s), so the test is bounded in time without
    pytest-timeout.
    Loose stability and a 2 GiB address-space cap: this checks compatibility, not speed, and the
    cap keeps a runaway ``--streaming`` client (seen growing to 17 GB) from hurting the machine.
    """
    model = "mlp" if (model_repository / "mlp").exists() else DEFAULT_MODEL
    record = run_perf_analyzer(
        batcher_address,
        model,
        concurrency,
        streaming=streaming,
        measurement_ms=1000,
        timeout_s=120,
        mem_limit_bytes=2 << 30,
        stability_pct=50.0,
        extra_args=extra_args,
    )
    assert record["ok"], record.get("error")
    assert not record["timed_out"]
    assert (record["throughput_infer_per_s"] or 0) > 0
    assert (record["p99_us"] or 0) > 0
    # The server-side section perf_analyzer prints from ModelStatistics (Triton's statistics
    # extension, read before and after each window): counts and the latency's parts.
    server = record["server"]
    for count in ("inference_count", "execution_count", "successful_request_count"):
        assert server.get(count, 0) > 0, (count, server)
    for part in ("queue_us", "compute_input_us", "compute_infer_us", "compute_output_us"):
        assert part in server, (part, server)
    assert server["compute_infer_us"] > 0, server
