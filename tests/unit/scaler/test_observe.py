"""What the live scaler makes of a cluster snapshot: the latency it reports to the policies."""

from __future__ import annotations

import pytest

from services.scaler.observe import ClusterObserver, ClusterView
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


def balancer_snapshot(
    at: float, rows: int, outstanding: int, p99_s: float
) -> cluster_pb2.ClusterSnapshot:
    return cluster_pb2.ClusterSnapshot(
        timestamp_unix=at,
        dispatched_rows=rows,
        workers=[
            cluster_pb2.WorkerState(
                worker_id="w1", phase=cluster_pb2.WorkerState.READY, outstanding_rows=outstanding
            )
        ],
        frontends=[cluster_pb2.FrontendReport(batcher_id="b", latency_p99_seconds=p99_s)],
    )


def test_view_merges_every_balancer() -> None:
    view = ClusterView()
    view.update("a", balancer_snapshot(1.0, 100, 3, 0.1))
    merged = view.update("b", balancer_snapshot(2.0, 50, 4, 0.2))

    (worker,) = merged.workers
    assert worker.outstanding_rows == 7, "each balancer's batches on the worker count"
    (frontend,) = merged.frontends
    assert frontend.latency_p99_seconds == 0.2, "the newest report of a batcher"
    assert merged.timestamp_unix == 2.0
    # Rows dispatched before the scaler followed a balancer are not new.
    assert merged.dispatched_rows == 0


def test_view_counts_rows_of_every_balancer_across_restarts_and_lost_streams() -> None:
    view = ClusterView()
    view.update("a", balancer_snapshot(1.0, 100, 0, 0.1))
    view.update("b", balancer_snapshot(1.0, 50, 0, 0.1))
    view.update("a", balancer_snapshot(2.0, 130, 0, 0.1))
    assert view.update("b", balancer_snapshot(2.0, 60, 0, 0.1)).dispatched_rows == 40
    # b restarts: its counter starts again from zero, and its new rows count.
    assert view.update("b", balancer_snapshot(3.0, 5, 0, 0.1)).dispatched_rows == 45
    # a's stream breaks and comes back: its rows meanwhile count once, its past not again.
    view.lost("a")
    assert [w.outstanding_rows for w in view.merged().workers] == [0]
    assert view.update("a", balancer_snapshot(4.0, 150, 0, 0.1)).dispatched_rows == 65


def test_view_of_a_lost_balancer_leaves_the_others() -> None:
    view = ClusterView()
    view.update("a", balancer_snapshot(1.0, 0, 3, 0.1))
    view.update("b", balancer_snapshot(1.0, 0, 4, 0.1))
    view.lost("a")

    (worker,) = view.merged().workers
    assert worker.outstanding_rows == 4
    view.lost("b")
    assert view.merged() == cluster_pb2.ClusterSnapshot()
