"""Prometheus plumbing shared by every service: one registry per process, an HTTP endpoint for
`/metrics` (and any extra JSON routes, such as the balancer's worker discovery), and a collector
that reads a service's state at scrape time.

Why scrape-time collectors: gauges such as queue depth or in-flight batches change on every
request; reading them only when Prometheus asks costs nothing on the hot path. The scrape runs on
the HTTP server's thread while the service's state belongs to its asyncio loop, so a
`LoopCollector` hands the read to the loop and waits for it: the figures of one scrape come from one
consistent moment and no dict is iterated while the loop mutates it.

Counters and histograms that must see every event (requests by status, latencies) are ordinary
prometheus-client metrics: an increment or an observe is thread-safe and costs about a microsecond.

Naming follows Prometheus' conventions: the `tideserve_<service>_` prefix, base units in the name
(`_seconds`, `_bytes`, `_rows`), `_total` on counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import TimeoutError as FutureTimeout
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Generic, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

# Latency buckets from 0.5 ms to 10 s: batches of small models take a millisecond or two, while a
# queue under overload holds requests for seconds.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
# Rows per batch: powers of two up to the largest max_batch_size we expect, so each bucket boundary
# matches a common max_batch_size.
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

# A scrape that cannot get the loop's attention this fast reports the loop as stuck instead.
LOOP_READ_TIMEOUT_S = 2.0

JsonRoute = Callable[[], Any]
T = TypeVar("T")


def new_registry() -> CollectorRegistry:
    """A registry for one service process, with the standard process and platform metrics
    (CPU seconds, resident memory, open fds, Python version). A registry of our own, not the
    library's global one, so tests can build several services' metrics in one interpreter."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


def requests_counter(registry: CollectorRegistry, name: str, documentation: str) -> Counter:
    """A `<name>_total` counter labelled by model and gRPC status code (OK, NOT_FOUND, ...)."""
    return Counter(name, documentation, ["model", "code"], registry=registry)


def latency_histogram(
    registry: CollectorRegistry, name: str, documentation: str, labels: Iterable[str] = ("model",)
) -> Histogram:
    return Histogram(name, documentation, list(labels), registry=registry, buckets=LATENCY_BUCKETS)


M = TypeVar("M", Counter, Histogram)


class Children(Generic[M]):
    """A labelled metric's children, kept by label values: `.labels()` takes a lock and hashes
    its arguments on every call, which a per-batch path would pay several times over. For
    labels of bounded cardinality only (models, status codes): a child is never dropped."""

    def __init__(self, metric: M) -> None:
        self.metric = metric
        self._children: dict[tuple[str, ...], M] = {}

    def __call__(self, *values: str) -> M:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self.metric.labels(*values)
        return child


def on_loop(loop: asyncio.AbstractEventLoop, read: Callable[[], T]) -> T:
    """Call `read` on `loop` from another thread and return its result; directly when already on
    `loop` (waiting for the loop from inside it would never end). Raises TimeoutError when the
    loop does not answer within LOOP_READ_TIMEOUT_S."""
    with contextlib.suppress(RuntimeError):
        if asyncio.get_running_loop() is loop:
            return read()

    async def call() -> T:
        return read()

    future = asyncio.run_coroutine_threadsafe(call(), loop)
    try:
        return future.result(LOOP_READ_TIMEOUT_S)
    except FutureTimeout:
        future.cancel()
        raise TimeoutError("the event loop did not answer in time") from None


class LoopCollector(Collector):
    """Yields the metric families `read()` builds, running `read` on `loop` at scrape time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, read: Callable[[], list[Metric]]) -> None:
        self.loop = loop
        self.read = read

    def collect(self) -> Iterable[Metric]:
        try:
            return on_loop(self.loop, self.read)
        except TimeoutError:
            logger.warning("metrics scrape: the event loop did not answer in time")
            return []


class MetricsServer:
    """`/metrics` in the Prometheus text format, plus JSON routes, on a daemon thread.

    prometheus-client's own server answers every path with the metrics, so it cannot also serve
    the worker-discovery document; the standard library's threading HTTP server can, and adds no
    dependency."""

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        json_routes: Mapping[str, JsonRoute] | None = None,
    ) -> None:
        routes = dict(json_routes or {})

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's method name)
                path = self.path.split("?", 1)[0]
                try:
                    if path == "/metrics":
                        body, content_type = generate_latest(registry), CONTENT_TYPE_LATEST
                    elif path in routes:
                        body = json.dumps(routes[path]()).encode()
                        content_type = "application/json"
                    else:
                        self.send_error(404, "try /metrics")
                        return
                except Exception:
                    logger.exception("metrics endpoint failed", extra={"path": path})
                    self.send_error(500)
                    return
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                """Scrapes come every few seconds; they are not worth a log line each."""

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self.host = host
        self.port: int = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="metrics-http", daemon=True
        )

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> MetricsServer:
        self._thread.start()
        logger.info("metrics endpoint listening", extra={"address": self.address})
        return self

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def start_metrics_server(
    host: str,
    port: int,
    registry: CollectorRegistry,
    json_routes: Mapping[str, JsonRoute] | None = None,
) -> MetricsServer:
    """Serve `registry` on host:port (0 picks a free port; see `.port`)."""
    return MetricsServer(host, port, registry, json_routes).start()
