"""The worker's Prometheus metrics: per batch, its outcome and its queue and compute times (the
figures the worker already measures for its BatchResult); at scrape time, its queue, in-flight
batches and busy seconds. Prometheus finds a worker through the balancer's /sd/workers, which
labels it with its worker_id."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from services.worker.core import WorkerCore
from tideserve.metrics import Children, latency_histogram, requests_counter


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.batches = Children(
            requests_counter(
                registry,
                "tideserve_worker_batches",
                "Batches executed, by model and gRPC status code.",
            )
        )
        self.queue_seconds = Children(
            latency_histogram(
                registry,
                "tideserve_worker_queue_wait_seconds",
                "Time a batch waited in the worker for the model's executor.",
            )
        )
        self.compute_seconds = Children(
            latency_histogram(
                registry,
                "tideserve_worker_compute_seconds",
                "Time of the model's forward pass on a batch (the device's work).",
            )
        )

    def batch_done(self, model: str, queue_s: float, compute_s: float) -> None:
        self.batches(model, "OK").inc()
        self.queue_seconds(model).observe(queue_s)
        self.compute_seconds(model).observe(compute_s)

    def batch_failed(self, model: str, code: str) -> None:
        self.batches(model, code).inc()


def collect(core: WorkerCore) -> list[Metric]:
    """Load figures read at scrape time on the event loop: the same ones the heartbeats carry."""
    queued = GaugeMetricFamily(
        "tideserve_worker_queued_batches",
        "Batches waiting for the model's executor.",
        value=max(core.queued, 0),
    )
    inflight = GaugeMetricFamily(
        "tideserve_worker_inflight_batches", "Batches being computed.", value=core.inflight
    )
    busy = CounterMetricFamily(
        "tideserve_worker_busy_seconds",
        "Seconds spent computing since start; rate() is the worker's utilisation.",
        value=core.busy_seconds,
    )
    draining = GaugeMetricFamily(
        "tideserve_worker_draining", "1 while the worker is draining.", value=int(core.draining)
    )
    return [queued, inflight, busy, draining]
