"""Two balancers: workers heartbeat to both, the batcher spreads batches over both, and killing
one with SIGKILL under load fails no request."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.cluster import Cluster, free_port
from tideserve_tools.loadgen import closed_loop

pytestmark = pytest.mark.integration


@pytest.fixture
def two_balancers(model_repository: Path, tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(model_repository, tmp_path, extra_balancer_ports=(free_port(),))
    cluster.start(workers=2)
    yield cluster
    cluster.stop()


def dispatched(cluster: Cluster, address: str) -> int:
    snapshot = cluster.snapshot(address)
    assert len(snapshot.workers) == 2, "every worker heartbeats to every balancer"
    return snapshot.dispatched_batches


def test_sigkill_one_balancer_under_load_every_request_succeeds(two_balancers: Cluster) -> None:
    cluster = two_balancers
    second = f"127.0.0.1:{cluster.extra_balancer_ports[0]}"

    async def run() -> tuple:
        load = asyncio.create_task(
            closed_loop(cluster.batcher, "tiny_cnn", concurrency=16, seconds=4.0)
        )
        await asyncio.sleep(1.5)
        shares = (
            await asyncio.to_thread(dispatched, cluster, cluster.balancer),
            await asyncio.to_thread(dispatched, cluster, second),
        )
        os.kill(cluster.processes["balancer-1"].pid, signal.SIGKILL)
        return await load, shares

    result, shares = asyncio.run(run())

    assert min(shares) > 0, f"the batcher spreads batches over both balancers: {shares}"
    assert result.errors == {}, result.errors
    assert result.ok == result.sent
    assert result.ok > 100
    after = dispatched(cluster, cluster.balancer)
    assert after > shares[0], "the surviving balancer carried the load on"
