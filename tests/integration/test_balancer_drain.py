"""Draining under load: the drained worker gets no new batches, finishes what it holds, is
released and exits by itself, and no request fails. Also the runtime routing-policy switch."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from harness.cluster import Cluster, wait_for
from tideserve.v1 import cluster_pb2, cluster_pb2_grpc
from tideserve_tools.loadgen import closed_loop

pytestmark = pytest.mark.integration


@pytest.fixture
def three_workers(model_repository: Path, tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(model_repository, tmp_path).start(workers=3)
    yield cluster
    cluster.stop()


def test_drain_under_load_loses_nothing_and_the_worker_exits(three_workers: Cluster) -> None:
    cluster = three_workers
    drained = cluster.processes["worker-0"]

    async def run() -> tuple:
        load = asyncio.create_task(
            closed_loop(cluster.batcher, "tiny_cnn", concurrency=16, seconds=4.0)
        )
        await asyncio.sleep(1.0)
        async with grpc.aio.insecure_channel(cluster.balancer) as channel:
            response = await cluster_pb2_grpc.BalancerStub(channel).DrainWorker(
                cluster_pb2.DrainWorkerRequest(worker_id="worker-0", wait=True),
                timeout=10,
                metadata=cluster.auth(),
            )
        exit_code = await asyncio.to_thread(drained.wait, 10)
        return await load, response, exit_code

    result, response, exit_code = asyncio.run(run())

    assert response.drained
    assert response.outstanding_batches == 0
    assert exit_code == 0, "released after the drain, the worker exits cleanly by itself"
    assert result.errors == {}, result.errors
    assert result.ok == result.sent
    assert result.ok > 100
    wait_for(lambda: cluster.registered() == {"worker-1", "worker-2"}, 5, "worker-0 gone")
    assert "released by balancer" in cluster.log("worker-0")


def test_routing_policy_switches_at_runtime(model_repository: Path, tmp_path: Path) -> None:
    cluster = Cluster(model_repository, tmp_path).start(workers=1)
    try:
        switch_policies(cluster)
    finally:
        cluster.stop()


def switch_policies(cluster: Cluster) -> None:
    with grpc.insecure_channel(cluster.balancer) as channel:
        stub = cluster_pb2_grpc.BalancerStub(channel)
        for name in ("weighted_round_robin", "round_robin", "shortest_expected_delay"):
            answer = stub.SetRoutingPolicy(
                cluster_pb2.SetRoutingPolicyRequest(name=name), metadata=cluster.auth()
            )
            assert answer.name == name
            assert cluster.snapshot().routing_policy == name
        with pytest.raises(grpc.RpcError) as failure:
            stub.SetRoutingPolicy(
                cluster_pb2.SetRoutingPolicyRequest(name="fastest"), metadata=cluster.auth()
            )
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "weighted_round_robin" in (failure.value.details() or "")
