"""BatchQueue on a fake clock: Triton's dynamic-batcher rules for when a batch leaves and what
it holds (max size, max queue delay, preferred sizes, priorities, queue size, timeouts)."""

from __future__ import annotations

import itertools

import pytest

from services.batcher.batching import BatchQueue, Coalescing, PendingRequest
from services.batcher.policies import FixedPolicy
from services.batcher.saturation import Saturation
from tideserve.errors import ResourceExhausted
from tideserve.modelconfig import BatchingSpec, QueuePolicy

DELAY_S = 0.010
_ids = itertools.count()


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def request(
    clock: FakeClock,
    *,
    rows: int = 1,
    priority: int = 0,
    dims: tuple[int, ...] = (4,),
    timeout_s: float | None = None,
    name: str | None = None,
) -> PendingRequest:
    return PendingRequest(
        request_id=name or f"r{next(_ids)}",
        rows=rows,
        inputs=[b"\x00" * rows],
        shape_key=(dims,),
        output_names=(),
        arrival=clock(),
        priority=priority,
        expires=None if timeout_s is None else clock() + timeout_s,
    )


def make_queue(
    clock: FakeClock,
    max_batch_size: int = 8,
    delay_s: float = DELAY_S,
    coalesce_window_s: float | None = 0.0,
    saturation: Saturation | None = None,
    **batching: object,
) -> BatchQueue:
    spec = BatchingSpec(enabled=True, max_queue_delay_us=int(delay_s * 1e6), **batching)
    policy = FixedPolicy(max_batch_size, delay_s)
    return BatchQueue(
        max_batch_size,
        spec,
        policy,
        clock,
        coalesce_window_s=coalesce_window_s,
        saturation=saturation,
    )


def ready(queue: BatchQueue, clock: FakeClock) -> bool:
    """Would a batch leave now, given free capacity?"""
    return queue.next_batch_in(clock()) == 0.0


def ids(batch: list[PendingRequest]) -> list[str]:
    return [r.request_id for r in batch]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_empty_queue_is_never_ready(clock: FakeClock) -> None:
    queue = make_queue(clock)

    assert not ready(queue, clock)
    assert queue.next_batch_in(clock()) is None
    assert queue.take(clock()) == []


def test_batch_waits_for_company_until_the_delay_expires(clock: FakeClock) -> None:
    queue = make_queue(clock)
    queue.put(request(clock, name="a"))
    clock.advance(0.004)
    queue.put(request(clock, name="b"))

    assert not ready(queue, clock)
    assert queue.next_batch_in(clock()) == pytest.approx(0.006)
    clock.advance(0.006)
    assert ready(queue, clock)
    assert ids(queue.take(clock())) == ["a", "b"]
    assert len(queue) == 0
    assert queue.rows == 0


def test_full_batch_leaves_at_once_and_the_rest_waits(clock: FakeClock) -> None:
    queue = make_queue(clock, max_batch_size=4)
    for index in range(6):
        queue.put(request(clock, name=f"r{index}"))

    assert ready(queue, clock)
    assert ids(queue.take(clock())) == ["r0", "r1", "r2", "r3"]
    assert len(queue) == 2
    assert queue.rows == 2
    assert not ready(queue, clock)


def test_rows_not_requests_count_toward_the_max(clock: FakeClock) -> None:
    queue = make_queue(clock, max_batch_size=8)
    queue.put(request(clock, rows=3, name="a"))
    queue.put(request(clock, rows=3, name="b"))
    queue.put(request(clock, rows=3, name="c"))

    assert not ready(queue, clock), "6 rows fit, a 9th would overflow: not full yet"
    clock.advance(DELAY_S)
    assert ids(queue.take(clock())) == ["a", "b"]
    assert queue.rows == 3


def test_zero_delay_sends_a_lone_request_at_once(clock: FakeClock) -> None:
    queue = make_queue(clock, delay_s=0.0)
    queue.put(request(clock, name="alone"))

    assert ready(queue, clock)
    assert ids(queue.take(clock())) == ["alone"]


