"""The batcher's BalancerPool against real grpc.aio servers on loopback standing in for
balancers: it acts on the error reason a balancer answers with (never on message text), sends a
batch again once a balancer is back, and otherwise fails naming the balancers it tried."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest

from services.batcher.links import BalancerLinks
from services.batcher.server import BalancerPool
from tideserve import errors, serving
from tideserve.procs import free_port

pytestmark = pytest.mark.integration

Handler = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]


class FakeBalancer:
    """Dispatch only, answered by `handler`; counts the calls it gets."""

    def __init__(self, port: int, handler: Handler) -> None:
        self.port = port
        self.address = f"127.0.0.1:{port}"
        self.handler = handler
        self.calls = 0
        self.server: grpc.aio.Server | None = None

    async def dispatch(self, payload: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.calls += 1
        return await self.handler(payload, context)

    async def start(self) -> None:
        self.server = serving.new_server()
        self.server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "tideserve.v1.Balancer",
                    {"Dispatch": grpc.unary_unary_rpc_method_handler(self.dispatch)},
                ),
            )
        )
        self.server.add_insecure_port(self.address)
        await self.server.start()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(None)


async def echo(payload: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return b"result:" + payload


async def no_ready_worker(payload: bytes, context: grpc.aio.ServicerContext) -> bytes:
    raise errors.NoReadyWorker("no ready worker serves model 'm'")


@pytest.fixture
async def balancers() -> AsyncIterator[list[FakeBalancer]]:
    made: list[FakeBalancer] = []
    yield made
    for balancer in made:
        await balancer.stop()


async def test_an_answer_with_a_reason_is_not_retried_on_another_balancer(
    balancers: list[FakeBalancer],
) -> None:
    first, second = FakeBalancer(free_port(), no_ready_worker), FakeBalancer(free_port(), echo)
    balancers.extend([first, second])
    for balancer in balancers:
        await balancer.start()
    links = BalancerLinks([first.address, second.address])
    pool = BalancerPool((first.address, second.address), links)
    try:
        with pytest.raises(errors.NoReadyWorker, match="no ready worker serves model 'm'"):
            await pool.dispatch("m", 1, b"batch", timeout=10)
    finally:
        await pool.close()

    assert (first.calls, second.calls) == (1, 0)


async def test_an_unreachable_balancer_is_skipped_for_the_next(
    balancers: list[FakeBalancer],
) -> None:
    second = FakeBalancer(free_port(), echo)
    balancers.append(second)
    await second.start()
    down = f"127.0.0.1:{free_port()}"
    pool = BalancerPool((down, second.address), BalancerLinks([down, second.address]))
    try:
        assert await pool.dispatch("m", 1, b"batch", timeout=10) == b"result:batch"
    finally:
        await pool.close()


async def test_a_batch_waits_for_its_balancer_to_return_and_is_sent_again(
    balancers: list[FakeBalancer],
) -> None:
    balancer = FakeBalancer(free_port(), echo)
    balancers.append(balancer)
    links = BalancerLinks([balancer.address])
    links.up(balancer.address)
    pool = BalancerPool((balancer.address,), links, hold_s=30.0)
    try:
        sending = asyncio.ensure_future(pool.dispatch("m", 1, b"batch", timeout=None))
        await asyncio.sleep(0.3)
        assert not sending.done(), "held while the balancer is away"
        links.down(balancer.address, "UNAVAILABLE: Socket closed")
        await balancer.start()
        # What the batcher's cluster watch, on this same channel, sees before it reports up.
        await asyncio.wait_for(pool.channels[0].channel_ready(), 10)
        links.up(balancer.address)
        assert await asyncio.wait_for(sending, 10) == b"result:batch"
    finally:
        await pool.close()
    assert balancer.calls == 1


async def test_no_balancer_fails_naming_it_after_the_hold_or_the_deadline() -> None:
    address = f"127.0.0.1:{free_port()}"
    links = BalancerLinks([address])
    pool = BalancerPool((address,), links, hold_s=0.2)
    try:
        with pytest.raises(errors.BalancerUnreachable) as held:
            await pool.dispatch("m", 1, b"batch", timeout=None)
        with pytest.raises(errors.DeadlineExceeded, match="waited for a balancer"):
            await pool.dispatch("m", 1, b"batch", timeout=0.2)
    finally:
        await pool.close()

    assert held.value.reason == "balancer-unreachable"
    assert f"balancer {address} unreachable (UNAVAILABLE:" in str(held.value)
    assert "held the batch 0.2 s" in str(held.value)
