"""Dynamic batch formation, without gRPC or asyncio: a per-model queue that decides, at a given
instant, whether a batch should leave and which requests it holds.

Semantics follow Triton's dynamic batcher:
- a batch leaves once it can be full (max batch size, or the largest preferred size reachable),
  or once its oldest request has waited the maximum queue delay (from the batching policy);
- requests of a higher priority level (lower number) go first; within a level, arrival order;
- a queue holds at most `max_queue_size` requests, later ones are refused at once; a model that
  sets none is bounded by the batcher-wide `default_max_rows` instead, so overload is shed at
  once with RESOURCE_EXHAUSTED rather than queued without bound (which would make every request
  late: congestion collapse);
- a request whose queue timeout passes before it leaves is rejected (or, with the DELAY action,
  demoted behind every other request).
Whether a batch may leave *now* is also gated by the caller on free dispatch capacity: while every
worker is busy the queue keeps growing, so batches grow under load instead of by idling.

One addition to Triton's rule: while the front door is saturated, a batch short of its target that
could leave stays while requests keep arriving close together (`Coalescing`; a model's
`coalesce_window_us` pins its window, 0 turns it off).
"""

from __future__ import annotations

import asyncio
import bisect
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from services.batcher.policies import BatchPolicy
from services.batcher.saturation import NEVER_SATURATED, Saturation
from tideserve.errors import ResourceExhausted
from tideserve.modelconfig import BatchingSpec, QueuePolicy


class DeferredInput(Protocol):
    """An input's bytes left where the client put them (a shared-memory region) until the
    batch is assembled, and read then straight into the batch."""

    def __len__(self) -> int: ...

    def read(self) -> bytes:
        """The bytes; a TideserveError when they can no longer be read."""
        ...

    def read_into(self, target: memoryview) -> None:
        """Fill `target`, exactly len(self) bytes; a TideserveError when they can no longer
        be read."""
        ...


RawInput = bytes | DeferredInput


@dataclass(eq=False)
class PendingRequest:
    """One client request waiting in a queue. `inputs` are raw bytes in the model's input order."""

    request_id: str
    rows: int
    # Raw bytes per input; deferred where the input lies in a client's shared-memory region.
    inputs: list[RawInput]
    # Per-row dims of each input: only requests with equal dims can share a batch.
    shape_key: tuple[tuple[int, ...], ...]
    output_names: tuple[str, ...]
    arrival: float
    priority: int = 0
    # Queue timeout (monotonic); a request still queued then is rejected. None: no timeout.
    expires: float | None = None
    # The client's own deadline (monotonic), used to bound the downstream call.
    deadline: float | None = None
    future: asyncio.Future | None = field(default=None, repr=False)


