"""Admission alone, without a scheduler or an event loop: the round-trip estimate, the expected
wait it prices a backlog at, and which requests are admitted or refused before queueing."""

from __future__ import annotations

import pytest

from services.batcher.admission import (
    ADMISSION_MIN_BATCHES,
    Admission,
    RoundTrips,
)
from services.batcher.batching import PendingRequest
from services.batcher.policies import MeasuredCurve
from tideserve.errors import ResourceExhausted

NOW = 1000.0


class FakeQueue:
    """Queued rows, the same for every priority."""

    def __init__(self, rows: int) -> None:
        self.rows = rows

    def rows_ahead(self, priority: int) -> int:
        return self.rows


def measured(round_trip_s: float, rows: int, batches: int = ADMISSION_MIN_BATCHES) -> RoundTrips:
    trips = RoundTrips()
    for _ in range(batches):
        trips.observe(rows, round_trip_s)
    return trips


def admission(
    trips: RoundTrips,
    curve: dict[int, float] | None = None,
    *,
    target: int = 16,
    max_batch_size: int = 16,
    instances: int = 1,
) -> Admission:
    return Admission(
        "m",
        trips,
        MeasuredCurve(lambda: curve or {}),
        lambda rows, now: (target, 0.0),
        max_batch_size,
        lambda: instances,
        lambda: NOW,
    )


def request(deadline_s: float | None = None, timeout_s: float | None = None) -> PendingRequest:
    return PendingRequest(
        request_id="r",
        rows=1,
        inputs=[b"\0" * 4],
        shape_key=((1,),),
        output_names=(),
        arrival=NOW,
        expires=None if timeout_s is None else NOW + timeout_s,
        deadline=None if deadline_s is None else NOW + deadline_s,
    )


def test_round_trips_start_at_the_first_and_then_smooth() -> None:
    trips = RoundTrips()
    assert trips.seconds is None
    trips.observe(4, 0.100, hops_s=0.010)
    assert (trips.seconds, trips.rows, trips.hop_down_s) == (0.100, 4.0, 0.005)
    trips.observe(9, 0.200, hops_s=0.030)
    assert trips.seconds == pytest.approx(0.100 + 0.2 * 0.100)
    assert trips.rows == pytest.approx(4 + 0.2 * 5)
    assert trips.hop_down_s == pytest.approx(0.005 + 0.2 * 0.010)
    assert trips.measured == 2


def test_a_backlog_is_priced_in_the_batches_it_will_leave_in() -> None:
    """With the workers' curve t(b) = 40 ms + 1 ms x b, 40 queued rows of a max-16 model leave
    as 16 + 16 + 9 (its own row last): 3 x 40 ms + 41 ms of compute, plus each batch's share of
    the hops (the measured 60 ms round trip of 4-row batches minus their 44 ms compute)."""
    curve = {1: 0.041, 4: 0.044, 16: 0.056}
    trips = measured(0.060, rows=4, batches=ADMISSION_MIN_BATCHES - 1)
    gate = admission(trips, curve)
    assert gate.expected_wait(40) == 0.0, "still measuring: nothing refused yet"

    trips.observe(4, 0.060)
    assert gate.expected_wait(40) == pytest.approx(3 * 0.040 + 0.041 + 3 * 0.016)
    # Without a curve every row costs its share of the round trip: 41 rows / 4 x 60 ms.
    assert admission(trips).expected_wait(40) == pytest.approx((40 / 4 + 1) * 0.060)


def test_the_wait_is_spread_over_the_instances_and_capped_at_the_max_batch() -> None:
    trips = measured(0.060, rows=4)
    one = admission(trips).expected_wait(40)
    assert admission(trips, instances=2).expected_wait(40) == pytest.approx(one / 2)
    curve = {1: 0.041, 16: 0.056}
    # A policy target above the model's maximum still leaves in batches of 16.
    assert admission(trips, curve, target=64).expected_wait(40) == pytest.approx(
        admission(trips, curve, target=16).expected_wait(40)
    )


def test_a_request_that_cannot_leave_before_its_deadline_is_refused() -> None:
    # 40 rows ahead without a curve: (40 / 4 + 1) x 60 ms = 660 ms of work.
    gate = admission(measured(0.060, rows=4))

    with pytest.raises(ResourceExhausted, match=r"about 660 ms of work, too much for .* 500 ms"):
        gate.admit(request(deadline_s=0.5), FakeQueue(40))
    # A queue timeout bounds the wait as a deadline does: 0.8 x 700 ms < 660 ms.
    with pytest.raises(ResourceExhausted, match="too much for this request's 700 ms deadline"):
        gate.admit(request(timeout_s=0.7), FakeQueue(40))


@pytest.mark.parametrize(
    ("deadline_s", "timeout_s", "queued"),
    [
        (1.0, None, 40),  # 660 ms fits 0.8 x 1 s
        (None, None, 40),  # nothing to miss
        (0.001, None, 0),  # an empty queue takes anyone
        (None, 0.9, 40),  # a queue timeout counts as the deadline does
    ],
)
def test_a_request_that_fits_is_admitted(
    deadline_s: float | None, timeout_s: float | None, queued: int
) -> None:
    gate = admission(measured(0.060, rows=4))
    gate.admit(request(deadline_s, timeout_s), FakeQueue(queued))


def test_before_enough_batches_return_nothing_is_refused() -> None:
    gate = admission(measured(10.0, rows=1, batches=ADMISSION_MIN_BATCHES - 1))
    gate.admit(request(deadline_s=0.001), FakeQueue(1000))
