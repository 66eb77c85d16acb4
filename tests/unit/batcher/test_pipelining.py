"""Just-in-time pipelining: a batch beyond one per model instance leaves when the instance is
predicted to free (its batch's send + t(b), less the hop down), holding what queued meanwhile;
the prediction follows what comes back."""

from __future__ import annotations

import pytest

from services.batcher.batching import PendingRequest
from services.batcher.catalog import CatalogEntry
from services.batcher.pipelining import InstanceTimeline
from services.batcher.scheduler import ModelScheduler
from tests.unit.batcher.test_batcher_core import (
    MODEL,
    WIDTH,
    EchoDispatcher,
    FakeClock,
    catalog_with,
    gather,
    model_config,
    rows_of,
    settle,
)


def test_a_batch_is_booked_on_the_instance_that_frees_first() -> None:
    timeline = InstanceTimeline()
    first = timeline.book(2, now=0.0, hop_s=0.001, compute_s=0.010)
    second = timeline.book(2, now=0.002, hop_s=0.001, compute_s=0.020)

    assert (first.instance, second.instance) == (0, 1)
    assert timeline.free_at(2, now=0.003) == pytest.approx(0.011)
    # Behind the first: it starts when that one ends, not on arrival.
    third = timeline.book(2, now=0.004, hop_s=0.001, compute_s=0.010)
    assert third.instance == first.instance
    assert timeline.free_at(2, now=0.005) == pytest.approx(0.021)  # 0.011 + 0.010 vs 0.023


def test_an_answer_corrects_the_prediction_unless_a_batch_was_booked_behind_it() -> None:
    timeline = InstanceTimeline()
    lone = timeline.book(1, now=0.0, hop_s=0.0, compute_s=0.050)
    timeline.returned(lone, finished_at=0.030)  # faster than the curve said
    assert timeline.free_at(1, now=0.031) == pytest.approx(0.030)

    ahead = timeline.book(1, now=0.040, hop_s=0.0, compute_s=0.010)
    timeline.book(1, now=0.041, hop_s=0.0, compute_s=0.010)
    timeline.returned(ahead, finished_at=0.050)
    assert timeline.free_at(1, now=0.051) == pytest.approx(0.060), "still busy with the next"


def test_instances_follow_workers_joining_and_leaving() -> None:
    timeline = InstanceTimeline()
    timeline.book(1, now=0.0, hop_s=0.0, compute_s=0.100)
    assert timeline.free_at(2, now=0.010) == pytest.approx(0.010), "a new worker is free now"
    timeline.book(2, now=0.010, hop_s=0.0, compute_s=0.050)
    # Back to one instance: the one that frees first (0.060) stays.
    assert timeline.free_at(1, now=0.020) == pytest.approx(0.060)


def pending(index: int, clock: FakeClock) -> PendingRequest:
    return PendingRequest(
        request_id=f"req-{index}",
        rows=1,
        inputs=[rows_of(index, 1).tobytes()],
        shape_key=((WIDTH,),),
        output_names=(),
        arrival=clock(),
    )


async def test_second_batch_leaves_when_the_first_is_predicted_done() -> None:
    """t(b) = 10 ms + 1 ms x b: a 1-row batch sent at 0 ends at 11 ms. Requests arriving
    meanwhile wait for that moment and leave together while the first is still out."""
    clock = FakeClock()
    entry: CatalogEntry = catalog_with(model_config(max_batch_size=8, delay_us=0)).get(MODEL)
    curve = {1: 0.011, 8: 0.018}
    dispatcher = EchoDispatcher()
    scheduler = ModelScheduler(entry, dispatcher, lambda: 1, clock, lambda: curve, depth=2)
    scheduler.start()
    try:
        await gather([scheduler.submit(pending(9, clock))])  # a round trip measured (no hops)
        dispatcher.gate.clear()  # the worker holds every batch from now
        futures = [scheduler.submit(pending(0, clock))]
        await settle()
        assert dispatcher.batch_rows == [1, 1]

        clock.advance(0.005)
        futures += [scheduler.submit(pending(i, clock)) for i in (1, 2)]
        await settle()
        assert dispatcher.batch_rows == [1, 1], "6 ms before the instance frees: it waits"

        clock.advance(0.006)
        futures.append(scheduler.submit(pending(3, clock)))
        await settle()
        assert dispatcher.batch_rows == [1, 1, 3], "in time for the instance: all that queued"

        clock.advance(0.050)
        futures.append(scheduler.submit(pending(4, clock)))
        await settle()
        assert dispatcher.batch_rows == [1, 1, 3], "two in flight for one instance: no third"

        dispatcher.gate.set()
        responses = await gather(futures)
    finally:
        scheduler.close()
        await settle()

    assert dispatcher.batch_rows == [1, 1, 3, 1]
    assert [r.id for r in responses] == [f"req-{i}" for i in range(5)]


async def two_arrive_long_after_a_held_batch(
    scheduler: ModelScheduler, dispatcher: EchoDispatcher, clock: FakeClock
) -> list:
    """One request whose batch the worker holds, then two more a second later."""
    dispatcher.gate.clear()
    futures = [scheduler.submit(pending(0, clock))]
    await settle()
    clock.advance(1.0)
    futures += [scheduler.submit(pending(i, clock)) for i in (1, 2)]
    await settle()
    return futures


async def test_without_a_measured_curve_a_second_batch_waits_for_a_free_instance() -> None:
    clock = FakeClock()
    entry: CatalogEntry = catalog_with(model_config(max_batch_size=8, delay_us=0)).get(MODEL)
    dispatcher = EchoDispatcher()
    scheduler = ModelScheduler(entry, dispatcher, lambda: 1, clock, dict, depth=2)
    scheduler.start()
    try:
        futures = await two_arrive_long_after_a_held_batch(scheduler, dispatcher, clock)
        assert dispatcher.batch_rows == [1], "nothing predicts when the instance frees"

        dispatcher.gate.set()
        await gather(futures)
    finally:
        scheduler.close()
        await settle()

    assert dispatcher.batch_rows == [1, 2]


async def test_a_model_that_computes_for_less_than_its_hops_is_not_pipelined() -> None:
    """mlp-like: 0.2-0.9 ms batches behind 3 ms of hops. Sent early, a batch would hold one or
    two rows; it waits for the instance's answer and leaves larger."""
    clock = FakeClock()
    entry: CatalogEntry = catalog_with(model_config(max_batch_size=8, delay_us=0)).get(MODEL)
    curve = {1: 0.0002, 8: 0.0009}
    dispatcher = EchoDispatcher(clock, seconds_per_batch=0.003)
    scheduler = ModelScheduler(entry, dispatcher, lambda: 1, clock, lambda: curve, depth=2)
    scheduler.start()
    try:
        await gather([scheduler.submit(pending(9, clock))])  # 3 ms round trip, all hops
        futures = await two_arrive_long_after_a_held_batch(scheduler, dispatcher, clock)
        assert dispatcher.batch_rows == [1, 1]

        dispatcher.gate.set()
        await gather(futures)
    finally:
        scheduler.close()
        await settle()

    assert dispatcher.batch_rows == [1, 1, 2]
