"""The scaler's admin RPCs end to end, called with the real grpcurl as an operator would."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.cluster import Cluster, free_port, wait_for, wait_healthy

pytestmark = pytest.mark.integration

ADMIN = "tideserve.v1.ScalerAdmin"


@pytest.fixture
def scaler(model_repository: Path, tmp_path: Path) -> Iterator[tuple[Cluster, str]]:
    cluster = Cluster(model_repository, tmp_path).start(workers=0)
    address = f"127.0.0.1:{free_port()}"
    cluster.spawn(
        "scaler", "services.scaler", "--port", address.rsplit(":", 1)[1],
        "--metrics-port", str(free_port()), "--balancers", cluster.balancer, "--runtime", "process",
        "--model-repository", str(model_repository), "--worker-threads", "1",
        "--min-replicas", "1", "--max-replicas", "3", "--policy", "static", "--tick-s", "0.2",
        "--up-cooldown-s", "0", "--down-cooldown-s", "0", *cluster.scaler_flags(),
    )
    wait_healthy(address)
    yield cluster, address
    cluster.stop()


def grpcurl(address: str, method: str, body: dict | None = None) -> subprocess.CompletedProcess:
    args = [".venv/bin/grpcurl", "-plaintext", "-format-error"]
    if body is not None:
        args += ["-d", json.dumps(body)]
    return subprocess.run([*args, address, f"{ADMIN}/{method}"], capture_output=True, text=True,
                          timeout=30, cwd=Path(__file__).resolve().parents[2])


def call(address: str, method: str, body: dict | None = None) -> dict:
    done = grpcurl(address, method, body)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def error(done: subprocess.CompletedProcess) -> tuple[int, str]:
    """(gRPC status code number, message) of a failed call (grpcurl -format-error)."""
    assert done.returncode != 0, done.stdout
    status = json.loads(done.stderr)
    return status["code"], status["message"]


INVALID_ARGUMENT, NOT_FOUND = 3, 5


def ready_workers(address: str) -> list[str]:
    workers = call(address, "ListWorkers").get("workers", [])
    return sorted(w["worker_id"] for w in workers if w["state"] == "ready")


def test_operator_steers_the_scaler_with_grpcurl(scaler: tuple[Cluster, str]) -> None:
    cluster, address = scaler
    status = call(address, "GetStatus")
    assert status["policy"] == "static"
    assert (status["min_replicas"], status["max_replicas"]) == (1, 3)
    assert status["runtime"] == "process"
    wait_for(lambda: len(ready_workers(address)) == 1, 60, "the first worker")

    status = call(address, "SetBounds", {"minReplicas": 1, "maxReplicas": 2})
    assert status["max_replicas"] == 2
    code, message = error(grpcurl(address, "ScaleTo", {"replicas": 5}))
    assert code == INVALID_ARGUMENT
    assert "outside bounds 1..2" in message

    status = call(address, "ScaleTo", {"replicas": 2})
    assert status["pinned_replicas"] == 2
    wait_for(lambda: len(ready_workers(address)) == 2, 60, "a second worker")
    assert set(ready_workers(address)) == cluster.registered()

    # Draining a worker stops it; the pin keeps the count, so a fresh one replaces it.
    victim = ready_workers(address)[0]
    assert call(address, "DrainWorker", {"workerId": victim}) == {"drained": True}
    wait_for(lambda: victim not in cluster.registered(), 30, "the drained worker to leave")
    wait_for(lambda: len(ready_workers(address)) == 2, 60, "a replacement")
    assert victim not in ready_workers(address)
    code, message = error(grpcurl(address, "DrainWorker", {"workerId": "nobody"}))
    assert code == NOT_FOUND
    assert "nobody" in message

    assert call(address, "Pause")["paused"] is True
    assert call(address, "Resume").get("paused", False) is False
    status = call(address, "SetPolicy", {"name": "hpa", "parameters": {"target": 0.5}})
    assert status["policy"] == "hpa"
    assert status["policy_parameters"] == {"target": 0.5}
    code, message = error(grpcurl(address, "SetPolicy", {"name": "magic"}))
    assert code == INVALID_ARGUMENT
    assert "unknown scaling policy 'magic'" in message

    status = call(address, "ScaleTo", {"release": True})
    assert "pinned_replicas" not in status
    decisions = call(address, "GetStatus").get("recent_decisions", [])
    assert any(d.get("reason", "").startswith("pinned by operator; up") for d in decisions)
