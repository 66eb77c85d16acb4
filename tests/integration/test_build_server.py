"""Services built in-process with their `build_server` on port 0: a balancer and a batcher
following it start, the batcher turns SERVING once its cluster stream is live, and the shared
graceful shutdown stops each: the balancer's end ends the batcher's stream (NOT_SERVING), and a
stopped server takes no more calls."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.balancer.server import build_server as build_balancer
from services.balancer.settings import BalancerSettings
from services.batcher.server import SERVICE_NAME as BATCHER_SERVICE
from services.batcher.server import build_server as build_batcher
from services.batcher.settings import BatcherSettings
from tideserve import serving
from tideserve.v1 import inference_pb2, inference_pb2_grpc

pytestmark = pytest.mark.integration

SERVING = health_pb2.HealthCheckResponse.SERVING


async def health_of(channel: grpc.aio.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    answer = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return answer.status


async def eventually(channel: grpc.aio.Channel, service: str, status: int) -> None:
    for _ in range(200):
        if await health_of(channel, service) == status:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"health of {service!r} never became {status}")


async def test_balancer_and_batcher_built_in_process_start_and_stop_gracefully() -> None:
    balancer, balancer_port = await build_balancer(
        BalancerSettings(port=0, metrics_port=0, allow_unauthenticated=True, grace_s=1.0)
    )
    await balancer.start()
    batcher, batcher_port = await build_batcher(
        BatcherSettings(
            port=0, metrics_port=0, balancers=(f"127.0.0.1:{balancer_port}",), grace_s=1.0
        )
    )
    await batcher.start()
    try:
        async with serving.channel(f"127.0.0.1:{batcher_port}") as channel:
            await eventually(channel, BATCHER_SERVICE, SERVING)
            stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
            assert (await stub.ServerLive(inference_pb2.ServerLiveRequest(), timeout=5)).live

            await balancer.shutdown()
            await eventually(channel, BATCHER_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
    finally:
        await batcher.shutdown()
    async with serving.channel(f"127.0.0.1:{batcher_port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as stopped:
            await inference_pb2_grpc.GRPCInferenceServiceStub(channel).ServerLive(
                inference_pb2.ServerLiveRequest(), timeout=2
            )
    assert stopped.value.code() in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    )