def test_requests_of_different_shapes_never_share_a_batch(clock: FakeClock) -> None:
    queue = make_queue(clock)
    queue.put(request(clock, dims=(4,), name="a"))
    queue.put(request(clock, dims=(5,), name="b"))
    queue.put(request(clock, dims=(4,), name="c"))
    clock.advance(DELAY_S)

    assert ids(queue.take(clock())) == ["a"], "never skips b to take a later request"
    assert ids(queue.take(clock())) == ["b"]
    assert ids(queue.take(clock())) == ["c"]


def test_preferred_size_leaves_without_waiting(clock: FakeClock) -> None:
    queue = make_queue(clock, max_batch_size=16, preferred_batch_sizes=(4, 8))
    for index in range(3):
        queue.put(request(clock, name=f"r{index}"))
    assert not ready(queue, clock)

    for index in range(3, 6):
        queue.put(request(clock, name=f"r{index}"))

    assert ready(queue, clock)
    assert ids(queue.take(clock())) == ["r0", "r1", "r2", "r3"], "largest preferred size <= 6"
    assert len(queue) == 2


def test_largest_reachable_preferred_size_is_chosen(clock: FakeClock) -> None:
    queue = make_queue(clock, max_batch_size=16, preferred_batch_sizes=(2, 4, 8))
    for _ in range(9):
        queue.put(request(clock))

    assert len(queue.take(clock())) == 8


def test_below_every_preferred_size_the_delay_sends_everything(clock: FakeClock) -> None:
    queue = make_queue(clock, max_batch_size=16, preferred_batch_sizes=(4,))
    queue.put(request(clock))
    queue.put(request(clock))
    assert not ready(queue, clock)

    clock.advance(DELAY_S)

    assert ready(queue, clock)
    assert len(queue.take(clock())) == 2


def test_higher_priority_goes_first(clock: FakeClock) -> None:
    queue = make_queue(clock, priority_levels=3, default_priority_level=2)
    queue.put(request(clock, priority=3, name="low"))
    queue.put(request(clock, priority=0, name="default"))
    queue.put(request(clock, priority=1, name="high"))
    queue.put(request(clock, priority=2, name="mid"))
    clock.advance(DELAY_S)

    assert ids(queue.take(clock())) == ["high", "default", "mid", "low"]


def test_priority_order_holds_across_batches(clock: FakeClock) -> None:
    queue = make_queue(clock, max_batch_size=2, priority_levels=2, default_priority_level=2)
    queue.put(request(clock, priority=2, name="old-low"))
    queue.put(request(clock, priority=2, name="low"))
    queue.put(request(clock, priority=1, name="high"))

    assert ids(queue.take(clock())) == ["high", "old-low"]
    assert ids(queue.take(clock())) == ["low"]


def test_level_for_maps_default_and_clamps(clock: FakeClock) -> None:
    assert make_queue(clock).level_for(5) == 0
    queue = make_queue(clock, priority_levels=3, default_priority_level=2)
    assert queue.level_for(0) == 1
    assert queue.level_for(1) == 0
    assert queue.level_for(9) == 2


def test_full_queue_refuses_at_once(clock: FakeClock) -> None:
    queue = make_queue(clock, default_queue_policy=QueuePolicy(max_queue_size=2))
    queue.put(request(clock))
    queue.put(request(clock))

    with pytest.raises(ResourceExhausted, match="full"):
        queue.put(request(clock))
    assert len(queue) == 2
    assert queue.rows == 2


def test_queue_size_limit_is_per_priority_level(clock: FakeClock) -> None:
    queue = make_queue(
        clock,
        priority_levels=2,
        default_priority_level=2,
        priority_queue_policy={1: QueuePolicy(max_queue_size=1)},
    )
    queue.put(request(clock, priority=1))
    for _ in range(5):
        queue.put(request(clock, priority=2))

    with pytest.raises(ResourceExhausted, match="priority 1"):
        queue.put(request(clock, priority=1))


def test_timed_out_requests_are_rejected(clock: FakeClock) -> None:
    queue = make_queue(clock, delay_s=1.0)
    queue.put(request(clock, timeout_s=0.005, name="short"))
    queue.put(request(clock, rows=2, name="patient"))

    assert queue.next_expiry(clock()) == pytest.approx(0.005)
    assert queue.next_batch_in(clock()) == pytest.approx(1.0)
    assert queue.pop_expired(clock() + 0.004) == []
    clock.advance(0.005)
    assert ids(queue.pop_expired(clock())) == ["short"]
    assert len(queue) == 1
    assert queue.rows == 2
    assert queue.pop_expired(clock()) == []


