"""Triton's statistics extension: per model and version, counts and cumulative durations of the
requests and batches this batcher served, answered by GRPCInferenceService/ModelStatistics.

The events are those the Prometheus metrics count (services/batcher/metrics.py feeds both from
the same calls): `success.count` is tideserve_batcher_requests_total{code="OK"} of the model,
`fail.count` the sum of its other codes, and `execution_count` / `inference_count` the batches
and rows that came back with a result. As in Triton, the queue and compute durations count
successful requests, each charged its batch's whole time; `batch_stats` count batches.

Durations: `queue` is the request's wait in this batcher's queue plus its batch's wait in the
worker; `compute_input` / `compute_infer` / `compute_output` are the worker's decoding of the
inputs, the forward pass, and the encoding of the outputs, carried back in the BatchResult. The
hops between batcher, balancer and worker are in `success` alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from tideserve.errors import NotFound
from tideserve.v1 import cluster_pb2, inference_pb2

NS_PER_S = 1_000_000_000


class ServedModels(Protocol):
    """What is served now (the batcher's model catalog)."""

    def served_names(self) -> Iterable[str]: ...

    def served_versions(self, name: str) -> Sequence[str]:
        """The versions of `name` served now, oldest first; empty if it is not served."""
        ...


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        """`count` events of `seconds` each."""
        self.count += count
        self.ns += round(seconds * NS_PER_S) * count

    def to_proto(self, target: inference_pb2.StatisticDuration) -> None:
        target.count, target.ns = self.count, self.ns


@dataclass
class BatchSizeStatistics:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass
class VersionStatistics:
    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    batches: dict[int, BatchSizeStatistics] = field(default_factory=dict)


class InferenceStatistics:
    """The counters, kept on the event loop (no locking). A request that named no version is
    counted against the latest served. Counters of a version no longer served are kept (and
    reported again if it returns), as Triton keeps them until the model is unloaded."""

    def __init__(self, served: ServedModels, wall_clock: Callable[[], float] = time.time) -> None:
        self.served = served
        self.wall_clock = wall_clock
        self.models: dict[tuple[str, str], VersionStatistics] = {}

    def _of(self, model: str, version: str) -> VersionStatistics:
        if not version:
            versions = self.served.served_versions(model)
            version = versions[-1] if versions else ""
        key = (model, version)
        stats = self.models.get(key)
        if stats is None:
            stats = self.models[key] = VersionStatistics()
        return stats

    def request_done(self, model: str, version: str, latency_s: float | None) -> None:
        """One request of a served model answered: successfully in `latency_s`, or failed
        (None; a failed request's time is not measured, as Prometheus has none either)."""
        stats = self._of(model, version)
        if latency_s is None:
            stats.fail.add(0.0)
        else:
            stats.success.add(latency_s)
            stats.last_inference_ms = int(self.wall_clock() * 1000)

    def batch_served(
        self,
        model: str,
        version: str,
        rows: int,
        queue_waits: Sequence[float],
        result: cluster_pb2.BatchResult,
    ) -> None:
        """A batch of `rows` came back with a result; `queue_waits` are its requests' waits in
        the batcher's queue (the worker's queue time is added to each)."""
        stats = self._of(model, version)
        requests = len(queue_waits)
        stats.execution_count += 1
        stats.inference_count += rows
        for wait in queue_waits:
            stats.queue.add(wait + result.queue_seconds)
        stats.compute_input.add(result.input_seconds, requests)
        stats.compute_infer.add(result.compute_seconds, requests)
        stats.compute_output.add(result.output_seconds, requests)
        by_size = stats.batches.get(rows)
        if by_size is None:
            by_size = stats.batches[rows] = BatchSizeStatistics()
        by_size.compute_input.add(result.input_seconds)
        by_size.compute_infer.add(result.compute_seconds)
        by_size.compute_output.add(result.output_seconds)

    def report(self, name: str = "", version: str = "") -> inference_pb2.ModelStatisticsResponse:
        """Statistics of every served version of `name` (every served model when empty), or of
        `version` alone; NotFound for a model or version not served."""
        response = inference_pb2.ModelStatisticsResponse()
        if name and not self.served.served_versions(name):
            raise NotFound(f"no statistics for model {name!r}: it is not served")
        names = [name] if name else self._served_names()
        for model in names:
            versions = list(self.served.served_versions(model))
            if version:
                if version not in versions:
                    raise NotFound(
                        f"no statistics for version {version!r} of model {model!r}; served "
                        f"versions are {versions}"
                    )
                versions = [version]
            for served in versions:
                self._add(response, model, served, self.models.get((model, served)))
        return response

    def _served_names(self) -> list[str]:
        return sorted(self.served.served_names())

    @staticmethod
    def _add(
        response: inference_pb2.ModelStatisticsResponse,
        model: str,
        version: str,
        stats: VersionStatistics | None,
    ) -> None:
        entry = response.model_stats.add(name=model, version=version)
        if stats is None:
            return
        entry.last_inference = stats.last_inference_ms
        entry.inference_count = stats.inference_count
        entry.execution_count = stats.execution_count
        infer = entry.inference_stats
        stats.success.to_proto(infer.success)
        stats.fail.to_proto(infer.fail)
        stats.queue.to_proto(infer.queue)
        stats.compute_input.to_proto(infer.compute_input)
        stats.compute_infer.to_proto(infer.compute_infer)
        stats.compute_output.to_proto(infer.compute_output)
        for size, by_size in sorted(stats.batches.items()):
            batch = entry.batch_stats.add(batch_size=size)
            by_size.compute_input.to_proto(batch.compute_input)
            by_size.compute_infer.to_proto(batch.compute_infer)
            by_size.compute_output.to_proto(batch.compute_output)
