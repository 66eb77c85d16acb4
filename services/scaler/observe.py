"""From the balancer's cluster snapshots to the `ScalingContext` a policy decides on.

The live quantities are defined as the simulator defines them (`tideserve_learning.sim.env`), so a
policy tuned or trained there sees the same numbers here:

* utilisation = throughput / (ready workers x one worker's peak throughput), where throughput is
  the rate of rows the balancer dispatched over the last `window_s` and peak throughput is
  max_batch / t(max_batch) from the service curve. The busy-seconds rate used before is ~1 at any
  load above 1/t(1) with work-conserving dynamic batching (a worker is always computing the next
  batch), so it carried no signal about how much capacity is spare.
* service_rate_per_replica = the requests/s one worker sustains with p99 within the SLO under the
  planner's batching model (`ServiceProfile.rate_within_slo`), not its peak throughput.

The service curve is a measured profile when the scaler is given one (`tideserve profile`; the
profile the policy was trained with), else a straight-line fit of the service times the workers
report (pooled over workers and models, extended to the largest max_batch_size any model
declares). Without either, the service rate is 0 and utilisation 0: the learned policy then sees
an observation outside its trained range and the HPA rule decides.
Arrival rate, queue depth and latency come from the batchers' reports carried in the snapshot.
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass, field

import numpy as np

from services.scaler.planner import P99_OVER_TAU, ServiceProfile
from services.scaler.policies import ScalingContext
from tideserve.v1 import cluster_pb2


class ClusterView:
    """One cluster snapshot made of the latest from every balancer the scaler follows. Workers
    heartbeat to every balancer and batchers report to every one, so each balancer sees all
    workers and frontends; what is split between them is the batches. So: workers and
    frontends from the newest snapshot that has them, each worker's outstanding batches and rows
    summed over the balancers, and `dispatched_rows` a counter of the rows all balancers
    dispatched since the scaler started following them (each balancer's own counter restarts
    with it, and a balancer first seen or seen again must not count its past as new rows)."""

    def __init__(self) -> None:
        self._latest: dict[str, cluster_pb2.ClusterSnapshot] = {}
        self._last_rows: dict[str, int] = {}
        self._rows = 0

    def update(
        self, address: str, snapshot: cluster_pb2.ClusterSnapshot
    ) -> cluster_pb2.ClusterSnapshot:
        """Take `address`'s new snapshot; returns the merged one."""
        rows, last = snapshot.dispatched_rows, self._last_rows.get(address)
        if last is not None:
            # A counter that went back is a restarted balancer: all of it is new.
            self._rows += rows - last if rows >= last else rows
        self._last_rows[address] = rows
        self._latest[address] = snapshot
        return self.merged()

    def lost(self, address: str) -> None:
        """`address`'s stream broke: its workers and frontends are no longer current."""
        self._latest.pop(address, None)

    def merged(self) -> cluster_pb2.ClusterSnapshot:
        snapshots = sorted(self._latest.values(), key=lambda s: s.timestamp_unix)
        if not snapshots:
            return cluster_pb2.ClusterSnapshot()
        merged = cluster_pb2.ClusterSnapshot()
        merged.CopyFrom(snapshots[-1])
        merged.dispatched_rows = self._rows
        outstanding: dict[str, tuple[int, int]] = defaultdict(lambda: (0, 0))
        frontends: dict[str, cluster_pb2.FrontendReport] = {}
        workers: dict[str, cluster_pb2.WorkerState] = {}
        for snapshot in snapshots:
            for worker in snapshot.workers:
                batches, rows = outstanding[worker.worker_id]
                outstanding[worker.worker_id] = (
                    batches + worker.outstanding_batches,
                    rows + worker.outstanding_rows,
                )
                workers[worker.worker_id] = worker
            for frontend in snapshot.frontends:
                frontends[frontend.batcher_id] = frontend
        del merged.workers[:]
        for worker_id, worker in workers.items():
            added = merged.workers.add()
            added.CopyFrom(worker)
            added.outstanding_batches, added.outstanding_rows = outstanding[worker_id]
        del merged.frontends[:]
        merged.frontends.extend(frontends.values())
        return merged


