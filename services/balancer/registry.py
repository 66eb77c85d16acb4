"""The balancer's table of workers, fed by heartbeats and by the batches it dispatches.

Time comes from an injected monotonic clock so staleness, ejection and smoothing can be tested
without sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from tideserve.v1 import cluster_pb2

Clock = Callable[[], float]

# Weight of a new completion in the smoothed service time of its batch size.
SMOOTHING = 0.2
# Service time assumed for a worker that has reported nothing yet (seconds per batch).
UNKNOWN_SERVICE_TIME_S = 0.005


@dataclass
class WorkerRecord:
    worker_id: str
    address: str
    device: str
    models: frozenset[str]
    last_heartbeat: float
    metrics_address: str = ""
    queued_batches: int = 0
    inflight_batches: int = 0
    memory_bytes: int = 0
    busy_seconds: float = 0.0
    # Batches and rows this balancer sent that have not come back yet.
    outstanding_batches: int = 0
    outstanding_rows: int = 0
    completed_batches: int = 0
    failed_batches: int = 0
    consecutive_failures: int = 0
    draining: bool = False
    ejected_until: float = 0.0
    # Smoothed seconds by batch size, from reports (slowest model) and observed completions;
    # routing estimates with these.
    service_times: dict[int, float] = field(default_factory=dict)
    # Compute times by model and batch size exactly as the worker last reported them.
    reported_service_times: list[cluster_pb2.ServiceTime] = field(default_factory=list)

    def service_time(self, rows: int) -> float:
        """Expected seconds to serve a batch of `rows`: the measured time of the nearest sizes,
        interpolated linearly (batch cost is close to affine in size)."""
        if not self.service_times:
            return UNKNOWN_SERVICE_TIME_S
        if rows in self.service_times:
            return self.service_times[rows]
        sizes = sorted(self.service_times)
        below = [s for s in sizes if s < rows]
        above = [s for s in sizes if s > rows]
        if below and above:
            lo, hi = below[-1], above[0]
            t_lo, t_hi = self.service_times[lo], self.service_times[hi]
            return t_lo + (t_hi - t_lo) * (rows - lo) / (hi - lo)
        if below:
            largest = below[-1]
            return self.service_times[largest] * rows / largest
        return self.service_times[above[0]]

    def expected_backlog(self) -> float:
        """Seconds of work this worker holds: our outstanding rows served at its measured rate."""
        if self.outstanding_batches == 0:
            return 0.0
        mean_rows = max(1, round(self.outstanding_rows / self.outstanding_batches))
        return self.outstanding_batches * self.service_time(mean_rows)

    def expected_completion(self, rows: int) -> float:
        """Seconds until a new batch of `rows` would finish here."""
        return self.expected_backlog() + self.service_time(rows)

    @property
    def error_rate(self) -> float:
        total = self.completed_batches + self.failed_batches
        return self.failed_batches / total if total else 0.0


class WorkerTable:
    def __init__(
        self,
        *,
        heartbeat_timeout_s: float = 1.0,
        eject_after_failures: int = 3,
        ejection_s: float = 5.0,
        clock: Clock = time.monotonic,
    ) -> None:
        if heartbeat_timeout_s <= 0:
            raise ValueError("heartbeat_timeout_s must be > 0")
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.eject_after_failures = eject_after_failures
        self.ejection_s = ejection_s
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
        )
        self.workers[record.worker_id] = record
        for served in registration.models:
            self.models[served.config.name] = served
        return record

    def remove(self, worker_id: str) -> WorkerRecord | None:
        record = self.workers.pop(worker_id, None)
        if record is not None:
            served = {m for w in self.workers.values() for m in w.models}
            for name in list(self.models):
                if name not in served:
                    del self.models[name]
        return record

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
        record.service_times.update(slowest)

    def stale(self) -> list[WorkerRecord]:
        """Workers whose last heartbeat is older than the timeout."""
        cutoff = self.clock() - self.heartbeat_timeout_s
        return [w for w in self.workers.values() if w.last_heartbeat < cutoff]

    def is_routable(self, record: WorkerRecord) -> bool:
        now = self.clock()
        return (
            not record.draining
            and record.ejected_until <= now
            and record.last_heartbeat >= now - self.heartbeat_timeout_s
            and record.worker_id in self.workers
        )

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
        """A batch came back; `seconds` is its round trip, or None if it failed."""
        record.outstanding_batches -= 1
        record.outstanding_rows -= rows
        if seconds is None:
            record.failed_batches += 1
            record.consecutive_failures += 1
            if record.consecutive_failures >= self.eject_after_failures:
                record.ejected_until = self.clock() + self.ejection_s
                record.consecutive_failures = 0
            return
        record.completed_batches += 1
        record.consecutive_failures = 0
        previous = record.service_times.get(rows)
        record.service_times[rows] = (
            seconds if previous is None else previous + SMOOTHING * (seconds - previous)
        )

    def phase(self, record: WorkerRecord) -> int:
        if record.draining:
            return cluster_pb2.WorkerState.DRAINING
        if record.ejected_until > self.clock():
            return cluster_pb2.WorkerState.EJECTED
        return cluster_pb2.WorkerState.READY
