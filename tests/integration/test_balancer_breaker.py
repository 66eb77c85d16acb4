"""The circuit breaker on a worker that hangs while the balancer still trusts its heartbeat.

The balancer here tolerates 10 s of heartbeat silence, so a SIGSTOPped worker stays registered and
only the adaptive per-batch timeout can catch it: its batches must be retried elsewhere within
the request deadline, it must be ejected, and once resumed it must be re-admitted by a probe."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.cluster import Cluster
from tests.accounting import record_load
from tideserve.v1 import cluster_pb2
from tideserve_tools.loadgen import closed_loop

pytestmark = pytest.mark.integration

EJECTED = cluster_pb2.WorkerState.EJECTED
READY = cluster_pb2.WorkerState.READY
EJECTION_S = 1.0


@pytest.fixture
def lenient_heartbeats(model_repository: Path, tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(
        model_repository,
        tmp_path,
        balancer_args=("--heartbeat-timeout-s", "10", "--ejection-s", str(EJECTION_S)),
    ).start(workers=3)
    yield cluster
    cluster.stop()


async def wait_phase(cluster: Cluster, worker_id: str, phase: int, timeout_s: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        snapshot = await asyncio.to_thread(cluster.snapshot)
        if any(w.worker_id == worker_id and w.phase == phase for w in snapshot.workers):
            return time.monotonic() - started
        await asyncio.sleep(0.02)
    raise TimeoutError(f"{worker_id} not in phase {phase} after {timeout_s} s")


def test_hung_worker_is_ejected_by_batch_timeouts_and_readmitted(
    lenient_heartbeats: Cluster,
) -> None:
    cluster = lenient_heartbeats
    pid = cluster.processes["worker-1"].pid

    async def run() -> tuple:
        load = asyncio.create_task(
            closed_loop(cluster.batcher, "tiny_cnn", concurrency=8, seconds=6.0, timeout_s=5.0)
        )
        await asyncio.sleep(1.0)
        os.kill(pid, signal.SIGSTOP)
        ejected_after = await wait_phase(cluster, "worker-1", EJECTED, 5.0)
        os.kill(pid, signal.SIGCONT)
        readmitted_after = await wait_phase(cluster, "worker-1", READY, 10.0)
        return await load, ejected_after, readmitted_after

    try:
        result, ejected_after, readmitted_after = asyncio.run(run())
    finally:
        os.kill(pid, signal.SIGCONT)
    record_load("worker hung (SIGSTOP), heartbeat timeout 10 s (1 of 3)", result)

    assert result.errors == {}, result.errors
    assert result.ok > 100
    assert ejected_after < 2.0, "a few floor timeouts (0.5 s), not the 10 s heartbeat timeout"
    assert max(result.latencies) < 2.0, "retried elsewhere well before the 5 s deadline"
    assert readmitted_after <= 2 * EJECTION_S + 1.0
    snapshot = cluster.snapshot()
    assert snapshot.retried_batches > 0
    assert {w.worker_id for w in snapshot.workers} == {"worker-0", "worker-1", "worker-2"}