class Coalescing:
    """Holds a batch that could leave while the front door is saturated and requests keep
    arriving close together, for at most a window from its oldest request.

    When the front door's CPU is the bottleneck (mlp at concurrency 64: the batcher's event loop
    busy, the machine 88% busy), every batch costs CPU the requests need (the batcher's call
    down, the balancer's and the worker's per-batch work: about 2 ms beyond mlp's compute), and
    a batch sent the moment a slot frees holds what happened to be parsed by then (10 rows).
    Waiting for a dense stream of arrivals to pause made batches of 15 and served 1.06-1.28x
    the requests a second (alternating pairs), p99 no worse (docs/performance/batching.md).

    Below saturation holding only costs: at concurrency 16 (requests 0.8 ms apart, the loop not
    yet the bottleneck) each wave waited for company that did not come, for 17% less
    throughput. The density of arrivals alone cannot tell the two apart, so a batch stays only
    while `saturation` says the front door is saturated (saturation.py); a lone client's
    requests, a round trip apart, are far sparser than the density gate besides, and leave at
    once.

    `window_s`: None (the default) for one batch round trip as the scheduler measures it
    (`observe_round_trip`): about what holding gains, since the batch leaving now would come
    back no sooner than that, and holding longer leaves a worker idle past it; nothing is held
    until a round trip is measured. A positive value pins the window; 0 turns coalescing off."""

    # Arrivals are dense when they come on average at most this share of the window apart.
    DENSE_SHARE = 1 / 8
    # The stream has paused once this many mean gaps pass without an arrival.
    QUIET_GAPS = 2.0
    # Weight of the newest gap in the mean.
    GAP_ALPHA = 0.1
    # A batch this share of its target size or more leaves without company: it amortises the
    # per-batch cost well enough, and holding it keeps a free worker idle. On a stream (mlp
    # c=64: batches of 32 of 64) the batch queued when one returns then leaves before that
    # one's responses are written (core.py, _release_before_answering) instead of after them:
    # holding every batch cut the stream to 2,117-2,400 infer/s in the bench from 2,519-2,817.
    FULL_ENOUGH = 0.5

    def __init__(self, window_s: float | None, saturation: Saturation) -> None:
        if window_s is not None and window_s < 0:
            raise ValueError("window_s must be >= 0 (0 = off) or None (automatic)")
        self.pinned_s = window_s
        self.saturation = saturation
        self.window_s = window_s or 0.0
        self.mean_gap_s: float | None = None
        self.last_arrival: float | None = None

    def observe_round_trip(self, seconds: float) -> None:
        """The scheduler's smoothed batch round trip: the window, unless it is pinned."""
        if self.pinned_s is None:
            self.window_s = seconds

    def arrived(self, now: float) -> None:
        if self.last_arrival is not None:
            gap = now - self.last_arrival
            if self.window_s:
                # Capped at the window, so an idle spell reads as "sparse" without outweighing
                # the next burst for long.
                gap = min(gap, self.window_s)
            if self.mean_gap_s is None:
                self.mean_gap_s = gap
            else:
                self.mean_gap_s += self.GAP_ALPHA * (gap - self.mean_gap_s)
        self.last_arrival = now

    def hold_until(self, oldest_arrival: float, now: float, rows: int, target: int) -> float | None:
        """When a batch of `rows` (of `target`) whose oldest request arrived at `oldest_arrival`
        may leave, if it should stay now; None if it need not wait."""
        window, mean_gap = self.window_s, self.mean_gap_s
        if not window or mean_gap is None or self.last_arrival is None:
            return None
        if rows >= self.FULL_ENOUGH * target or mean_gap > self.DENSE_SHARE * window:
            return None
        if not self.saturation.saturated:
            return None
        until = min(self.last_arrival + self.QUIET_GAPS * mean_gap, oldest_arrival + window)
        return until if until > now else None


