"""Admission: whether a request may join its model's queue, decided before it does, from how
long the queue ahead of it will take to drain.

A request is refused at once, with RESOURCE_EXHAUSTED so that its client backs off, when
- its queue is full: at its priority level's max_queue_size, or at the batcher-wide
  max_queue_rows_default for a model that sets none. `BatchQueue.put` checks that bound as it
  takes the request, because the queue is what counts its levels and rows;
- it cannot leave the queue before its deadline or queue timeout (`Admission.admit`): queued,
  it would only expire there, after holding a place the whole time.

The expected wait is priced from the measured round trips of the model's batches
(`RoundTrips`), which the scheduler feeds as each batch comes back; its just-in-time gate reads
the same estimate for the hops down to a worker.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from services.batcher.batching import PendingRequest
from services.batcher.policies import MeasuredCurve
from tideserve.errors import ResourceExhausted

# Smoothing of the measured batch round trip that predicts a new request's queue wait, and of the
# hops' share of it.
ROUND_TRIP_ALPHA = 0.2
# A request is admitted only if its predicted wait fits this share of its deadline: under overload
# every admitted request sits at the admission boundary, so without headroom the prediction's
# error alone makes many of them expire in the queue.
ADMISSION_HEADROOM = 0.8
# Batches to measure before predicted waits refuse anyone: the first after a start are
# unrepresentative (one-row batches, the model's first calls), and one such 0.5 s round trip
# predicted 8 s of work behind 15 queued rows of a model that serves them in one batch.
ADMISSION_MIN_BATCHES = 8


class RoundTrips:
    """The smoothed round trip of a model's dispatched batches, their rows (what the queue drains
    per round trip) and the hops down to a worker (half the round trip beyond the worker's own
    queue and compute: how early a just-in-time batch leaves)."""

    def __init__(self) -> None:
        self.seconds: float | None = None
        self.rows = 0.0
        self.hop_down_s = 0.0
        self.measured = 0

    def observe(self, rows: int, seconds: float, hops_s: float = 0.0) -> None:
        """A batch of `rows` came back `seconds` after it left, `hops_s` of them outside the
        worker's queue and compute."""
        self.measured += 1
        if self.seconds is None:
            self.seconds, self.rows = seconds, float(rows)
            self.hop_down_s = hops_s / 2
            return
        self.seconds += ROUND_TRIP_ALPHA * (seconds - self.seconds)
        self.rows += ROUND_TRIP_ALPHA * (rows - self.rows)
        self.hop_down_s += ROUND_TRIP_ALPHA * (hops_s / 2 - self.hop_down_s)


class QueueDepth(Protocol):
    """What admission reads of a queue (BatchQueue)."""

    rows: int

    def rows_ahead(self, priority: int) -> int:
        """Rows that leave before a new request of this priority."""
        ...


# The batching policy's answer for a queue of this many rows now: (target rows, max wait).
BatchTarget = Callable[[int, float], tuple[int, float]]


class Admission:
    """Deadline admission for one model's queue. `target` is its batching policy's (the size
    a backlog leaves in), `instances` the model instances over all ready workers (the batches
    that drain the queue side by side)."""

    def __init__(
        self,
        model: str,
        round_trips: RoundTrips,
        curve: MeasuredCurve,
        target: BatchTarget,
        max_batch_size: int,
        instances: Callable[[], int],
        clock: Callable[[], float],
    ) -> None:
        self.model = model
        self.round_trips = round_trips
        self.curve = curve
        self.target = target
        self.max_batch_size = max_batch_size
        self.instances = instances
        self.clock = clock

    def admit(self, request: PendingRequest, queue: QueueDepth) -> None:
        """Refuse a request that cannot leave `queue` before its deadline or queue timeout;
        return quietly otherwise. A request without either, or one joining an empty queue, is
        always admitted."""
        limits = [t for t in (request.deadline, request.expires) if t is not None]
        if not limits or not queue.rows:
            return
        budget = min(limits) - request.arrival
        wait = self.expected_wait(queue.rows_ahead(request.priority))
        if wait > ADMISSION_HEADROOM * budget:
            raise ResourceExhausted(
                f"the queue for model {self.model!r} holds about {wait * 1000:.0f} ms "
                f"of work, too much for this request's {budget * 1000:.0f} ms deadline; retry "
                "after a back-off, with a longer deadline, or add workers"
            )

    def expected_wait(self, rows_ahead: int) -> float:
        """Seconds until `rows_ahead` queued rows have left and a batch holding one more has come
        back, spread over the dispatch slots. Measured round trips rather than the workers'
        compute curve alone: the hops and the gaps between batches count too, and the
        compute-only estimate let queues grow past 1 s deadlines until nearly every request
        expired in them (bench/overload.py --timeout-s 1: 12% goodput). 0 until
        ADMISSION_MIN_BATCHES batches have come back.

        A backlog leaves in batches as large as the policy allows, which cost more than the
        recent (smaller) ones but less per row where the curve has a fixed part: with the
        measured t(b) = a + c*b, each batch ahead costs t(its size) plus the recent round trip's
        excess over t(recent size). Without a curve, every row costs the recent round trip's
        share: after one-row batches, that prices a backlog as one batch per row."""
        trips = self.round_trips
        if trips.seconds is None or trips.measured < ADMISSION_MIN_BATCHES:
            return 0.0
        slots = max(self.instances(), 1)
        fit = self.curve.fit()
        if fit is None:
            batches = rows_ahead / max(trips.rows, 1.0) + 1.0
            return batches * trips.seconds / slots
        fixed, per_row = fit
        overhead = max(trips.seconds - (fixed + per_row * trips.rows), 0.0)
        size, _ = self.target(rows_ahead + 1, self.clock())
        size = max(min(size, self.max_batch_size), 1)
        full, rest = divmod(rows_ahead + 1, size)
        seconds = full * (fixed + per_row * size + overhead)
        if rest:
            seconds += fixed + per_row * rest + overhead
        return seconds / slots
