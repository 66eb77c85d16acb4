"""The balancer's table of workers, fed by heartbeats and by the batches it dispatches.

Per worker it keeps what routing needs: smoothed service time by batch size, outstanding work in
expected seconds, a smoothed error rate, heartbeat age, and a circuit breaker. Time comes from an
injected monotonic clock so staleness, ejection and smoothing can be tested without sleeping.

Circuit breaker (closed -> open -> half-open -> closed): `eject_after_failures` consecutive lost
or faulty batches eject a worker for a back-off that doubles on each ejection in a row (capped at
`max_ejection_s`). When the back-off ends the worker is half-open: it is routable for one batch
at a time, a probe. A probe that succeeds closes the breaker; one that fails re-ejects at once
with the next, longer back-off. Heartbeats alone never re-admit a worker: a worker can heartbeat
while its compute is stuck, so only a served batch proves it healthy.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from tideserve.v1 import cluster_pb2

Clock = Callable[[], float]

# Weight of a new completion in the smoothed service time of its batch size.
SMOOTHING = 0.2
# Weight of a new outcome in the smoothed error rate: about the last ten batches count.
ERROR_SMOOTHING = 0.1
# Service time assumed for a worker that has reported nothing yet (seconds per batch). Zero is
# optimistic on purpose: a new worker gets the next batch and so measures itself at once; any
# positive guess above its peers' measured times would starve it of traffic forever.
UNKNOWN_SERVICE_TIME_S = 0.0


@dataclass
class WorkerRecord:
    worker_id: str
    address: str
    device: str
    models: frozenset[str]
    last_heartbeat: float
    metrics_address: str = ""
    shared_memory_domain: str = ""
    # The worker's Execute key from its registration, sent on every batch to it; kept out of
    # repr so that no log of a record shows it.
    execute_key: str = field(default="", repr=False)
    queued_batches: int = 0
    inflight_batches: int = 0
    memory_bytes: int = 0
    busy_seconds: float = 0.0
    # Batches and rows this balancer sent that have not come back yet.
    outstanding_batches: int = 0
    outstanding_rows: int = 0
    completed_batches: int = 0
    failed_batches: int = 0
    # Smoothed share of recent batches that were lost or failed on the worker's side.
    error_rate: float = 0.0
    draining: bool = False
    # Circuit breaker: see the module docstring.
    consecutive_failures: int = 0
    ejections: int = 0
    ejected_until: float = 0.0
    # When the previous batch of ours came back; separates service from queueing (see `finish`).
    last_completion: float = -math.inf
    # Smoothed seconds per batch by size as this balancer observes them (service at the worker
    # plus the network and the worker's per-batch overhead): what routing estimates with.
    service_times: dict[int, float] = field(default_factory=dict)
    # The worker's own compute times (slowest model per size): used until we have observed some.
    reported_times: dict[int, float] = field(default_factory=dict)
    # Compute times by model and batch size exactly as the worker last reported them.
    reported_service_times: list[cluster_pb2.ServiceTime] = field(default_factory=list)
    # The state of each model version the worker knows of (READY, LOADING, UNAVAILABLE).
    model_statuses: list[cluster_pb2.ModelStatus] = field(default_factory=list)

    def service_time(self, rows: int) -> float:
        """Expected seconds to serve a batch of `rows`: the measured time of the nearest sizes,
        interpolated linearly (batch cost is close to affine in size)."""
        times = self.service_times or self.reported_times
        if not times:
            return UNKNOWN_SERVICE_TIME_S
        exact = times.get(rows)
        if exact is not None:
            return exact
        above = min((s for s in times if s > rows), default=None)
        if above is None:
            largest = max(times)  # every measured size is smaller
            return times[largest] * rows / largest
        below = max((s for s in times if s < rows), default=None)
        if below is None:
            return times[above]
        t_lo, t_hi = times[below], times[above]
        return t_lo + (t_hi - t_lo) * (rows - below) / (above - below)

    def expected_backlog(self) -> float:
        """Seconds of work this worker holds: our outstanding rows served at its measured rate."""
        if self.outstanding_batches == 0:
            return 0.0
        mean_rows = max(1, round(self.outstanding_rows / self.outstanding_batches))
        return self.outstanding_batches * self.service_time(mean_rows)

    def expected_completion(self, rows: int) -> float:
        """Seconds until a new batch of `rows` would finish here."""
        return self.expected_backlog() + self.service_time(rows)


class WorkerTable:
    def __init__(
        self,
        *,
        heartbeat_timeout_s: float = 1.0,
        eject_after_failures: int = 3,
        ejection_s: float = 5.0,
        max_ejection_s: float = 60.0,
        clock: Clock = time.monotonic,
    ) -> None:
        if heartbeat_timeout_s <= 0:
            raise ValueError("heartbeat_timeout_s must be > 0")
        if eject_after_failures < 1:
            raise ValueError("eject_after_failures must be >= 1")
        if not 0 < ejection_s <= max_ejection_s:
            raise ValueError("need 0 < ejection_s <= max_ejection_s")
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.eject_after_failures = eject_after_failures
        self.ejection_s = ejection_s
        self.max_ejection_s = max_ejection_s
        self.clock = clock
        self.workers: dict[str, WorkerRecord] = {}
        self.models: dict[str, cluster_pb2.ServedModel] = {}

    def register(self, registration: cluster_pb2.WorkerRegistration) -> WorkerRecord:
        record = WorkerRecord(
            worker_id=registration.worker_id,
            address=registration.address,
            device=registration.device,
            models=frozenset(m.config.name for m in registration.models),
            last_heartbeat=self.clock(),
            metrics_address=registration.metrics_address,
            shared_memory_domain=registration.shared_memory_domain,
            execute_key=registration.execute_key,
            model_statuses=list(registration.model_statuses),
        )
        self.workers[record.worker_id] = record
        for served in registration.models:
            self.models[served.config.name] = served
        return record

    def set_models(self, worker_id: str, update: cluster_pb2.ModelUpdate) -> None:
        """A worker loaded or unloaded a model: it serves `update.models` from now on."""
        record = self.workers.get(worker_id)
        if record is None:
            return
        record.models = frozenset(m.config.name for m in update.models)
        record.model_statuses = list(update.statuses)
        for served in update.models:
            self.models[served.config.name] = served
        self._forget_unserved()

    def remove(self, worker_id: str) -> WorkerRecord | None:
        record = self.workers.pop(worker_id, None)
        if record is not None:
            self._forget_unserved()
        return record

    def _forget_unserved(self) -> None:
        served = {m for w in self.workers.values() for m in w.models}
        for name in list(self.models):
            if name not in served:
                del self.models[name]

    def report(self, worker_id: str, load: cluster_pb2.LoadReport) -> None:
        record = self.workers.get(worker_id)
        if record is None:
            return
        record.last_heartbeat = self.clock()
        record.queued_batches = load.queued_batches
        record.inflight_batches = load.inflight_batches
        record.memory_bytes = load.memory_bytes
        record.busy_seconds = load.busy_seconds
        record.reported_service_times = list(load.service_times)
        slowest: dict[int, float] = {}
        for sample in load.service_times:
            slowest[sample.batch_size] = max(sample.seconds, slowest.get(sample.batch_size, 0.0))
        record.reported_times.update(slowest)

    def stale(self) -> list[WorkerRecord]:
        """Workers whose last heartbeat is older than the timeout."""
        cutoff = self.clock() - self.heartbeat_timeout_s
        return [w for w in self.workers.values() if w.last_heartbeat < cutoff]

    def is_routable(self, record: WorkerRecord) -> bool:
        now = self.clock()
        if (
            record.draining
            or record.ejected_until > now
            or record.last_heartbeat < now - self.heartbeat_timeout_s
            or record.worker_id not in self.workers
        ):
            return False
        # Half-open: one probe at a time until a batch succeeds.
        return record.ejections == 0 or record.outstanding_batches == 0

    def candidates(self, model: str, exclude: Iterable[str] = ()) -> list[WorkerRecord]:
        excluded = set(exclude)
        return [
            w
            for w in self.workers.values()
            if model in w.models and w.worker_id not in excluded and self.is_routable(w)
        ]

    def begin(self, record: WorkerRecord, rows: int) -> None:
        record.outstanding_batches += 1
        record.outstanding_rows += rows

    def finish(self, record: WorkerRecord, rows: int, seconds: float | None) -> None:
        """A batch came back; `seconds` is its round trip, or None if the worker lost it or
        failed it through its own fault (counts toward ejection).

        The service time sample is the round trip cut at the previous completion: a worker
        serves our batches one after another, so a batch that waited behind another started at
        the earlier one's completion. Round trips alone would count queueing as service and then
        count it again in the backlog."""
        self.release(record, rows)
        now = self.clock()
        if seconds is None:
            self._failed(record, now)
            return
        record.completed_batches += 1
        record.error_rate -= ERROR_SMOOTHING * record.error_rate
        record.consecutive_failures = 0
        record.ejections = 0
        sample = min(seconds, now - record.last_completion)
        record.last_completion = now
        previous = record.service_times.get(rows)
        record.service_times[rows] = (
            sample if previous is None else previous + SMOOTHING * (sample - previous)
        )

    def release(self, record: WorkerRecord, rows: int) -> None:
        """A batch is over without telling anything about the worker's health (it answered that
        the batch was invalid, or the request's own deadline ran out)."""
        record.outstanding_batches -= 1
        record.outstanding_rows -= rows

    def _failed(self, record: WorkerRecord, now: float) -> None:
        record.failed_batches += 1
        record.error_rate += ERROR_SMOOTHING * (1.0 - record.error_rate)
        record.consecutive_failures += 1
        half_open = record.ejections > 0
        if half_open or record.consecutive_failures >= self.eject_after_failures:
            self._eject(record, now)

    def _eject(self, record: WorkerRecord, now: float) -> None:
        if record.ejected_until > now:
            return  # a batch sent before the ejection failed too: same incident
        if not any(
            self.is_routable(w) and w.models & record.models
            for w in self.workers.values()
            if w is not record
        ):
            # Ejecting a model's last routable worker turns a degraded service into none.
            return
        backoff = min(self.ejection_s * 2**record.ejections, self.max_ejection_s)
        record.ejections += 1
        record.ejected_until = now + backoff
        record.consecutive_failures = 0

    def phase(self, record: WorkerRecord) -> int:
        if record.draining:
            return cluster_pb2.WorkerState.DRAINING
        if record.ejected_until > self.clock():
            return cluster_pb2.WorkerState.EJECTED
        return cluster_pb2.WorkerState.READY
