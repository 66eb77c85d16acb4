"""Scale-down drains: twenty workers removed under steady load, and not one request fails.

Each cycle scales 1 -> 5 -> 1 through the admin RPC (four scale-down events per cycle), so the
scaler's drain-then-stop path runs twenty times while two clients keep sending requests."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from harness.cluster import Cluster, free_port, wait_for, wait_healthy
from services.worker.models import DEFAULT_MODEL
from tests.accounting import record
from tideserve.v1 import cluster_pb2, cluster_pb2_grpc
from tideserve_tools.loadgen import SteadyLoad

pytestmark = pytest.mark.integration

CYCLES = 5
HIGH = 5


def test_twenty_scale_down_events_under_load_lose_nothing(
    model_repository: Path, tmp_path: Path
) -> None:
    cluster = Cluster(model_repository, tmp_path).start(workers=0)
    port = free_port()
    cluster.spawn(
        "scaler", "services.scaler", "--port", str(port), "--metrics-port", str(free_port()),
        "--balancers", cluster.balancer,
        "--runtime", "process", "--model-repository", str(model_repository),
        "--worker-threads", "1", "--policy", "static", "--min-replicas", "1",
        "--max-replicas", str(HIGH), "--tick-s", "0.2", "--up-cooldown-s", "0",
        "--down-cooldown-s", "0", "--max-step-up", "4", "--max-step-down", "4",
        "--drain-timeout-s", "20", *cluster.scaler_flags(),
    )
    try:
        wait_healthy(f"127.0.0.1:{port}")
        cluster.wait_workers(1, timeout_s=60)
        admin = cluster_pb2_grpc.ScalerAdminStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        removed: set[str] = set()
        with SteadyLoad(cluster.batcher, DEFAULT_MODEL) as load:
            for _ in range(CYCLES):
                admin.ScaleTo(cluster_pb2.ScaleToRequest(replicas=HIGH), timeout=10)
                wait_for(lambda: len(cluster.registered()) == HIGH, 90, f"{HIGH} workers")
                before = cluster.registered()
                admin.ScaleTo(cluster_pb2.ScaleToRequest(replicas=1), timeout=10)
                wait_for(lambda: len(cluster.registered()) == 1, 90, "back to one worker")
                removed |= before - cluster.registered()
        record("scale-down: worker drained and stopped, under load", cases=len(removed),
               sent=load.sent, answered=load.sent - load.unanswered,
               errors={"RpcError": load.errors})
        assert len(removed) >= 20
        assert load.errors == 0, load.failures
        assert load.sent > 100
    finally:
        cluster.stop()
