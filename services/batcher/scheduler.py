"""Batch formation and dispatch for one model: the scheduler's loop takes a batch from the
queue when the batching policy says one should leave and a model instance is free for it, sends
it downstream and hands each request its share of the result.

One decision, in order (`ModelScheduler._decide`, by the loop or by `submit` for an idle model):
1. fail the requests whose queue timeout passed;
2. while no balancer is reachable, hold the queue (up to each request's deadline, or `hold_s`);
3. wait while every dispatch slot (`capacity`: instances x depth) holds a batch;
4. with a batch already on every instance, wait for the just-in-time gate: the moment the first
   instance to free is that close to freeing that a batch sent now reaches it then;
5. ask the queue (batching.py, with the policy of policies.py) whether a batch should leave now.
A batch that leaves is sent on a task of its own (`_execute`): its payload is built by wire.py,
through shared memory when the workers see ours (a large batch's copy on a thread, off the event
loop); the result is split back by wire.py, and the round trip is measured for admission
(admission.py) and the gate.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
from collections.abc import Callable
from typing import Protocol, TypeVar

from services.batcher import wire
from services.batcher.admission import Admission, RoundTrips
from services.batcher.batching import BatchQueue, PendingRequest
from services.batcher.catalog import CatalogEntry
from services.batcher.links import BalancerLinks
from services.batcher.pipelining import Booking, InstanceTimeline
from services.batcher.policies import MeasuredCurve, ServiceCurve, create_policy
from services.batcher.saturation import ClosedLoop
from tideserve import shared_memory
from tideserve.errors import (
    BalancerUnreachable,
    DeadlineExceeded,
    FailedPrecondition,
    TideserveError,
)
from tideserve.v1 import cluster_pb2

logger = logging.getLogger(__name__)

# How long a request without a deadline waits for a balancer while none is reachable (the
# default of BatcherSettings.balancer_hold_s): a supervised balancer restarts, and its workers
# register again, in a few seconds.
BALANCER_HOLD_S = 10.0

Result = TypeVar("Result")


class BatchDispatcher(Protocol):
    async def dispatch(
        self, model: str, rows: int, payload: bytes, timeout: float | None, batch_id: str = ""
    ) -> bytes:
        """Send serialized Batch bytes downstream; return serialized BatchResult bytes.
        `batch_id` travels beside the payload so the hops can log it without parsing."""
        ...


class BatchMetrics(Protocol):
    def batch_served(
        self,
        model: str,
        version: str,
        rows: int,
        queue_waits: list[float],
        result: cluster_pb2.BatchResult,
    ) -> None:
        """A batch came back with a result; `queue_waits`: its requests' waits in our queue."""
        ...

    def batch_done(self, model: str, rows: int, queue_wait_s: float, dispatch_s: float) -> None:
        """A batch came back (or failed): its rows, its oldest request's queue wait, and the
        round trip of the dispatch."""
        ...


class NoMetrics:
    def batch_served(
        self,
        model: str,
        version: str,
        rows: int,
        queue_waits: list[float],
        result: cluster_pb2.BatchResult,
    ) -> None:
        pass

    def batch_done(self, model: str, rows: int, queue_wait_s: float, dispatch_s: float) -> None:
        pass


class Segments(Protocol):
    """Shared-memory segments for a batch's inputs (core.SharedInputs)."""

    def acquire(self, model: str, nbytes: int) -> shared_memory.Segment | None:
        """A segment to put this batch in, or None to send it inline."""
        ...

    async def fill(self, nbytes: int, write: Callable[[], Result]) -> Result:
        """`write()`, which copies the batch's `nbytes` of inputs into its segment, on or off
        the event loop; returns only once `write` has finished, even when cancelled."""
        ...

    def release(self, segment: shared_memory.Segment) -> None: ...


