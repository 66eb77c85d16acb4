"""The one percentile definition (nearest rank) and the latency record every driver, benchmark and
report uses."""

from __future__ import annotations

import math

import pytest

from tideserve_tools.latency import LatencyRecord, percentile
from tideserve_tools.loadgen import arrival_times, per_second, steady_arrivals

TEN = [0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 1.0, 0.4, 0.8, 0.6]


@pytest.mark.parametrize(
    ("q", "expected"),
    [(0, 0.1), (10, 0.1), (11, 0.2), (50, 0.5), (55, 0.6), (90, 0.9), (99, 1.0), (100, 1.0)],
)
def test_the_percentile_is_the_sample_of_nearest_rank(q: float, expected: float) -> None:
    # Rank ceil(q/100 * n): the smallest sample with at least q % at or below it, never a value
    # between two samples.
    assert percentile(TEN, q) == expected


def test_a_tail_percentile_of_few_samples_is_a_real_request() -> None:
    assert percentile([1.0, 2.0, 3.0, 100.0], 99) == 100.0
    assert percentile([1.0, 2.0, 3.0, 100.0], 75) == 3.0
    assert percentile([7.0], 50) == 7.0


def test_no_samples_give_nan_and_q_outside_0_100_is_refused() -> None:
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        percentile(TEN, 101)


def test_the_record_keeps_answers_and_failures_apart() -> None:
    record = LatencyRecord()
    for latency in (0.002, 0.001, 0.003):
        record.add("OK", latency)
    record.add("RESOURCE_EXHAUSTED", 0.0005)
    record.error("CLIENT_OVERLOAD")

    assert (record.ok, record.failed, record.sent) == (3, 2, 5)
    assert record.codes() == {"OK": 3, "RESOURCE_EXHAUSTED": 1, "CLIENT_OVERLOAD": 1}
    assert record.percentile_ms(50) == pytest.approx(2.0)
    assert record.percentile_ms(100, "RESOURCE_EXHAUSTED") == pytest.approx(0.5)
    assert math.isnan(record.percentile_ms(50, "CLIENT_OVERLOAD"))
    with pytest.raises(ValueError, match="latency"):
        record.add("OK", None)


def test_merged_records_count_every_part() -> None:
    first, second = LatencyRecord(), LatencyRecord()
    first.add("OK", 0.001)
    first.add("UNAVAILABLE", 0.004)
    second.add("OK", 0.002)
    second.add("UNAVAILABLE", 0.005)

    first.merge(second)

    assert first.latencies == [0.001, 0.002]
    assert first.errors == {"UNAVAILABLE": 2}
    assert first.error_latencies == {"UNAVAILABLE": [0.004, 0.005]}


def test_arrivals_follow_each_seconds_rate() -> None:
    rates = [100.0, 0.0, 400.0]
    counts = per_second(arrival_times(rates, seed=1), len(rates))
    assert counts[1] == 0
    assert 50 < counts[0] < 150
    assert 300 < counts[2] < 500


def test_evenly_spaced_arrivals_at_cv_0() -> None:
    times = steady_arrivals(4.0, 1.5, cv=0)
    assert times == pytest.approx([0.25, 0.5, 0.75, 1.25])
