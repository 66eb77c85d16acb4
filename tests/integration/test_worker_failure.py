"""Workers dying or freezing under load: no request is lost and the balancer notices in time."""

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
from tideserve_tools.loadgen import closed_loop

pytestmark = pytest.mark.integration

HEARTBEAT_TIMEOUT_S = 1.0


@pytest.fixture
def three_workers(model_repository: Path, tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(model_repository, tmp_path).start(workers=3)
    yield cluster
    cluster.stop()


async def seconds_until_gone(cluster: Cluster, worker_id: str, timeout_s: float = 10.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        snapshot = await asyncio.to_thread(cluster.snapshot)
        if worker_id not in {w.worker_id for w in snapshot.workers}:
            return time.monotonic() - started
        await asyncio.sleep(0.02)
    raise TimeoutError(f"{worker_id} still registered after {timeout_s} s")


def test_sigkill_worker_under_load_every_request_succeeds(three_workers: Cluster) -> None:
    cluster = three_workers

    async def run() -> tuple:
        load = asyncio.create_task(
            closed_loop(cluster.batcher, "tiny_cnn", concurrency=24, seconds=4.0)
        )
        await asyncio.sleep(1.5)
        os.kill(cluster.processes["worker-0"].pid, signal.SIGKILL)
        gone_after = await seconds_until_gone(cluster, "worker-0")
        return await load, gone_after

    result, gone_after = asyncio.run(run())
    record_load("worker SIGKILL under load (1 of 3)", result)
    assert result.errors == {}, result.errors
    assert result.ok == result.sent
    assert result.ok > 100
    assert gone_after <= HEARTBEAT_TIMEOUT_S
    snapshot = cluster.snapshot()
    assert {w.worker_id for w in snapshot.workers} == {"worker-1", "worker-2"}


def test_frozen_worker_is_dropped_after_missed_heartbeats_and_rejoins(
    three_workers: Cluster,
) -> None:
    """SIGSTOP keeps the TCP connection open, so only the heartbeat timeout can catch it."""
    cluster = three_workers
    pid = cluster.processes["worker-1"].pid

    async def run() -> tuple:
        load = asyncio.create_task(
            closed_loop(cluster.batcher, "tiny_cnn", concurrency=8, seconds=4.0, timeout_s=30)
        )
        await asyncio.sleep(1.0)
        os.kill(pid, signal.SIGSTOP)
        gone_after = await seconds_until_gone(cluster, "worker-1")
        os.kill(pid, signal.SIGCONT)
        return await load, gone_after

    try:
        result, gone_after = asyncio.run(run())
    finally:
        os.kill(pid, signal.SIGCONT)
    record_load("worker frozen by SIGSTOP, heartbeats stop (1 of 3)", result)
    assert 0.5 * HEARTBEAT_TIMEOUT_S <= gone_after <= 2 * HEARTBEAT_TIMEOUT_S + 0.5
    assert result.errors == {}, result.errors
    cluster.wait_workers(3, timeout_s=15)
