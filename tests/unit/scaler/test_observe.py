"""What the live scaler makes of a cluster snapshot: the latency it reports to the policies."""

from __future__ import annotations

import pytest

from services.scaler.observe import ClusterObserver
from services.scaler.planner import P99_OVER_TAU, ServiceProfile
from tideserve.v1 import cluster_pb2

PROFILE = ServiceProfile(model="m", batch_sizes=(1, 8), seconds=(0.10, 0.24), cold_start_s=2.0)


def context(p99_s: float) -> float:
    observer = ClusterObserver(slo_s=0.5, profile=PROFILE)
    snapshot = cluster_pb2.ClusterSnapshot(
        frontends=[cluster_pb2.FrontendReport(batcher_id="b", latency_p99_seconds=p99_s)]
    )
    observer.observe(snapshot)
    return observer.context(snapshot, now=0.0, current=1, ready=1).latency_p99_s


def test_measured_latency_is_passed_on() -> None:
    assert context(0.321) == pytest.approx(0.321)


def test_idle_cluster_reports_a_lone_batch_latency_as_the_simulator_does() -> None:
    lone_batch = PROFILE.steady_batch_time(0.0)
    assert lone_batch == pytest.approx(0.10, rel=0.01)
    assert context(0.0) == pytest.approx(P99_OVER_TAU * lone_batch)