@dataclass
class ClusterObserver:
    slo_s: float
    profile: ServiceProfile | None = None
    window_s: float = 2.0
    utilisation: float = 0.0
    throughput: float = 0.0
    _rows: deque[tuple[float, int]] = field(default_factory=deque)

    def observe(self, snapshot: cluster_pb2.ClusterSnapshot) -> None:
        """Update throughput and utilisation from a new snapshot (call once per snapshot, in
        order)."""
        now, rows = snapshot.timestamp_unix, snapshot.dispatched_rows
        if self._rows and rows < self._rows[-1][1]:
            self._rows.clear()  # the balancer restarted and its counter with it
        self._rows.append((now, rows))
        while len(self._rows) > 2 and self._rows[1][0] <= now - self.window_s:
            self._rows.popleft()
        first_t, first_rows = self._rows[0]
        if now > first_t:
            self.throughput = (rows - first_rows) / (now - first_t)
        ready = sum(1 for w in snapshot.workers if w.phase == cluster_pb2.WorkerState.READY)
        curve = self.curve(snapshot)
        peak = curve.peak_throughput if curve is not None else 0.0
        self.utilisation = min(1.0, self.throughput / (ready * peak)) if ready and peak else 0.0

    def curve(self, snapshot: cluster_pb2.ClusterSnapshot) -> ServiceProfile | None:
        return self.profile if self.profile is not None else live_curve(snapshot)

    def context(
        self, snapshot: cluster_pb2.ClusterSnapshot, now: float, current: int, ready: int
    ) -> ScalingContext:
        frontends = list(snapshot.frontends)
        queued = sum(f.queued_requests for f in frontends)
        in_service = sum(w.outstanding_rows for w in snapshot.workers)
        curve = self.curve(snapshot)
        p99 = max((f.latency_p99_seconds for f in frontends), default=0.0)
        if p99 <= 0.0 and curve is not None:
            # No request finished in the batchers' 1 s latency window (an idle cluster, or
            # traffic sparser than one request a second): a request sent now would see a lone
            # batch's latency, which is what the simulator reports for such a step, rather than
            # a p99 of 0 that no trained policy has seen.
            p99 = P99_OVER_TAU * curve.steady_batch_time(0.0)
        return ScalingContext(
            now=now,
            current_replicas=current,
            ready_replicas=ready,
            arrival_rate=sum(f.arrival_rate for f in frontends),
            queued_requests=queued,
            ongoing_requests=float(queued + in_service),
            latency_p99_s=p99,
            slo_s=self.slo_s,
            utilisation=self.utilisation,
            service_rate_per_replica=curve.rate_within_slo(self.slo_s) if curve else 0.0,
        )


def live_curve(snapshot: cluster_pb2.ClusterSnapshot) -> ServiceProfile | None:
    """The workers' reported service times as a profile (None below two batch sizes)."""
    by_size: dict[int, list[float]] = defaultdict(list)
    for worker in snapshot.workers:
        for t in worker.service_times:
            if t.seconds > 0:
                by_size[t.batch_size].append(t.seconds)
    if len(by_size) < 2:
        return None
    sizes = sorted(by_size)
    beta, alpha = np.polyfit(sizes, [float(np.mean(by_size[b])) for b in sizes], 1)
    alpha, beta = max(float(alpha), 1e-6), max(float(beta), 1e-9)
    declared = [m.config.max_batch_size for m in snapshot.models if m.config.max_batch_size > 0]
    largest = max([*declared, sizes[-1]])
    low = min(sizes[0], largest - 1) if largest > 1 else 1
    ends = (low, largest) if largest > low else (1, 2)
    return ServiceProfile(
        model="live",
        batch_sizes=ends,
        seconds=tuple(alpha + beta * b for b in ends),
        cold_start_s=0.0,
    )
