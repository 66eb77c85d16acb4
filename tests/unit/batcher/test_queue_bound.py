"""The batcher-wide queue bound (max_queue_rows_default): overload is refused at once with a
RESOURCE_EXHAUSTED that says what to do, and a model's own max_queue_size takes precedence."""

from __future__ import annotations

import pytest

from services.batcher.batching import BatchQueue
from services.batcher.policies import FixedPolicy
from services.batcher.settings import BatcherSettings
from tests.unit.batcher.test_batching import FakeClock, request
from tideserve.errors import ResourceExhausted
from tideserve.modelconfig import BatchingSpec, QueuePolicy


def bounded_queue(clock: FakeClock, bound: int, **batching: object) -> BatchQueue:
    spec = BatchingSpec(enabled=True, max_queue_delay_us=10_000, **batching)
    return BatchQueue(8, spec, FixedPolicy(8, 0.01), clock, default_max_rows=bound)


def test_rows_beyond_the_default_bound_are_refused_with_advice() -> None:
    clock = FakeClock()
    queue = bounded_queue(clock, 10)
    for _ in range(3):
        queue.put(request(clock, rows=3))
    with pytest.raises(ResourceExhausted, match="overloaded.*Retry after a back-off"):
        queue.put(request(clock, rows=2))
    queue.put(request(clock, rows=1))
    assert queue.rows == 10
    queue.take(clock())
    queue.put(request(clock, rows=2))


def test_an_empty_queue_takes_a_request_larger_than_the_bound() -> None:
    clock = FakeClock()
    queue = bounded_queue(clock, 4)
    queue.put(request(clock, rows=6))
    with pytest.raises(ResourceExhausted):
        queue.put(request(clock, rows=1))


def test_a_models_own_max_queue_size_overrides_the_default() -> None:
    clock = FakeClock()
    queue = bounded_queue(clock, 2, default_queue_policy=QueuePolicy(max_queue_size=5))
    for _ in range(5):
        queue.put(request(clock))
    with pytest.raises(ResourceExhausted, match="queue for this model is full"):
        queue.put(request(clock))


def test_zero_means_unbounded_and_negative_is_refused() -> None:
    clock = FakeClock()
    queue = bounded_queue(clock, 0)
    for _ in range(1000):
        queue.put(request(clock))
    with pytest.raises(ValueError, match="default_max_rows"):
        bounded_queue(clock, -1)
    with pytest.raises(ValueError, match="max_queue_rows_default"):
        BatcherSettings(max_queue_rows_default=-1)