def test_delay_action_demotes_behind_everything(clock: FakeClock) -> None:
    queue = make_queue(
        clock,
        priority_levels=2,
        default_priority_level=1,
        default_queue_policy=QueuePolicy(reject_on_timeout=False),
    )
    queue.put(request(clock, priority=1, timeout_s=0.001, name="late"))
    queue.put(request(clock, priority=2, name="low"))
    queue.put(request(clock, priority=1, name="high"))
    clock.advance(0.002)

    assert queue.pop_expired(clock()) == []
    assert len(queue) == 3
    clock.advance(DELAY_S)
    assert ids(queue.take(clock())) == ["high", "low", "late"]


def test_demoted_request_never_expires_again(clock: FakeClock) -> None:
    queue = make_queue(clock, default_queue_policy=QueuePolicy(reject_on_timeout=False))
    queue.put(request(clock, timeout_s=0.001, name="late"))
    clock.advance(0.002)
    queue.pop_expired(clock())

    clock.advance(10.0)

    assert queue.pop_expired(clock()) == []
    assert ids(queue.take(clock())) == ["late"]


class GreedyPolicy:
    """A policy that asks for small batches and no waiting, to show the queue obeys its policy."""

    name = "greedy"

    def arrived(self, rows: int, now: float) -> None:
        return None

    def target(self, queued_rows: int, now: float) -> tuple[int, float]:
        return 2, 0.0

    def observe(self, rows: int, queue_seconds: float, service_seconds: float) -> None:
        return None


def test_queue_follows_its_policy_target(clock: FakeClock) -> None:
    queue = BatchQueue(8, BatchingSpec(enabled=True), GreedyPolicy(), clock)
    for _ in range(5):
        queue.put(request(clock))

    assert ready(queue, clock)
    assert [len(queue.take(clock())) for _ in range(3)] == [2, 2, 1]


def test_policy_target_is_capped_by_max_batch_size(clock: FakeClock) -> None:
    spec = BatchingSpec(enabled=True)
    queue = BatchQueue(2, spec, FixedPolicy(100, 1.0), clock)
    for _ in range(3):
        queue.put(request(clock))

    assert ready(queue, clock)
    assert len(queue.take(clock())) == 2


class FakeSaturation:
    """The front door's saturation as a test sets it."""

    def __init__(self, saturated: bool = True) -> None:
        self.saturated = saturated


def coalescing_queue(
    clock: FakeClock, window_s: float | None = 0.008, saturated: bool = True
) -> BatchQueue:
    """No queue delay (Triton's rule sends at once), coalescing on, the front door saturated
    unless told otherwise."""
    return make_queue(
        clock,
        max_batch_size=16,
        delay_s=0.0,
        coalesce_window_s=window_s,
        saturation=FakeSaturation(saturated),
    )


def arrive_every(queue: BatchQueue, clock: FakeClock, gap_s: float, count: int) -> None:
    for _ in range(count):
        clock.advance(gap_s)
        queue.put(request(clock))


def drain(queue: BatchQueue, clock: FakeClock) -> None:
    while queue.take(clock()):
        pass


def test_coalescing_holds_a_batch_while_dense_arrivals_continue(clock: FakeClock) -> None:
    queue = coalescing_queue(clock)
    arrive_every(queue, clock, 0.0005, 60)  # 0.5 ms apart; dense means under 1 ms (window / 8)
    drain(queue, clock)
    arrive_every(queue, clock, 0.0005, 3)

    assert not ready(queue, clock)
    hold = queue.next_batch_in(clock())
    assert hold == pytest.approx(2 * queue.coalescing.mean_gap_s)
    arrive_every(queue, clock, 0.0005, 2)
    assert not ready(queue, clock)
    clock.advance(2 * queue.coalescing.mean_gap_s)  # no arrival for two mean gaps: a pause
    assert ready(queue, clock)
    assert len(queue.take(clock())) == 5


