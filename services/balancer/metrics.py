"""The balancer's Prometheus metrics and the worker-discovery document.

Dispatches are counted as they finish; everything about the workers (phase, outstanding batches,
heartbeat age, busy seconds) is read from one cluster snapshot at scrape time. The same snapshot
feeds `/sd/workers`, Prometheus' HTTP service discovery, so Prometheus scrapes exactly the workers
the balancer routes to, with no static list to keep up to date."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from services.balancer.core import BalancerCore
from tideserve.metrics import Children, latency_histogram, requests_counter
from tideserve.v1 import cluster_pb2

PHASES = {
    cluster_pb2.WorkerState.READY: "ready",
    cluster_pb2.WorkerState.DRAINING: "draining",
    cluster_pb2.WorkerState.EJECTED: "ejected",
}


class BalancerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.dispatches = Children(
            requests_counter(
                registry,
                "tideserve_balancer_dispatches",
                "Batches dispatched, by model and the gRPC status code returned to the batcher.",
            )
        )
        self.dispatch_seconds = Children(
            latency_histogram(
                registry,
                "tideserve_balancer_dispatch_duration_seconds",
                "Time from a batch's arrival at the balancer to its answer, retries included.",
            )
        )

    def dispatch_done(self, model: str, code: str, seconds: float) -> None:
        self.dispatches(model, code).inc()
        self.dispatch_seconds(model).observe(seconds)


def collect(core: BalancerCore) -> list[Metric]:
    """Worker and routing figures from one snapshot, read at scrape time on the event loop."""
    snapshot = core.snapshot()
    workers = GaugeMetricFamily(
        "tideserve_balancer_workers",
        "Registered workers by phase (ready, draining, ejected).",
        labels=["phase"],
    )
    by_phase = dict.fromkeys(PHASES.values(), 0)
    per_worker = {
        "outstanding": GaugeMetricFamily(
            "tideserve_balancer_worker_outstanding_batches",
            "Batches this balancer sent to the worker that have not come back (in flight).",
            labels=["worker_id"],
        ),
        "rows": GaugeMetricFamily(
            "tideserve_balancer_worker_outstanding_rows",
            "Rows in the worker's outstanding batches.",
            labels=["worker_id"],
        ),
        "backlog": GaugeMetricFamily(
            "tideserve_balancer_worker_expected_backlog_seconds",
            "Seconds of work the balancer expects the worker holds: what routing compares.",
            labels=["worker_id"],
        ),
        "age": GaugeMetricFamily(
            "tideserve_balancer_worker_heartbeat_age_seconds",
            "Seconds since the worker's last heartbeat.",
            labels=["worker_id"],
        ),
        "errors": GaugeMetricFamily(
            "tideserve_balancer_worker_error_ratio",
            "Smoothed share of the worker's recent batches that failed or were lost.",
            labels=["worker_id"],
        ),
    }
    busy = CounterMetricFamily(
        "tideserve_balancer_worker_busy_seconds",
        "Seconds the worker spent computing, from its heartbeats; rate() is its utilisation.",
        labels=["worker_id"],
    )
    completed = CounterMetricFamily(
        "tideserve_balancer_worker_completed_batches",
        "Batches the worker completed for this balancer.",
        labels=["worker_id"],
    )
    for worker in snapshot.workers:
        phase = PHASES.get(worker.phase, "unknown")
        by_phase[phase] = by_phase.get(phase, 0) + 1
        label = [worker.worker_id]
        per_worker["outstanding"].add_metric(label, worker.outstanding_batches)
        per_worker["rows"].add_metric(label, worker.outstanding_rows)
        per_worker["backlog"].add_metric(label, worker.expected_backlog_seconds)
        per_worker["age"].add_metric(label, worker.heartbeat_age_seconds)
        per_worker["errors"].add_metric(label, worker.error_rate)
        busy.add_metric(label, worker.busy_seconds)
        completed.add_metric(label, worker.completed_batches)
    for phase, count in by_phase.items():
        workers.add_metric([phase], count)
    totals = [
        CounterMetricFamily(
            "tideserve_balancer_batches_dispatched",
            "Batches served successfully.",
            value=snapshot.dispatched_batches,
        ),
        CounterMetricFamily(
            "tideserve_balancer_rows_dispatched",
            "Rows in the batches served successfully.",
            value=snapshot.dispatched_rows,
        ),
        CounterMetricFamily(
            "tideserve_balancer_batches_failed",
            "Batches that failed on every attempt or on a worker's answer.",
            value=snapshot.failed_batches,
        ),
        CounterMetricFamily(
            "tideserve_balancer_batches_retried",
            "Batches lost on a worker and sent to another.",
            value=snapshot.retried_batches,
        ),
    ]
    policy = GaugeMetricFamily(
        "tideserve_balancer_routing_policy_info",
        "1 for the routing policy in use.",
        labels=["policy"],
    )
    policy.add_metric([snapshot.routing_policy], 1)
    return [workers, *per_worker.values(), busy, completed, *totals, policy]


def worker_targets(snapshot: cluster_pb2.ClusterSnapshot) -> list[dict[str, Any]]:
    """The workers' /metrics endpoints in Prometheus' HTTP service-discovery format: a list of
    target groups, one per worker so each carries its own labels."""
    return [
        {
            "targets": [worker.metrics_address],
            "labels": {
                "worker_id": worker.worker_id,
                "device": worker.device,
                "phase": PHASES.get(worker.phase, "unknown"),
            },
        }
        for worker in snapshot.workers
        if worker.metrics_address
    ]
