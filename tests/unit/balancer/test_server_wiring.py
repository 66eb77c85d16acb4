"""The balancer's server wiring on an in-process server: the generated registration with only
Dispatch registered again by hand (bytes in, bytes out), call paths taken from the proto
descriptors, and bad input answered with INVALID_ARGUMENT while the server keeps serving."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from services.balancer.auth import BalancerAuth
from services.balancer.core import BalancerCore
from services.balancer.metrics import BalancerMetrics
from services.balancer.registry import WorkerTable
from services.balancer.server import (
    BALANCER,
    SERVICE_NAME,
    WORKER_EXECUTE,
    BalancerServicer,
    add_balancer_to_server,
    dispatch_rows,
)
from services.batcher.server import BALANCER_DISPATCH
from tideserve import metrics, serving
from tideserve.errors import InvalidArgument
from tideserve.metadata import MODEL_KEY, ROWS_KEY
from tideserve.v1 import cluster_pb2, cluster_pb2_grpc


class NoWorkers:
    async def execute(
        self, address: str, payload: bytes, timeout: float | None, *, key: str
    ) -> bytes:
        raise AssertionError("no batch may reach a worker in these tests")

    def forget(self, address: str) -> None:
        pass


@pytest.fixture
async def stub_and_channel() -> AsyncIterator[
    tuple[cluster_pb2_grpc.BalancerStub, grpc.aio.Channel]
]:
    core = BalancerCore(WorkerTable(), NoWorkers(), no_worker_wait_s=0.0)
    servicer = BalancerServicer(core, 0.05, BalancerMetrics(metrics.new_registry()))
    auth = BalancerAuth.from_settings("", mutual_tls=False, allow_unauthenticated=True)
    server = serving.new_server([serving.RoleGuard(SERVICE_NAME, auth)])
    add_balancer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with serving.channel(f"127.0.0.1:{port}") as channel:
            yield cluster_pb2_grpc.BalancerStub(channel), channel
    finally:
        await server.stop(None)


def test_call_paths_come_from_the_descriptors() -> None:
    worker = cluster_pb2.DESCRIPTOR.services_by_name["Worker"]
    assert f"/{worker.full_name}/Execute" == WORKER_EXECUTE
    assert f"/{SERVICE_NAME}/Dispatch" == BALANCER_DISPATCH
    assert BALANCER.full_name == SERVICE_NAME
    # A method the proto does not declare fails where the path is built (at import for the
    # constants above), not at the first call.
    with pytest.raises(KeyError):
        serving.method_path(worker, "Run")


@pytest.mark.parametrize("value", ["many", "-1", "1.5", ""])
def test_rows_metadata_must_be_a_whole_number(value: str) -> None:
    with pytest.raises(InvalidArgument, match=ROWS_KEY):
        dispatch_rows(value)


def test_rows_metadata_is_read() -> None:
    assert dispatch_rows("32") == 32


async def test_dispatch_takes_raw_bytes_and_bad_metadata_is_invalid_argument(
    stub_and_channel: tuple[cluster_pb2_grpc.BalancerStub, grpc.aio.Channel],
) -> None:
    stub, channel = stub_and_channel
    dispatch = channel.unary_unary(BALANCER_DISPATCH)
    # Not a parseable Batch: a deserializing handler would fail it before any check of ours.
    not_a_batch = b"\xff\xff\xff"
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await dispatch(not_a_batch, timeout=5)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert MODEL_KEY in (failed.value.details() or "")

    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await dispatch(not_a_batch, metadata=((MODEL_KEY, "m"), (ROWS_KEY, "many")), timeout=5)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert ROWS_KEY in (failed.value.details() or "")

    # With good metadata the batch reaches routing (no worker serves "m"): still serving.
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await dispatch(not_a_batch, metadata=((MODEL_KEY, "m"), (ROWS_KEY, "1")), timeout=5)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert serving.reason_of(failed.value) == "no-ready-worker"
    assert (await stub.ListModels(cluster_pb2.ListModelsRequest(), timeout=5)).models == []


async def test_a_heartbeat_not_opened_by_a_registration_is_invalid_argument(
    stub_and_channel: tuple[cluster_pb2_grpc.BalancerStub, grpc.aio.Channel],
) -> None:
    stub, _ = stub_and_channel

    async def reports() -> AsyncIterator[cluster_pb2.WorkerReport]:
        yield cluster_pb2.WorkerReport(load=cluster_pb2.LoadReport())
        await asyncio.sleep(30)

    with pytest.raises(grpc.aio.AioRpcError) as failed:
        async for _ in stub.Heartbeat(reports(), timeout=5):
            pass
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "registration" in (failed.value.details() or "")
