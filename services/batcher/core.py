"""The batcher's logic without gRPC: a scheduler per model that forms batches from its queue as
dispatch capacity frees up, sends them downstream and splits the results back to each request."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from services.batcher.batching import BatchQueue, PendingRequest, RawInput
from services.batcher.catalog import CatalogEntry, ModelCatalog
from services.batcher.links import BalancerLinks
from services.batcher.pipelining import Booking, InstanceTimeline
from services.batcher.policies import MeasuredCurve, ServiceCurve, create_policy
from services.batcher.requests import parse_request
from services.batcher.saturation import ClosedLoop
from tideserve import shared_memory
from tideserve.errors import (
    BalancerUnreachable,
    DeadlineExceeded,
    FailedPrecondition,
    ResourceExhausted,
    TideserveError,
)
from tideserve.v1 import cluster_pb2, inference_pb2

logger = logging.getLogger(__name__)

# Latencies kept for the percentiles reported to the balancer (and so to the scaler): at most
# this many, and only those of the last LATENCY_WINDOW_S, so the scaler sees the latency of now
# (as its simulator does, one step at a time), not that of tens of seconds ago at low rates.
LATENCY_WINDOW = 4096
LATENCY_WINDOW_S = 1.0
# The arrival rate reported is over about this long, the simulator's step, which the learned
# scaling policy was trained on.
ARRIVAL_WINDOW_S = 1.0
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
# How long a request without a deadline waits for a balancer while none is reachable (the
# default of BatcherSettings.balancer_hold_s): a supervised balancer restarts, and its workers
# register again, in a few seconds.
BALANCER_HOLD_S = 10.0


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


class SharedInputs:
    """Hands a batch's inputs to the workers through /dev/shm when they are large enough to gain
    and every worker of the model sees this batcher's /dev/shm (tideserve/shared_memory.py)."""

    def __init__(
        self,
        catalog: ModelCatalog,
        min_bytes: int,
        domain: str,
        pool: shared_memory.SegmentPool | None = None,
    ) -> None:
        self.catalog = catalog
        self.min_bytes = min_bytes
        # This batcher's /dev/shm (shared_memory.domain()), against the workers' reports.
        self.domain = domain
        self.pool = pool or shared_memory.SegmentPool()

    def acquire(self, model: str, nbytes: int) -> shared_memory.Segment | None:
        """A segment to put this batch in, or None to send it inline."""
        if nbytes < self.min_bytes or not self.catalog.shares_memory(model, self.domain):
            return None
        try:
            return self.pool.acquire(nbytes)
        except OSError as error:
            logger.warning(
                "no room for a shared-memory segment; sending inline",
                extra={"model": model, "bytes": nbytes, "error": str(error)},
            )
            return None

    def release(self, segment: shared_memory.Segment) -> None:
        self.pool.release(segment)

    def close(self) -> None:
        self.pool.close()


