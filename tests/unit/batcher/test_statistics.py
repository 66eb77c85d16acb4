"""Triton's statistics extension: the counters InferenceStatistics keeps from requests and
batches, and the ModelStatistics answer built from them."""

from __future__ import annotations

import pytest

from services.batcher.statistics import InferenceStatistics
from tideserve.errors import NotFound
from tideserve.v1 import cluster_pb2


class Served:
    def __init__(self, models: dict[str, tuple[str, ...]]) -> None:
        self.models = models

    def served_names(self) -> list[str]:
        return sorted(self.models)

    def served_versions(self, name: str) -> tuple[str, ...]:
        return self.models.get(name, ())


def result(queue: float, input_s: float, compute: float, output: float) -> cluster_pb2.BatchResult:
    return cluster_pb2.BatchResult(
        queue_seconds=queue, input_seconds=input_s, compute_seconds=compute, output_seconds=output
    )


def test_requests_and_batches_are_counted_per_version() -> None:
    served = Served({"m": ("1", "2")})
    statistics = InferenceStatistics(served, wall_clock=lambda: 1234.5)
    # Two requests of 1 and 3 rows in one batch, then a lone request of 2 rows.
    statistics.batch_served("m", "2", 4, [0.010, 0.020], result(0.001, 0.002, 0.100, 0.003))
    statistics.batch_served("m", "2", 2, [0.005], result(0.0, 0.001, 0.050, 0.002))
    for latency in (0.2, 0.3, 0.1):
        statistics.request_done("m", "2", latency)
    statistics.request_done("m", "", None)  # no version named: the latest, 2

    (one, two) = statistics.report("m").model_stats
    assert (one.name, one.version, one.execution_count, one.inference_count) == ("m", "1", 0, 0)
    assert not one.inference_stats.success.count
    assert (two.version, two.execution_count, two.inference_count) == ("2", 2, 6)
    assert two.last_inference == 1234500
    stats = two.inference_stats
    assert (stats.success.count, stats.success.ns) == (3, 600_000_000)
    assert stats.fail.count == 1
    # Per request, the batcher's queue plus the worker's; compute charged to each request.
    assert (stats.queue.count, stats.queue.ns) == (3, 11_000_000 + 21_000_000 + 5_000_000)
    assert (stats.compute_infer.count, stats.compute_infer.ns) == (3, 250_000_000)
    assert (stats.compute_input.count, stats.compute_input.ns) == (3, 5_000_000)
    assert (stats.compute_output.count, stats.compute_output.ns) == (3, 8_000_000)
    by_size = {b.batch_size: b for b in two.batch_stats}
    assert sorted(by_size) == [2, 4]
    assert (by_size[4].compute_infer.count, by_size[4].compute_infer.ns) == (1, 100_000_000)
    assert (by_size[2].compute_output.count, by_size[2].compute_output.ns) == (1, 2_000_000)


def test_report_covers_every_served_model_or_one_version() -> None:
    statistics = InferenceStatistics(Served({"a": ("1",), "b": ("3", "4")}))
    everything = statistics.report().model_stats
    assert [(s.name, s.version) for s in everything] == [("a", "1"), ("b", "3"), ("b", "4")]
    assert [s.version for s in statistics.report("b", "3").model_stats] == ["3"]


def test_unknown_model_or_version_is_not_found_naming_what_is_served() -> None:
    statistics = InferenceStatistics(Served({"a": ("1",)}))
    with pytest.raises(NotFound, match="'nope'"):
        statistics.report("nope")
    with pytest.raises(NotFound, match=r"served versions are \['1'\]"):
        statistics.report("a", "7")
