"""BalancerLinks (which balancer streams are live) and what follows from it in the batcher's
logic: readiness, and queues that hold their requests while no balancer is reachable, for their
deadline or the hold time, then fail them naming the balancers tried."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from services.batcher.core import BatcherCore
from services.batcher.links import BalancerLinks
from tests.unit.batcher.test_batcher_core import (
    MODEL,
    EchoDispatcher,
    FakeClock,
    catalog_with,
    infer_request,
    model_config,
    settle,
)
from tideserve.errors import BalancerUnreachable, DeadlineExceeded
from tideserve.v1 import inference_pb2 as pb

A, B = "127.0.0.1:8100", "127.0.0.1:8101"


def test_links_start_down_and_follow_their_streams() -> None:
    clock = FakeClock()
    links = BalancerLinks([A, B], clock)
    changes: list[bool] = []
    links.subscribe(lambda: changes.append(links.live))

    assert not links.live
    assert links.up(A) is True
    assert links.up(A) is False, "a snapshot on a live stream changes nothing"
    assert links.up(B) is False, "already live through A"
    assert links.down(A, "UNAVAILABLE: Socket closed") is False, "B is still live"
    clock.advance(3.0)
    assert links.down(B, "UNAVAILABLE: Connection refused") is True
    assert links.down_since == clock.now
    assert changes == [True, False]
    assert links.up(B) is True
    assert links.down_since is None
    assert changes == [True, False, True]


def test_unreachable_names_each_balancer_and_its_last_failure() -> None:
    links = BalancerLinks([A, B])
    links.down(A, "UNAVAILABLE: Connection refused")

    assert links.unreachable() == (
        f"balancer {A} unreachable (UNAVAILABLE: Connection refused), "
        f"balancer {B} unreachable (no stream yet); no balancer is reachable"
    )


def test_links_need_an_address() -> None:
    with pytest.raises(ValueError, match="balancer address"):
        BalancerLinks([])


async def test_reconnected_wakes_on_a_stream_coming_up_and_times_out_without() -> None:
    links = BalancerLinks([A])
    links.up(A)

    assert await links.reconnected(0.01) is False, "a stream live already does not count"
    waiting = asyncio.ensure_future(links.reconnected(1.0))
    await settle()
    links.down(A, "gone")
    links.up(A)
    assert await waiting is True


class Held:
    """A BatcherCore whose balancer links the test drives, on a fake clock. Waits the scheduler
    computes from that clock run in real time, so holds here are tens of milliseconds."""

    def __init__(self, hold_s: float) -> None:
        self.clock = FakeClock()
        self.links = BalancerLinks([A], self.clock)
        self.dispatcher = EchoDispatcher()
        self.catalog = catalog_with(model_config())
        self.core = BatcherCore(
            self.catalog, self.dispatcher, clock=self.clock, links=self.links, hold_s=hold_s
        )


@pytest.fixture
async def make_held() -> AsyncIterator[Callable[[float], Held]]:
    made: list[Held] = []

    def make(hold_s: float) -> Held:
        made.append(Held(hold_s))
        return made[-1]

    yield make
    for held in made:
        held.core.close()
    await settle()


async def test_readiness_follows_the_links_and_the_catalog(
    make_held: Callable[[float], Held],
) -> None:
    held = make_held(10.0)
    assert not held.core.ready()
    assert not held.core.model_ready(MODEL), "workers known, but no balancer to reach them"

    held.links.up(A)
    assert held.core.ready()
    assert held.core.model_ready(MODEL)
    assert not held.core.model_ready("other")

    held.catalog.worker_counts = {}
    assert held.core.ready()
    assert not held.core.model_ready(MODEL), "the last worker for the model left"


async def test_requests_wait_for_a_balancer_and_leave_when_one_is_back(
    make_held: Callable[[float], Held],
) -> None:
    held = make_held(10.0)
    future = held.core.submit(infer_request(0), deadline=None)
    await asyncio.sleep(0.05)
    assert held.dispatcher.batches == [], "nothing is sent while no balancer is reachable"

    held.links.up(A)
    response = await asyncio.wait_for(future, 1.0)

    assert isinstance(response, pb.ModelInferResponse)
    assert held.dispatcher.batch_rows == [1]


async def test_a_request_without_deadline_fails_unavailable_after_the_hold(
    make_held: Callable[[float], Held],
) -> None:
    held = make_held(0.05)
    held.links.up(A)
    held.links.down(A, "UNAVAILABLE: Connection refused")
    future = held.core.submit(infer_request(0), deadline=None)
    await settle()
    assert not future.done()
    held.clock.advance(0.06)

    with pytest.raises(BalancerUnreachable) as failed:
        await asyncio.wait_for(future, 1.0)

    message = str(failed.value)
    assert f"balancer {A} unreachable (UNAVAILABLE: Connection refused)" in message
    assert "no balancer is reachable" in message
    assert failed.value.reason == "balancer-unreachable"
    assert held.dispatcher.batches == []


async def test_a_request_with_a_deadline_is_held_until_it(
    make_held: Callable[[float], Held],
) -> None:
    held = make_held(0.0)
    future = held.core.submit(infer_request(0), deadline=held.clock.now + 0.05)
    await settle()
    assert not future.done(), "its deadline, not the (zero) hold time, bounds its wait"
    held.clock.advance(0.06)

    with pytest.raises(DeadlineExceeded, match="waited for a balancer") as failed:
        await asyncio.wait_for(future, 1.0)
    assert failed.value.reason == "deadline"
    assert held.dispatcher.batches == []


def test_negative_hold_is_refused() -> None:
    with pytest.raises(ValueError, match="hold_s"):
        BatcherCore(catalog_with(model_config()), EchoDispatcher(), hold_s=-1.0)
