"""ModelScheduler alone, on a fake clock with a fake dispatcher: its loop runs only once started,
a batch forms when the policy's delay has passed on the clock, each returned batch feeds the
policy and the round-trip estimate, and a config naming an unknown batching policy is refused
with the valid names."""

from __future__ import annotations

import pytest

from services.batcher.batching import PendingRequest
from services.batcher.catalog import CatalogEntry
from services.batcher.core import BatcherCore
from services.batcher.scheduler import ModelScheduler
from tests.unit.batcher.test_batcher_core import (
    MODEL,
    WIDTH,
    EchoDispatcher,
    FakeClock,
    catalog_with,
    gather,
    infer_request,
    model_config,
    rows_of,
    settle,
)
from tideserve.errors import FailedPrecondition
from tideserve.v1 import inference_pb2 as pb


def pending(index: int, clock: FakeClock) -> PendingRequest:
    return PendingRequest(
        request_id=f"req-{index}",
        rows=1,
        inputs=[rows_of(index, 1).tobytes()],
        shape_key=((WIDTH,),),
        output_names=(),
        arrival=clock(),
    )


def scheduler_for(config: str, dispatcher: EchoDispatcher, clock: FakeClock) -> ModelScheduler:
    entry: CatalogEntry = catalog_with(config).get(MODEL)
    return ModelScheduler(entry, dispatcher, lambda: 1, clock)


async def test_a_scheduler_takes_no_batch_until_started() -> None:
    clock, dispatcher = FakeClock(), EchoDispatcher()
    scheduler = scheduler_for(model_config(delay_us=0), dispatcher, clock)
    scheduler.close()  # harmless before a start
    future = scheduler.submit(pending(0, clock))
    await settle()
    assert dispatcher.batches == [], "queued, but nothing takes batches yet"

    scheduler.start()
    try:
        (response,) = await gather([future])
    finally:
        scheduler.close()
    assert isinstance(response, pb.ModelInferResponse)
    assert dispatcher.batch_rows == [1]


async def test_a_lone_request_on_an_idle_model_leaves_from_submit() -> None:
    """No turn of the event loop between the request and its batch: the batch is in flight
    when submit returns, and a request arriving meanwhile waits for the loop's decision."""
    clock, dispatcher = FakeClock(), EchoDispatcher()
    dispatcher.gate.clear()
    scheduler = scheduler_for(model_config(max_batch_size=8, delay_us=0), dispatcher, clock)
    scheduler.start()
    try:
        first = scheduler.submit(pending(0, clock))
        assert scheduler.inflight == 1, "the idle model's request left from submit itself"
        assert len(scheduler.queue) == 0

        second = scheduler.submit(pending(1, clock))
        assert scheduler.inflight == 1, "with a batch in flight the loop decides, as before"
        assert len(scheduler.queue) == 1

        dispatcher.gate.set()
        await gather([first, second])
    finally:
        scheduler.close()
    assert dispatcher.batch_rows == [1, 1]


async def test_an_idle_model_still_waits_its_queue_delay() -> None:
    clock, dispatcher = FakeClock(), EchoDispatcher()
    scheduler = scheduler_for(model_config(max_batch_size=8, delay_us=2_000), dispatcher, clock)
    scheduler.start()
    try:
        future = scheduler.submit(pending(0, clock))
        assert scheduler.inflight == 0, "a batch short of its size waits the delay"
        clock.advance(0.002)
        scheduler.submit(pending(1, clock))
        assert scheduler.inflight == 1, "once the delay has passed, the arrival takes it along"
        await gather([future])
    finally:
        scheduler.close()
    assert dispatcher.batch_rows == [2]


async def test_a_batch_forms_once_its_oldest_request_has_waited_the_delay() -> None:
    clock, dispatcher = FakeClock(), EchoDispatcher()
    scheduler = scheduler_for(model_config(max_batch_size=8, delay_us=2_000), dispatcher, clock)
    scheduler.start()
    try:
        futures = [scheduler.submit(pending(0, clock))]
        clock.advance(0.001)
        futures.append(scheduler.submit(pending(1, clock)))
        await settle()
        assert dispatcher.batches == [], "1 ms of a 2 ms delay: the batch waits for company"

        clock.advance(0.001)
        futures.append(scheduler.submit(pending(2, clock)))  # the arrival wakes the loop
        responses = await gather(futures)
    finally:
        scheduler.close()

    assert dispatcher.batch_rows == [3]
    assert [r.id for r in responses] == ["req-0", "req-1", "req-2"]


async def test_each_returned_batch_feeds_the_policy_and_the_round_trip() -> None:
    clock = FakeClock()
    dispatcher = EchoDispatcher(clock, seconds_per_batch=0.004)
    aimd = (
        'parameters { key: "batching_policy" value { string_value: "aimd" } }\n'
        'parameters { key: "slo_ms" value { string_value: "100" } }'
    )
    scheduler = scheduler_for(model_config(max_batch_size=8) + aimd, dispatcher, clock)
    scheduler.start()
    try:
        await gather([scheduler.submit(pending(0, clock))])
    finally:
        scheduler.close()

    assert scheduler.policy.name == "aimd"
    assert scheduler.policy.size == 2.0, "a 1-row batch within budget grows AIMD's target"
    assert scheduler.round_trips.measured == 1
    assert scheduler.round_trips.seconds == pytest.approx(0.004)
    assert scheduler.inflight == 0


async def test_a_model_naming_an_unknown_policy_is_refused_with_the_valid_names() -> None:
    bad = 'parameters { key: "batching_policy" value { string_value: "magic" } }'
    core = BatcherCore(catalog_with(model_config() + bad), EchoDispatcher(), clock=FakeClock())
    try:
        for _ in range(2):  # refused each time, not cached half-made
            with pytest.raises(FailedPrecondition) as refused:
                core.submit(infer_request(0), deadline=None)
            assert "unknown batching_policy 'magic'" in str(refused.value)
            assert "['aimd', 'fixed', 'queue_length', 'slo']" in str(refused.value)
        assert core.schedulers == {}
    finally:
        core.close()