class ModelScheduler:
    """Owns the queue of one version of a model (`version`; empty: whichever is the latest
    when the batch reaches a worker, so a new version takes over without a request failing).
    A batch leaves when the queue says it is ready *and* a model
    instance (`instances()`, over all ready workers) is free for it, so batches grow while
    workers are busy, not by idling. With `depth` > 1, up to that many batches per instance
    are in flight: those beyond the first leave just in time for their instance
    (pipelining.py)."""

    def __init__(
        self,
        entry: CatalogEntry,
        dispatcher: BatchDispatcher,
        instances: Callable[[], int],
        clock: Callable[[], float],
        curve: ServiceCurve = dict,
        metrics: BatchMetrics | None = None,
        max_queue_rows_default: int = 0,
        shared: SharedInputs | None = None,
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
        # Whether the front door is saturated, for coalescing (batching.py): told the count of
        # outstanding requests, queued or in a batch in flight, as it changes.
        self.closed_loop = ClosedLoop()
        self._inflight_requests = 0
        self.queue = BatchQueue(
            spec.max_batch_size,
            spec.batching,
            create_policy(spec, curve),
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
        self.inflight = 0
        self.timeline = InstanceTimeline()
        # Smoothed time of the hops down to a worker (half the round trip beyond the worker's
        # own queue and compute): how early a just-in-time batch leaves.
        self._hop_down_s = 0.0
        # Smoothed round trip of a dispatched batch and its rows: the queue's drain rate.
        self._round_trip_s: float | None = None
        self._batch_rows = 0.0
        self._batches_measured = 0
        self._wake = asyncio.Event()
        self._batch_ids = itertools.count()
        self._prefix = f"{os.getpid()}-{spec.name}-"
        # Strong references: the event loop keeps only weak ones to running tasks.
        self._batches: set[asyncio.Task] = set()
        if links is not None:
            links.subscribe(self._wake.set)
        self._task = asyncio.get_running_loop().create_task(self._run())

    def submit(self, request: PendingRequest) -> asyncio.Future:
        self._admit_before_deadline(request)
        self.queue.put(request)
        request.future = asyncio.get_running_loop().create_future()
        self._outstanding_changed(request.arrival)
        self._wake.set()
        return request.future

    def _outstanding_changed(self, now: float) -> None:
        self.closed_loop.changed(self.queue.count + self._inflight_requests, now)

    def close(self) -> None:
        if self.links is not None:
            self.links.unsubscribe(self._wake.set)
        self._task.cancel()

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
        if self._round_trip_s is None or self._batches_measured < ADMISSION_MIN_BATCHES:
            return 0.0
        slots = max(self.instances(), 1)
        fit = self.curve.fit()
        if fit is None:
            batches = rows_ahead / max(self._batch_rows, 1.0) + 1.0
            return batches * self._round_trip_s / slots
        fixed, per_row = fit
        overhead = max(self._round_trip_s - (fixed + per_row * self._batch_rows), 0.0)
        size, _ = self.queue.policy.target(rows_ahead + 1, self.clock())
        size = max(min(size, self.queue.max_batch_size), 1)
        full, rest = divmod(rows_ahead + 1, size)
        seconds = full * (fixed + per_row * size + overhead)
        if rest:
            seconds += fixed + per_row * rest + overhead
        return seconds / slots

    def _observe_round_trip(self, rows: int, seconds: float, hops_s: float = 0.0) -> None:
        """A batch of `rows` came back `seconds` after it left, `hops_s` of them outside the
        worker's queue and compute."""
        self._batches_measured += 1
        if self._round_trip_s is None:
            self._round_trip_s, self._batch_rows = seconds, float(rows)
            self._hop_down_s = hops_s / 2
        else:
            self._round_trip_s += ROUND_TRIP_ALPHA * (seconds - self._round_trip_s)
            self._batch_rows += ROUND_TRIP_ALPHA * (rows - self._batch_rows)
            self._hop_down_s += ROUND_TRIP_ALPHA * (hops_s / 2 - self._hop_down_s)
        self.queue.coalescing.observe_round_trip(self._round_trip_s)

    def _admit_before_deadline(self, request: PendingRequest) -> None:
        """Refuse at once a request that cannot leave the queue before its deadline or queue
        timeout: queued, it would only expire there, after holding a slot the whole time."""
        limits = [t for t in (request.deadline, request.expires) if t is not None]
        if not limits or not self.queue.rows:
            return
        budget = min(limits) - request.arrival
        wait = self.expected_wait(self.queue.rows_ahead(request.priority))
        if wait > ADMISSION_HEADROOM * budget:
            raise ResourceExhausted(
                f"the queue for model {self.entry.spec.name!r} holds about {wait * 1000:.0f} ms "
                f"of work, too much for this request's {budget * 1000:.0f} ms deadline; retry "
                "after a back-off, with a longer deadline, or add workers"
            )

    def capacity(self) -> int:
        """Batches that may be in flight at once."""
        return self.instances() * self.depth

    async def _run(self) -> None:
        while True:
            batch = await self._next_batch()
            self.inflight += 1
            self._inflight_requests += len(batch)
            booking = self.timeline.book(
                self.instances(), self.clock(), self._hop_down_s, self._compute_s(batch)
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
            now = self.clock()
            for request in self.queue.pop_expired(now):
                _fail(
                    request,
                    DeadlineExceeded("request timed out in the queue before it was batched"),
                )
            if self.links is not None and not self.links.live:
                # No balancer to send to (one restarting): hold the queue rather than fail it.
                held = self._hold(self.links, now)
                await self._wait(_earliest(held, self.queue.next_expiry(now)))
                continue
            if self.inflight >= self.capacity():
                # Every slot is busy: wake for a freed slot, a new arrival or a queue timeout.
                await self._wait(self.queue.next_expiry(now))
                continue
            if self.inflight >= self.instances():
                # Every instance has a batch: the next leaves when one is about to free.
                gate = self._just_in_time(now)
                if gate is None or gate > 0:
                    await self._wait(_earliest(gate, self.queue.next_expiry(now)))
                    continue
            wait = self.queue.next_batch_in(now)
            if wait == 0.0:
                batch = [r for r in self.queue.take(now) if self._still_wanted(r, now)]
                if batch:
                    return batch
                continue
            await self._wait(_earliest(wait, self.queue.next_expiry(now)))

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
        if fit is None or self._round_trip_s is None:
            return None
        fixed, per_row = fit
        if fixed + per_row * self._batch_rows < 2 * self._hop_down_s:
            return None
        opens = self.timeline.free_at(self.instances(), now) - self._hop_down_s
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

    def _payload(
        self,
        batch: list[PendingRequest],
        rows: int,
        batch_id: str,
        segment: shared_memory.Segment | None = None,
    ) -> bytes:
        """The serialized Batch: inputs concatenated inline, or written into `segment` and
        referenced (one copy either way)."""
        spec = self.entry.spec
        message = cluster_pb2.Batch(
            batch_id=batch_id,
            model_name=spec.name,
            model_version=self.version,
        )
        first = batch[0]
        position = 0
        for index, tensor in enumerate(spec.inputs):
            dims = list(first.shape_key[index])
            added = message.inputs.add(
                name=tensor.name,
                datatype=tensor.datatype,
                shape=[rows, *dims] if spec.batches else dims,
            )
            if segment is None:
                # One request's bytes pass through uncopied (join returns a lone bytes as is).
                added.raw = b"".join(_read(r, index) for r in batch)
                continue
            start = position
            with memoryview(segment.buffer) as target:
                for request in batch:
                    size = len(request.inputs[index])
                    _read_into(request, index, target[position : position + size])
                    position += size
            added.shared.CopyFrom(segment.ref(start, position - start))
        if all(r.output_names for r in batch):
            message.output_names.extend(sorted({n for r in batch for n in r.output_names}))
        return message.SerializeToString()

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
            self._observe_round_trip(rows, round_trip, hops)
            self.timeline.returned(booking, returned - hops / 2)
            self.queue.policy.observe(rows, now - batch[0].arrival, result.compute_seconds)
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
        model = self.entry.spec.name
        shared, segment = self.shared, None
        if shared is not None:
            segment = shared.acquire(model, sum(len(x) for r in batch for x in r.inputs))
        sent = self.clock()
        try:
            payload = self._payload(batch, rows, batch_id, segment)
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
            payload = self._payload(batch, rows, batch_id)
            return await self.dispatcher.dispatch(model, rows, payload, remaining, batch_id)
        finally:
            if shared is not None and segment is not None:
                shared.release(segment)

    def _complete(
        self, batch: list[PendingRequest], rows: int, result: cluster_pb2.BatchResult
    ) -> None:
        spec = self.entry.spec
        model_version = result.model_version or self.version
        outputs = [(o.name, o.datatype, list(o.shape), o.raw) for o in result.outputs]
        offset = 0
        for request in batch:
            response = inference_pb2.ModelInferResponse(
                model_name=spec.name, model_version=model_version, id=request.request_id
            )
            for name, datatype, shape, raw in outputs:
                if request.output_names and name not in request.output_names:
                    continue
                if spec.batches:
                    per_row = len(raw) // rows
                    piece = raw[offset * per_row : (offset + request.rows) * per_row]
                    response.outputs.add(
                        name=name, datatype=datatype, shape=[request.rows, *shape[1:]]
                    )
                else:
                    piece = raw
                    response.outputs.add(name=name, datatype=datatype, shape=shape)
                response.raw_output_contents.append(piece)
            offset += request.rows
            if request.future is not None and not request.future.done():
                request.future.set_result(response)


def _earliest(*waits: float | None) -> float | None:
    """The shortest of the known waits; None (until woken) when none is known."""
    return min((w for w in waits if w is not None), default=None)


def _read(request: PendingRequest, index: int) -> bytes:
    """Input `index` of `request` as bytes. A deferred input that can no longer be read (its
    client cut its region short) fails that request alone: its rows travel as zeros and its
    result is dropped, while the rest of the batch is answered."""
    data = request.inputs[index]
    if isinstance(data, bytes):
        return data
    try:
        return data.read()
    except TideserveError as error:
        _fail(request, error)
        return bytes(len(data))


def _read_into(request: PendingRequest, index: int, target: memoryview) -> None:
    """Input `index` of `request` into `target`; as `_read` when it can no longer be read."""
    data = request.inputs[index]
    if isinstance(data, bytes):
        target[:] = data
        return
    try:
        data.read_into(target)
    except TideserveError as error:
        _fail(request, error)
        target[:] = bytes(len(target))


def _fail(request: PendingRequest, error: TideserveError) -> None:
    if request.future is not None and not request.future.done():
        request.future.set_exception(error)


class BatcherCore:
    def __init__(
        self,
        catalog: ModelCatalog,
        dispatcher: BatchDispatcher,
        *,
        inflight_per_instance: int = 1,
        clock: Callable[[], float] = time.monotonic,
        metrics: BatchMetrics | None = None,
        max_queue_rows_default: int = 0,
        shared: SharedInputs | None = None,
        links: BalancerLinks | None = None,
        hold_s: float = BALANCER_HOLD_S,
    ) -> None:
        if hold_s < 0:
            raise ValueError("hold_s must be >= 0")
        self.catalog = catalog
        self.links = links
        self.hold_s = hold_s
        self.shared = shared
        self.max_queue_rows_default = max_queue_rows_default
        self.metrics = metrics
        self.dispatcher = dispatcher
        self.inflight_per_instance = inflight_per_instance
        self.clock = clock
        # By model name and version: requests naming a version are batched apart.
        self.schedulers: dict[tuple[str, str], ModelScheduler] = {}
        self.requests_total = 0
        self.requests_failed = 0
        # (finish time, latency) of recent successful requests.
        self.latencies: deque[tuple[float, float]] = deque(maxlen=LATENCY_WINDOW)
        # (report time, requests_total) of earlier reports: the arrival rate is their slope.
        self._totals: deque[tuple[float, int]] = deque()

    def _scheduler(self, entry: CatalogEntry, version: str) -> ModelScheduler:
        """The scheduler of `version` of the model (the latest served when empty)."""
        key = (entry.spec.name, version)
        scheduler = self.schedulers.get(key)
        if scheduler is None or scheduler.entry is not entry:
            if scheduler is not None and len(scheduler.queue) == 0 and scheduler.inflight == 0:
                scheduler.close()
            name = entry.spec.name
            per_worker = entry.spec.instance_count
            scheduler = ModelScheduler(
                entry,
                self.dispatcher,
                lambda: per_worker * max(self.catalog.worker_counts.get(name, 0), 1),
                self.clock,
                lambda: self.catalog.service_curves.get(name, {}),
                self.metrics,
                self.max_queue_rows_default,
                self.shared,
                depth=self.inflight_per_instance,
                links=self.links,
                hold_s=self.hold_s,
                version=version,
            )
            self.schedulers[key] = scheduler
        return scheduler

    def ready(self) -> bool:
        """Whether this batcher can serve now: it holds a live stream to some balancer."""
        return self.links is None or self.links.live

    def model_ready(self, name: str) -> bool:
        """Whether `name` can be served now: a balancer is reachable and, by its latest cluster
        snapshot, some ready worker serves the model."""
        return self.ready() and self.catalog.ready(name)

    def submit(
        self,
        request: inference_pb2.ModelInferRequest,
        deadline: float | None,
        raw_inputs: Sequence[RawInput] | None = None,
    ) -> asyncio.Future:
        """Validate and enqueue; the future resolves to the ModelInferResponse. Raises at once for
        unknown models, malformed requests and full queues. `raw_inputs`: the inputs' bytes when
        they do not lie in the request (client shared-memory regions)."""
        now = self.clock()
        self.requests_total += 1
        entry = self.catalog.get(request.model_name, request.model_version)
        return self._scheduler(entry, request.model_version).submit(
            parse_request(request, entry.spec, now, deadline, raw_inputs)
        )

    def record(self, latency: float | None) -> None:
        """A request finished: its latency, or None if it failed."""
        if latency is None:
            self.requests_failed += 1
        else:
            self.latencies.append((self.clock(), latency))

    def frontend_report(self, batcher_id: str) -> cluster_pb2.FrontendReport:
        now = self.clock()
        while len(self._totals) > 1 and self._totals[1][0] <= now - ARRIVAL_WINDOW_S:
            self._totals.popleft()
        since, total_then = self._totals[0] if self._totals else (now, self.requests_total)
        self._totals.append((now, self.requests_total))
        recent = [latency for done, latency in self.latencies if now - done <= LATENCY_WINDOW_S]
        latencies = np.asarray(recent) if recent else None
        return cluster_pb2.FrontendReport(
            batcher_id=batcher_id,
            arrival_rate=(self.requests_total - total_then) / (now - since) if now > since else 0.0,
            queued_requests=sum(len(s.queue) for s in self.schedulers.values()),
            latency_p50_seconds=float(np.percentile(latencies, 50))
            if latencies is not None
            else 0.0,
            latency_p99_seconds=float(np.percentile(latencies, 99))
            if latencies is not None
            else 0.0,
            requests_total=self.requests_total,
            requests_failed=self.requests_failed,
        )

    def close(self) -> None:
        for scheduler in self.schedulers.values():
            scheduler.close()
        if self.shared is not None:
            self.shared.close()
