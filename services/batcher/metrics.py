"""The batcher's Prometheus metrics. The batcher is the hot path, so per request it does one
counter increment and one histogram observe; per batch three observes; every gauge is read from
the schedulers when Prometheus scrapes (`collect`)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from services.batcher.core import BatcherCore
from services.batcher.statistics import InferenceStatistics
from tideserve.metrics import BATCH_SIZE_BUCKETS, Children, latency_histogram
from tideserve.v1 import cluster_pb2

# Requests for models the batcher does not serve share one label value, so a client sending
# arbitrary names cannot grow the number of series without bound.
UNKNOWN_MODEL = "(unknown)"


class BatcherMetrics:
    """`served(name)` says whether a model is one the batcher serves: only those get a label of
    their own, whatever status code the request was answered with (a name too long, a version
    that does not exist, a catalog not yet synced). `statistics` (Triton's statistics extension)
    is fed from the same calls, so both count the same events."""

    def __init__(
        self,
        registry: CollectorRegistry,
        served: Callable[[str], bool],
        statistics: InferenceStatistics | None = None,
        versions: Callable[[str], tuple[str, ...]] = lambda model: (),
    ) -> None:
        self.served = served
        self.versions = versions
        self.statistics = statistics
        self.requests = Children(
            Counter(
                "tideserve_batcher_requests",
                "Inference requests answered, by model, version and gRPC status code. The "
                "version is the one that answered, or the one asked for if it failed; empty "
                "when none was asked for or the one asked for is not served.",
                ["model", "version", "code"],
                registry=registry,
            )
        )
        self.request_seconds = Children(
            latency_histogram(
                registry,
                "tideserve_batcher_request_duration_seconds",
                "End-to-end latency of successful requests as the batcher sees them: arrival to "
                "response, queueing, dispatch and compute included; by model and the version "
                "that answered.",
                ("model", "version"),
            )
        )
        self.queue_seconds = Children(
            latency_histogram(
                registry,
                "tideserve_batcher_queue_wait_seconds",
                "Per batch: how long its oldest request waited in the batcher's queue before "
                "the batch was dispatched.",
            )
        )
        self.dispatch_seconds = Children(
            latency_histogram(
                registry,
                "tideserve_batcher_dispatch_duration_seconds",
                "Per batch: round trip through balancer and worker (compute included).",
            )
        )
        self.batch_rows = Children(
            Histogram(
                "tideserve_batcher_batch_size_rows",
                "Rows per dispatched batch.",
                ["model"],
                registry=registry,
                buckets=BATCH_SIZE_BUCKETS,
            )
        )
        self._labelled: set[tuple[str, str]] = set()

    def request_done(
        self, model: str, code: str, latency_s: float | None, version: str = ""
    ) -> None:
        """One request answered with `code`; `latency_s` is given for successful ones, `version`
        is the one that answered (or the one asked for; empty: the latest)."""
        if not self.served(model):
            model = UNKNOWN_MODEL
        elif self.statistics is not None:
            self.statistics.request_done(model, version, latency_s)
        # Only served versions get a label value: a client naming arbitrary versions cannot
        # grow the number of series. A version labelled once keeps its label after it retires.
        if version and (model, version) not in self._labelled:
            if model != UNKNOWN_MODEL and version in self.versions(model):
                self._labelled.add((model, version))
            else:
                version = ""
        self.requests(model, version, code).inc()
        if latency_s is not None:
            self.request_seconds(model, version).observe(latency_s)

    def batch_done(self, model: str, rows: int, queue_wait_s: float, dispatch_s: float) -> None:
        """One batch came back from the balancer (successfully or not)."""
        self.batch_rows(model).observe(rows)
        self.queue_seconds(model).observe(queue_wait_s)
        self.dispatch_seconds(model).observe(dispatch_s)

    def batch_served(
        self,
        model: str,
        version: str,
        rows: int,
        queue_waits: list[float],
        result: cluster_pb2.BatchResult,
    ) -> None:
        """One batch came back with a result (after `batch_done`'s figures were taken)."""
        if self.statistics is not None:
            self.statistics.batch_served(model, version, rows, queue_waits, result)


def collect(core: BatcherCore) -> list[Metric]:
    """Gauges read from the schedulers at scrape time (on the event loop)."""
    depth = GaugeMetricFamily(
        "tideserve_batcher_queue_depth_requests",
        "Requests waiting in the batcher's queue, by model.",
        labels=["model"],
    )
    inflight = GaugeMetricFamily(
        "tideserve_batcher_inflight_batches",
        "Batches dispatched and not yet answered, by model.",
        labels=["model"],
    )
    workers = GaugeMetricFamily(
        "tideserve_batcher_ready_workers",
        "Workers ready for each model, as the balancer last reported.",
        labels=["model"],
    )
    queued: dict[str, int] = {}
    sent: dict[str, int] = {}
    for (name, _), scheduler in core.schedulers.items():
        queued[name] = queued.get(name, 0) + len(scheduler.queue)
        sent[name] = sent.get(name, 0) + scheduler.inflight
    for name in sorted(queued):
        depth.add_metric([name], queued[name])
        inflight.add_metric([name], sent[name])
    for name in sorted(core.catalog.entries):
        workers.add_metric([name], core.catalog.worker_counts.get(name, 0))
    return [depth, inflight, workers]