class BatchQueue:
    def __init__(
        self,
        max_batch_size: int,
        batching: BatchingSpec,
        policy: BatchPolicy,
        clock: Callable[[], float],
        default_max_rows: int = 0,
        coalesce_window_s: float | None = 0.0,
        saturation: Saturation | None = None,
    ) -> None:
        if default_max_rows < 0:
            raise ValueError("default_max_rows must be >= 0 (0 = unbounded)")
        self.max_batch_size = max(max_batch_size, 1)
        self.default_max_rows = default_max_rows
        self.batching = batching
        self.policy = policy
        self.clock = clock
        self.coalescing = Coalescing(coalesce_window_s, saturation or NEVER_SATURATED)
        levels = max(batching.priority_levels, 1)
        # Level i+1 of the config lives at index i; index `levels` holds DELAY-demoted requests.
        self._levels: list[deque[PendingRequest]] = [deque() for _ in range(levels + 1)]
        self.count = 0
        self.rows = 0

    def __len__(self) -> int:
        return self.count

    def queue_policy(self, level: int) -> QueuePolicy:
        return self.batching.priority_queue_policy.get(level, self.batching.default_queue_policy)

    def level_for(self, priority: int) -> int:
        """Config priority (1 = highest; 0 = default) -> queue index."""
        if self.batching.priority_levels == 0:
            return 0
        if priority == 0:
            priority = self.batching.default_priority_level
        return min(priority, self.batching.priority_levels) - 1

    def put(self, request: PendingRequest) -> None:
        level = self.level_for(request.priority)
        limit = self.queue_policy(level + 1).max_queue_size
        if limit and len(self._levels[level]) >= limit:
            raise ResourceExhausted(
                f"queue for this model is full ({limit} requests at priority {level + 1}); "
                "retry later or lower the request rate"
            )
        bound = self.default_max_rows
        # An empty queue takes any request, so one larger than the bound is not refused forever.
        if not limit and bound and self.rows and self.rows + request.rows > bound:
            raise ResourceExhausted(
                f"the batcher is overloaded: {self.rows} rows already queue for this model "
                f"(limit {bound}, max_queue_rows_default). Retry after a back-off, send to "
                "another batcher, or add workers; set max_queue_size in the model config to "
                "bound this model's queue differently"
            )
        self._levels[level].append(request)
        self.count += 1
        self.rows += request.rows
        self.policy.arrived(request.rows, request.arrival)
        self.coalescing.arrived(request.arrival)

    def rows_ahead(self, priority: int) -> int:
        """Rows that leave before a new request of this priority: its level and higher ones."""
        if self.batching.priority_levels == 0:
            return self.rows
        level = self.level_for(priority)
        return sum(r.rows for queue in self._levels[: level + 1] for r in queue)

    def pop_expired(self, now: float) -> list[PendingRequest]:
        """Remove and return requests whose queue timeout passed (REJECT); demote DELAY ones."""
        expired: list[PendingRequest] = []
        for index, level in enumerate(self._levels[:-1]):
            if not any(r.expires is not None and r.expires <= now for r in level):
                continue
            keep: deque[PendingRequest] = deque()
            reject = self.queue_policy(index + 1).reject_on_timeout
            for request in level:
                if request.expires is None or request.expires > now:
                    keep.append(request)
                elif reject:
                    expired.append(request)
                    self.count -= 1
                    self.rows -= request.rows
                else:
                    request.expires = None
                    self._levels[-1].append(request)
            self._levels[index] = keep
        return expired

    def remove_if(self, predicate: Callable[[PendingRequest], bool]) -> list[PendingRequest]:
        """Remove and return the queued requests `predicate` picks, keeping the others' order."""
        removed: list[PendingRequest] = []
        for index, level in enumerate(self._levels):
            if not any(predicate(r) for r in level):
                continue
            keep: deque[PendingRequest] = deque()
            for request in level:
                (removed if predicate(request) else keep).append(request)
            self._levels[index] = keep
        self.count -= len(removed)
        self.rows -= sum(r.rows for r in removed)
        return removed

    def __iter__(self) -> Iterator[PendingRequest]:
        for level in self._levels:
            yield from level

    def _oldest(self) -> PendingRequest | None:
        heads = [level[0] for level in self._levels if level]
        return min(heads, key=lambda r: r.arrival, default=None)

    def _batch_rows(self, target: int) -> int:
        """Rows the next batch would hold if it left now (same-shape prefix, up to target)."""
        rows = 0
        key = None
        for level in self._levels:
            for request in level:
                if key is None:
                    key = request.shape_key
                elif request.shape_key != key or rows + request.rows > target:
                    return rows
                rows += request.rows
                if rows >= target:
                    return rows
        return rows

    def _goal(self, target: int, available: int) -> int:
        """Rows the next batch should hold: the target if reachable, else the largest preferred
        size that is reachable, else everything available."""
        if available >= target:
            return target
        index = bisect.bisect_right(self.batching.preferred_batch_sizes, available)
        return self.batching.preferred_batch_sizes[index - 1] if index else target

    def next_batch_in(self, now: float) -> float | None:
        """Seconds until a batch should leave (given free capacity): 0.0 for now, else until that
        may change without a new arrival; None if the queue is empty. Queue timeouts are
        `next_expiry`'s. One method answers both, so a scheduler wake computes the policy target
        and the batch's rows once."""
        oldest = self._oldest()
        if oldest is None:
            return None
        target, max_wait = self.policy.target(self.rows, now)
        goal = min(target, self.max_batch_size)
        available = self._batch_rows(goal)
        preferred = self.batching.preferred_batch_sizes
        if available >= goal or (preferred and available >= preferred[0]):
            return 0.0
        leaves = oldest.arrival + max_wait
        hold = self.coalescing.hold_until(oldest.arrival, max(leaves, now), available, goal)
        return max((leaves if hold is None else hold) - now, 0.0)

    def next_expiry(self, now: float) -> float | None:
        """Seconds until the earliest queue timeout, or None if no queued request has one."""
        expiries = [r.expires for lvl in self._levels for r in lvl if r.expires is not None]
        return max(min(expiries) - now, 0.0) if expiries else None

    def take(self, now: float) -> list[PendingRequest]:
        """Remove and return the next batch: highest priority first, in arrival order, requests of
        the first one's shape only, up to the goal size. Never skips a request for a later one."""
        target, _ = self.policy.target(self.rows, now)
        target = min(target, self.max_batch_size)
        goal = self._goal(target, self._batch_rows(target))
        batch: list[PendingRequest] = []
        rows = 0
        key = None
        for level in self._levels:
            while level and rows < goal:
                request = level[0]
                if key is not None and (request.shape_key != key or rows + request.rows > goal):
                    return self._taken(batch, rows)
                key = request.shape_key
                level.popleft()
                batch.append(request)
                rows += request.rows
        return self._taken(batch, rows)

    def _taken(self, batch: list[PendingRequest], rows: int) -> list[PendingRequest]:
        self.count -= len(batch)
        self.rows -= rows
        return batch
