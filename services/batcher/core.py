"""The batcher's logic without gRPC: one scheduler per model version, created on that version's
first request, and what the batcher reports upstream (arrival rate, latencies, queue lengths).

The path of a request, module by module: requests.py parses it into a PendingRequest; the model's
ModelScheduler (scheduler.py) admits it (admission.py) and queues it (batching.py, whose policy
comes from policies.py); the scheduler's loop forms a batch, encodes it (wire.py), dispatches
it, and splits the result back to each request (wire.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import TypeVar

from services.batcher.batching import RawInput
from services.batcher.catalog import CatalogEntry, ModelCatalog
from services.batcher.links import BalancerLinks
from services.batcher.requests import parse_request
from services.batcher.scheduler import (
    BALANCER_HOLD_S,
    BatchDispatcher,
    BatchMetrics,
    ModelScheduler,
)
from tideserve import shared_memory
from tideserve.errors import VersionNotServed
from tideserve.latency import percentile
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
# Batches of at least this many input bytes are copied into their segment on a copier thread
# (the default of BatcherSettings.shared_memory_thread_bytes). From here the event loop gains
# more than twice what the hand-off adds to the process: on the shared 2-core machine
# (`python -m bench.segment_fill`, medians of 5 rounds) a 1 MiB copy cost the loop 400 us on it
# and 100 us handed off, for 130 us more of the process's CPU; at 512 KiB the loop gained 60 us
# for 150 us more, at 256 KiB 14 us for 43 us.
THREAD_BYTES = 1 << 20
# Copier threads of a batcher: batches in flight at once may each be copying, and a copy is
# bound by memory bandwidth, not by a core, so a few threads are enough.
COPIERS = 2

Result = TypeVar("Result")


class SharedInputs:
    """Hands a batch's inputs to the workers through /dev/shm when they are large enough to gain
    and every worker of the model sees this batcher's /dev/shm (tideserve/shared_memory.py).

    A large batch's inputs are copied into its segment on a copier thread (`fill`): the copy
    (`os.preadv` from a client's region, which releases the GIL) was a fifth of the batcher's
    busy time under 64-row requests, all of it on the event loop, which meanwhile served no
    other request."""

    def __init__(
        self,
        catalog: ModelCatalog,
        min_bytes: int,
        domain: str,
        pool: shared_memory.SegmentPool | None = None,
        thread_bytes: int = THREAD_BYTES,
        copiers: Executor | None = None,
    ) -> None:
        if thread_bytes < 0:
            raise ValueError("thread_bytes must be >= 0 (0 = copy on the event loop)")
        self.catalog = catalog
        self.min_bytes = min_bytes
        # This batcher's /dev/shm (shared_memory.domain()), against the workers' reports.
        self.domain = domain
        self.pool = pool or shared_memory.SegmentPool()
        self.thread_bytes = thread_bytes
        # Shut down by close().
        self.copiers = copiers or ThreadPoolExecutor(COPIERS, thread_name_prefix="shm-copy")

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

    async def fill(self, nbytes: int, write: Callable[[], Result]) -> Result:
        """`write()`, which copies a batch's `nbytes` of inputs into its segment and must not
        touch the event loop's objects: inline when the batch is small (a thread hand-off would
        cost the loop more than the copy), else on a copier thread while the loop serves on.

        Returns or raises only once `write` has finished, even when the caller is cancelled
        meanwhile: until then the thread is writing into the segment, which must not go back
        to the pool for another batch."""
        if not self.thread_bytes or nbytes < self.thread_bytes:
            return write()
        copy = asyncio.get_running_loop().run_in_executor(self.copiers, write)
        try:
            # Shielded, so that cancelling the caller leaves `copy` telling when the thread ends.
            return await asyncio.shield(copy)
        except asyncio.CancelledError:
            while not copy.done():
                # A second cancellation cannot shorten the wait either; the first is re-raised.
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait([copy])
            raise

    def release(self, segment: shared_memory.Segment) -> None:
        self.pool.release(segment)

    def close(self) -> None:
        # Copies under way finish first: the pool's segments go next.
        self.copiers.shutdown(wait=True, cancel_futures=True)
        self.pool.close()


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
            scheduler.start()
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
        # An unversioned request may be sent to a canary version (config or operator weights).
        version = entry.version_for(request.model_version)
        answer = self._scheduler(entry, version).submit(
            parse_request(request, entry.spec, now, deadline, raw_inputs)
        )
        if version == request.model_version:
            return answer
        return asyncio.ensure_future(self._or_latest(answer, request, deadline, raw_inputs))

    async def _or_latest(
        self,
        answer: asyncio.Future,
        request: inference_pb2.ModelInferRequest,
        deadline: float | None,
        raw_inputs: Sequence[RawInput] | None,
    ) -> inference_pb2.ModelInferResponse:
        """The answer of a request whose version the canary split picked; if the workers
        retired that version before a cluster snapshot told us, the latest version answers
        instead: the client named no version, so any served one will do."""
        try:
            return await answer
        except VersionNotServed:
            entry = self.catalog.get(request.model_name)
            logger.debug(
                "canary version retired; the latest answers", extra={"model": entry.spec.name}
            )
            return await self._scheduler(entry, "").submit(
                parse_request(request, entry.spec, self.clock(), deadline, raw_inputs)
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
        return cluster_pb2.FrontendReport(
            batcher_id=batcher_id,
            arrival_rate=(self.requests_total - total_then) / (now - since) if now > since else 0.0,
            queued_requests=sum(len(s.queue) for s in self.schedulers.values()),
            latency_p50_seconds=percentile(recent, 50) if recent else 0.0,
            latency_p99_seconds=percentile(recent, 99) if recent else 0.0,
            requests_total=self.requests_total,
            requests_failed=self.requests_failed,
        )

    def close(self) -> None:
        for scheduler in self.schedulers.values():
            scheduler.close()
        if self.shared is not None:
            self.shared.close()
