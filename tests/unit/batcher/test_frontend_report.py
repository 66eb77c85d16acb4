"""The batcher's report to the balancer: latency percentiles over a recent time window."""

from __future__ import annotations

import pytest

from services.batcher.catalog import ModelCatalog
from services.batcher.core import LATENCY_WINDOW_S, BatcherCore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class NoDispatch:
    async def dispatch(
        self, model: str, rows: int, payload: bytes, timeout: float | None, batch_id: str = ""
    ) -> bytes:
        raise AssertionError("nothing is dispatched in these tests")


def test_percentiles_cover_only_the_recent_window() -> None:
    clock = Clock()
    core = BatcherCore(ModelCatalog(clock), NoDispatch(), clock=clock)
    for _ in range(100):
        core.record(2.0)  # a slow spell, long enough ago to be forgotten
    clock.now += LATENCY_WINDOW_S + 0.1
    for latency in (0.010, 0.020, 0.030):
        core.record(latency)
        clock.now += 0.1

    report = core.frontend_report("b-1")

    assert report.latency_p50_seconds == pytest.approx(0.020)
    assert report.latency_p99_seconds == pytest.approx(0.030, abs=1e-3)
    assert report.requests_failed == 0


def test_no_recent_latency_reports_zero() -> None:
    clock = Clock()
    core = BatcherCore(ModelCatalog(clock), NoDispatch(), clock=clock)
    core.record(0.5)
    core.record(None)
    clock.now += LATENCY_WINDOW_S + 0.1

    report = core.frontend_report("b-1")

    assert (report.latency_p50_seconds, report.latency_p99_seconds) == (0.0, 0.0)
    assert report.requests_failed == 1


def test_arrival_rate_is_over_the_last_second_of_reports() -> None:
    clock = Clock()
    core = BatcherCore(ModelCatalog(clock), NoDispatch(), clock=clock)
    assert core.frontend_report("b-1").arrival_rate == 0.0  # nothing to compare with yet
    for rate in (100, 100, 10, 10):  # requests/s in each half-second report interval
        core.requests_total += rate // 2
        clock.now += 0.5
        report = core.frontend_report("b-1")
    assert report.arrival_rate == pytest.approx(10.0), "the burst a second ago has left the window"