def test_coalescing_lets_a_half_full_batch_leave(clock: FakeClock) -> None:
    queue = coalescing_queue(clock)
    arrive_every(queue, clock, 0.0005, 60)
    drain(queue, clock)
    arrive_every(queue, clock, 0.0005, 7)
    assert not ready(queue, clock)

    arrive_every(queue, clock, 0.0005, 1)  # 8 of 16
    assert ready(queue, clock)


def test_coalescing_never_holds_longer_than_the_window(clock: FakeClock) -> None:
    queue = coalescing_queue(clock, window_s=0.008)
    arrive_every(queue, clock, 0.0005, 60)
    drain(queue, clock)
    clock.advance(0.0005)
    queue.put(request(clock, dims=(5,)))  # a shape of its own: its batch never fills up
    first = clock()
    for _ in range(100):  # 50 ms of arrivals at most
        if ready(queue, clock):
            break
        arrive_every(queue, clock, 0.0005, 1)

    assert clock() - first == pytest.approx(0.008)
    assert [r.shape_key for r in queue.take(clock())] == [((5,),)]


def test_coalescing_lets_a_lone_request_leave_at_once(clock: FakeClock) -> None:
    queue = coalescing_queue(clock)
    arrive_every(queue, clock, 0.004, 60)  # one client, a round trip (4 ms) apart
    drain(queue, clock)
    clock.advance(0.004)
    queue.put(request(clock))

    assert ready(queue, clock)


def test_without_a_window_a_batch_leaves_at_once_however_dense(clock: FakeClock) -> None:
    queue = coalescing_queue(clock, window_s=0.0)
    arrive_every(queue, clock, 0.0001, 60)
    drain(queue, clock)
    arrive_every(queue, clock, 0.0001, 3)

    assert ready(queue, clock)


def test_coalescing_never_holds_below_saturation(clock: FakeClock) -> None:
    queue = coalescing_queue(clock, saturated=False)
    arrive_every(queue, clock, 0.0005, 60)  # as dense as where a saturated front door holds
    drain(queue, clock)
    arrive_every(queue, clock, 0.0005, 3)

    assert ready(queue, clock)


def test_coalescing_follows_saturation_as_it_changes(clock: FakeClock) -> None:
    queue = coalescing_queue(clock, saturated=False)
    arrive_every(queue, clock, 0.0005, 60)
    drain(queue, clock)
    arrive_every(queue, clock, 0.0005, 3)
    assert ready(queue, clock)

    queue.coalescing.saturation.saturated = True  # type: ignore[misc]
    assert not ready(queue, clock)


def test_an_automatic_window_holds_nothing_until_a_round_trip_is_measured(
    clock: FakeClock,
) -> None:
    queue = coalescing_queue(clock, window_s=None)
    arrive_every(queue, clock, 0.0005, 60)
    drain(queue, clock)
    arrive_every(queue, clock, 0.0005, 3)
    assert ready(queue, clock)

    queue.coalescing.observe_round_trip(0.008)
    hold = queue.next_batch_in(clock())
    assert hold == pytest.approx(2 * queue.coalescing.mean_gap_s)


def test_an_automatic_window_is_the_measured_round_trip(clock: FakeClock) -> None:
    queue = coalescing_queue(clock, window_s=None)
    queue.coalescing.observe_round_trip(0.004)
    arrive_every(queue, clock, 0.0001, 60)
    drain(queue, clock)
    clock.advance(0.0001)
    queue.put(request(clock, dims=(5,)))  # a shape of its own: its batch never fills up
    first = clock()
    for _ in range(100):
        if ready(queue, clock):
            break
        arrive_every(queue, clock, 0.0001, 1)

    assert clock() - first == pytest.approx(0.004)


def test_a_pinned_window_ignores_the_measured_round_trip() -> None:
    coalescing = Coalescing(0.008, FakeSaturation())
    coalescing.observe_round_trip(0.002)

    assert coalescing.window_s == 0.008


def test_a_negative_window_is_refused() -> None:
    with pytest.raises(ValueError, match="window_s must be >= 0"):
        Coalescing(-0.001, FakeSaturation())