class ModelScheduler:
    """Owns the queue of one version of a model (`version`; empty: whichever is the latest
    when the batch reaches a worker, so a new version takes over without a request failing).
    A batch leaves when the queue says it is ready *and* a model
    instance (`instances()`, over all ready workers) is free for it, so batches grow while
    workers are busy, not by idling. With `depth` > 1, up to that many batches per instance
    are in flight: those beyond the first leave just in time for their instance
    (pipelining.py).

    Its loop runs from `start()` to `close()`, not from construction: the owner decides when a
    scheduler begins to take batches (BatcherCore starts each one as it creates it, on the
    model's first request), and building one needs no running event loop.

    ValueError from the constructor when the model config names an unknown batching policy
    (policies.create_policy)."""

    def __init__(
        self,
        entry: CatalogEntry,
        dispatcher: BatchDispatcher,
        instances: Callable[[], int],
        clock: Callable[[], float],
        curve: ServiceCurve = dict,
        metrics: BatchMetrics | None = None,
        max_queue_rows_default: int = 0,
        shared: Segments | None = None,
        depth: int = 1,
        links: BalancerLinks | None = None,
        hold_s: float = BALANCER_HOLD_S,
        version: str = "",
    ) -> None:
        self.entry = entry
        # The version named in each Batch for the worker.
        self.version = version
        # Batches leave only while some balancer is reachable; None: always (unit tests).
        self.links = links
        self.hold_s = hold_s
        self.metrics = metrics or NoMetrics()
        spec = entry.spec
        # Variable-length BYTES tensors are re-encoded per request; only fixed-size ones share.
        self.shared = shared if all(t.datatype != "BYTES" for t in spec.inputs) else None
        self.policy = create_policy(spec, curve)
        # Whether the front door is saturated, for coalescing (batching.py): told the count of
        # outstanding requests, queued or in a batch in flight, as it changes.
        self.closed_loop = ClosedLoop()
        self._inflight_requests = 0
        self.queue = BatchQueue(
            spec.max_batch_size,
            spec.batching,
            self.policy,
            clock,
            max_queue_rows_default,
            spec.coalesce_window_s,
            self.closed_loop,
        )
        self.dispatcher = dispatcher
        self.instances = instances
        self.depth = depth
        self.clock = clock
        self.curve = MeasuredCurve(curve)
        self.round_trips = RoundTrips()
        self.admission = Admission(
            spec.name,
            self.round_trips,
            self.curve,
            self.policy.target,
            self.queue.max_batch_size,
            instances,
            clock,
        )
        self.inflight = 0
        self.timeline = InstanceTimeline()
        self._wake = asyncio.Event()
        self._batch_ids = itertools.count()
        self._prefix = f"{os.getpid()}-{spec.name}-"
        # Strong references: the event loop keeps only weak ones to running tasks.
        self._batches: set[asyncio.Task] = set()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Begin taking batches, on the running event loop."""
        if self.links is not None:
            self.links.subscribe(self._wake.set)
        self._task = asyncio.get_running_loop().create_task(self._run())

    def close(self) -> None:
        if self._task is None:
            return
        if self.links is not None:
            self.links.unsubscribe(self._wake.set)
        self._task.cancel()

    def submit(self, request: PendingRequest) -> asyncio.Future:
        """Admit and queue `request` (RESOURCE_EXHAUSTED at once when it cannot be); the future
        resolves to its ModelInferResponse or fails with a TideserveError.

        A request reaching an idle model (nothing in flight) leaves from here when the queue
        says a batch should leave now, rather than a turn of the event loop later through the
        scheduler's loop: a lone request's latency is mostly such turns (each also runs every
        other callback that is ready). With a batch in flight the loop decides as before, so
        requests arriving together still share a batch."""
        self.admission.admit(request, self.queue)
        self.queue.put(request)
        request.future = asyncio.get_running_loop().create_future()
        self._outstanding_changed(request.arrival)
        if self.inflight == 0 and self._task is not None:
            decision = self._decide(self.clock())
            if isinstance(decision, list):
                self._dispatch(decision)
                if not self.queue:
                    return request.future
        self._wake.set()
        return request.future

    def _outstanding_changed(self, now: float) -> None:
        self.closed_loop.changed(self.queue.count + self._inflight_requests, now)

    def capacity(self) -> int:
        """Batches that may be in flight at once."""
        return self.instances() * self.depth

    async def _run(self) -> None:
        while True:
            self._dispatch(await self._next_batch())

    def _dispatch(self, batch: list[PendingRequest]) -> None:
        """Send `batch` on a task of its own."""
        self.inflight += 1
        self._inflight_requests += len(batch)
        booking = self.timeline.book(
            self.instances(), self.clock(), self.round_trips.hop_down_s, self._compute_s(batch)
        )
        task = asyncio.get_running_loop().create_task(self._execute(batch, booking))
        self._batches.add(task)
        task.add_done_callback(self._batches.discard)

    async def _wait(self, timeout: float | None) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    async def _next_batch(self) -> list[PendingRequest]:
        while True:
            decision = self._decide(self.clock())
            if isinstance(decision, list):
                return decision
            await self._wait(decision)

    def _decide(self, now: float) -> list[PendingRequest] | float | None:
        """The batch to send now, or else how long to wait before deciding again (None: until
        woken by an arrival or a freed slot)."""
        while True:
            for request in self.queue.pop_expired(now):
                _fail(
                    request,
                    DeadlineExceeded("request timed out in the queue before it was batched"),
                )
            if self.links is not None and not self.links.live:
                # No balancer to send to (one restarting): hold the queue rather than fail it.
                held = self._hold(self.links, now)
                return _earliest(held, self.queue.next_expiry(now))
            if self.inflight >= self.capacity():
                # Every slot is busy: wake for a freed slot, a new arrival or a queue timeout.
                return self.queue.next_expiry(now)
            if self.inflight >= self.instances():
                # Every instance has a batch: the next leaves when one is about to free.
                gate = self._just_in_time(now)
                if gate is None or gate > 0:
                    return _earliest(gate, self.queue.next_expiry(now))
            wait = self.queue.next_batch_in(now)
            if wait != 0.0:
                return _earliest(wait, self.queue.next_expiry(now))
            batch = [r for r in self.queue.take(now) if self._still_wanted(r, now)]
            if batch:
                return batch

    def _hold(self, links: BalancerLinks, now: float) -> float | None:
        """While no balancer is reachable, fail the queued requests whose wait for one is over:
        at their deadline, or `hold_s` after they began to wait (arrival, or the loss of the last
        balancer if later) when they have none. Returns seconds until the next such end."""
        lost = now if links.down_since is None else links.down_since

        def held_until(request: PendingRequest) -> float:
            if request.deadline is not None:
                return request.deadline
            return max(request.arrival, lost) + self.hold_s

        for request in self.queue.remove_if(lambda r: held_until(r) <= now):
            if request.deadline is not None:
                _fail(
                    request,
                    DeadlineExceeded(
                        f"deadline passed while the request waited for a balancer: "
                        f"{links.unreachable()}"
                    ),
                )
            else:
                _fail(
                    request,
                    BalancerUnreachable(
                        f"{links.unreachable()} (held the request {self.hold_s:g} s for one to "
                        "return; set a deadline or the batcher's balancer_hold_s to wait longer)"
                    ),
                )
        return _earliest(*(held_until(r) - now for r in self.queue))

    def _compute_s(self, batch: list[PendingRequest]) -> float:
        fit = self.curve.fit()
        if fit is None:
            return 0.0
        fixed, per_row = fit
        return fixed + per_row * sum(r.rows for r in batch)

    def _just_in_time(self, now: float) -> float | None:
        """Seconds until a batch beyond one per instance should leave: when the first instance
        to free is that close to freeing that the batch, sent now, reaches it then.

        None (it waits for a slot, as with depth 1) while nothing predicts when an instance
        frees (no measured curve or round trip yet), and for a model whose batches compute for
        less than the hops around them take: there the instance's idle gap is not what limits
        throughput but the CPU every batch costs on the way, and early batches are small ones
        (mlp c=64: 1,161-1,206 infer/s in batches of 5 against 1,364-1,433 in batches of 13)."""
        fit = self.curve.fit()
        trips = self.round_trips
        if fit is None or trips.seconds is None:
            return None
        fixed, per_row = fit
        if fixed + per_row * trips.rows < 2 * trips.hop_down_s:
            return None
        opens = self.timeline.free_at(self.instances(), now) - trips.hop_down_s
        return max(opens - now, 0.0)

    @staticmethod
    def _still_wanted(request: PendingRequest, now: float) -> bool:
        """Drop requests whose client gave up or whose deadline passed: no compute for them."""
        if request.future is None or request.future.done():
            return False
        if request.deadline is not None and request.deadline <= now:
            _fail(request, DeadlineExceeded("deadline passed before the request reached a worker"))
            return False
        return True

    async def _execute(self, batch: list[PendingRequest], booking: Booking) -> None:
        rows = sum(r.rows for r in batch)
        now = self.clock()
        deadlines = [r.deadline for r in batch]
        timeout = None if None in deadlines else max(deadlines) - now  # type: ignore[type-var]
        batch_id = f"{self._prefix}{next(self._batch_ids)}"
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "batch formed",
                extra={
                    "batch_id": batch_id,
                    "model": self.entry.spec.name,
                    "rows": rows,
                    "request_ids": [r.request_id for r in batch],
                },
            )
        released = False
        returned: float | None = None
        try:
            raw = await self._send(batch, rows, batch_id, timeout)
            returned = self.clock()
            result = cluster_pb2.BatchResult.FromString(raw)
            round_trip = returned - now
            hops = max(round_trip - result.queue_seconds - result.compute_seconds, 0.0)
            self.round_trips.observe(rows, round_trip, hops)
            self.queue.coalescing.observe_round_trip(self.round_trips.seconds)
            self.timeline.returned(booking, returned - hops / 2)
            self.policy.observe(rows, now - batch[0].arrival, result.compute_seconds)
            self.metrics.batch_served(
                self.entry.spec.name,
                result.model_version or self.version,
                rows,
                [now - r.arrival for r in batch],
                result,
            )
            released = True
            await self._release_before_answering(rows)
            self._complete(batch, rows, result)
        except TideserveError as error:
            for request in batch:
                _fail(request, error)
        except Exception as error:
            logger.exception("batch failed", extra={"model": self.entry.spec.name})
            for request in batch:
                _fail(request, TideserveError(f"internal error while serving the batch: {error}"))
        finally:
            if not released:
                self._free_slot()
            self._inflight_requests -= len(batch)
            self._outstanding_changed(self.clock())
            dispatch_s = (self.clock() if returned is None else returned) - now
            self.metrics.batch_done(self.entry.spec.name, rows, now - batch[0].arrival, dispatch_s)

    def _free_slot(self) -> None:
        self.inflight -= 1
        self._wake.set()

    async def _release_before_answering(self, rows: int) -> None:
        """Free a returned batch's slot, and when the queue already holds a batch as large, let
        it leave before this one's responses are written. Writing a batch's responses is the
        batcher's largest piece of work per batch (32 took ~3 ms of its loop on the 2-core
        machine); done first, it held back a next batch that was ready and kept the worker idle
        that long (mlp c=64 over streams, alternating runs: 3,186 against 2,616 infer/s,
        medians of 3). A smaller queue waits behind the responses and gathers the requests that
        arrive meanwhile: leaving at once whatever the queue held made unary clients' batches
        smaller, and in that CPU-bound regime cost throughput (1,525 against 1,797 infer/s;
        with this rule 1,812 against 1,735)."""
        self._free_slot()
        if self.queue.rows >= rows:
            # One turn of the event loop for the scheduler to form the batch, one for its task
            # to start the call: the send is then queued ahead of the responses.
            await asyncio.sleep(0)
            await asyncio.sleep(0)

    async def _send(
        self, batch: list[PendingRequest], rows: int, batch_id: str, timeout: float | None
    ) -> bytes:
        """Dispatch the batch, through shared memory when `shared` offers a segment."""
        spec = self.entry.spec
        model = spec.name
        shared, segment = self.shared, None
        nbytes = sum(len(x) for r in batch for x in r.inputs)
        if shared is not None:
            segment = shared.acquire(model, nbytes)
        sent = self.clock()
        try:
            if shared is None or segment is None:
                payload = wire.encode_batch(spec, self.version, batch, rows, batch_id, _fail)
            else:
                payload = await self._fill(shared, segment, batch, rows, batch_id, nbytes)
            return await self.dispatcher.dispatch(model, rows, payload, timeout, batch_id)
        except FailedPrecondition as error:
            if segment is None:
                raise
            # A worker that does not see our /dev/shm was routed the batch before the catalog
            # told us of it: send the bytes inline instead.
            logger.warning(
                "worker refused shared-memory inputs; resending inline",
                extra={"batch_id": batch_id, "model": model, "error": str(error)},
            )
            remaining = None if timeout is None else timeout - (self.clock() - sent)
            payload = wire.encode_batch(spec, self.version, batch, rows, batch_id, _fail)
            return await self.dispatcher.dispatch(model, rows, payload, remaining, batch_id)
        finally:
            if shared is not None and segment is not None:
                shared.release(segment)

    async def _fill(
        self,
        shared: Segments,
        segment: shared_memory.Segment,
        batch: list[PendingRequest],
        rows: int,
        batch_id: str,
        nbytes: int,
    ) -> bytes:
        """The batch's payload, its inputs copied into `segment`, perhaps on another thread
        (`Segments.fill`). A request whose region can no longer be read fails once the copy is
        done: its future belongs to the event loop, not to the thread."""
        unreadable: list[tuple[PendingRequest, TideserveError]] = []

        def note(request: PendingRequest, error: TideserveError) -> None:
            unreadable.append((request, error))

        write = functools.partial(
            wire.encode_batch, self.entry.spec, self.version, batch, rows, batch_id, note, segment
        )
        try:
            return await shared.fill(nbytes, write)
        finally:
            for request, error in unreadable:
                _fail(request, error)

    def _complete(
        self, batch: list[PendingRequest], rows: int, result: cluster_pb2.BatchResult
    ) -> None:
        responses = wire.split_result(self.entry.spec, self.version, batch, rows, result)
        for request, response in zip(batch, responses, strict=True):
            if request.future is not None and not request.future.done():
                request.future.set_result(response)


def _earliest(*waits: float | None) -> float | None:
    """The shortest of the known waits; None (until woken) when none is known."""
    return min((w for w in waits if w is not None), default=None)


def _fail(request: PendingRequest, error: TideserveError) -> None:
    if request.future is not None and not request.future.done():
        request.future.set_exception(error)
