"""From the balancer's cluster snapshots to the `ScalingContext` a policy decides on.

Utilisation is the rate at which ready workers accumulate busy seconds between two snapshots;
arrival rate, queue depth and latency come from the batchers' reports carried in the snapshot."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.scaler.policies import ScalingContext
from tideserve.v1 import cluster_pb2


@dataclass
class ClusterObserver:
    slo_s: float
    _busy: dict[str, tuple[float, float]] = field(default_factory=dict)
    utilisation: float = 0.0

    def observe(self, snapshot: cluster_pb2.ClusterSnapshot) -> None:
        """Update utilisation from a new snapshot (call once per snapshot, in order)."""
        shares = []
        seen = {}
        for worker in snapshot.workers:
            if worker.phase != cluster_pb2.WorkerState.READY:
                continue
            seen[worker.worker_id] = (snapshot.timestamp_unix, worker.busy_seconds)
            previous = self._busy.get(worker.worker_id)
            if previous is not None and snapshot.timestamp_unix > previous[0]:
                elapsed = snapshot.timestamp_unix - previous[0]
                shares.append(min(1.0, max(0.0, (worker.busy_seconds - previous[1]) / elapsed)))
        self._busy = seen
        if shares:
            self.utilisation = sum(shares) / len(shares)
        elif not seen:
            self.utilisation = 0.0

    def context(
        self, snapshot: cluster_pb2.ClusterSnapshot, now: float, current: int, ready: int
    ) -> ScalingContext:
        frontends = list(snapshot.frontends)
        queued = sum(f.queued_requests for f in frontends)
        in_service = sum(w.outstanding_rows for w in snapshot.workers)
        return ScalingContext(
            now=now,
            current_replicas=current,
            ready_replicas=ready,
            arrival_rate=sum(f.arrival_rate for f in frontends),
            queued_requests=queued,
            ongoing_requests=float(queued + in_service),
            latency_p99_s=max((f.latency_p99_seconds for f in frontends), default=0.0),
            slo_s=self.slo_s,
            utilisation=self.utilisation,
            service_rate_per_replica=service_rate(snapshot),
        )


def service_rate(snapshot: cluster_pb2.ClusterSnapshot) -> float:
    """Rows per second one replica sustains at its largest measured batch size (0 if unknown)."""
    rates = [
        max(t.batch_size / t.seconds for t in w.service_times if t.seconds > 0)
        for w in snapshot.workers
        if any(t.seconds > 0 for t in w.service_times)
    ]
    return sum(rates) / len(rates) if rates else 0.0
