"""The scaler driving real worker containers through the Docker API: it starts them, they
register and serve, it scales under load without failing a request, replaces a container killed
from outside, adopts its containers after a restart, and never touches other owners' ones."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from docker.client import DockerClient

from harness.cluster import Cluster, free_port, wait_for, wait_healthy
from services.scaler.docker_runtime import OWNER_LABEL
from tests.accounting import record_load
from tests.docker.conftest import WORKER_IMAGE, container_scaler_args
from tideserve.v1 import cluster_pb2, cluster_pb2_grpc
from tideserve_tools.loadgen import LoadResult, closed_loop

pytestmark = pytest.mark.docker


@pytest.fixture
def control_plane(model_repository: Path, tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(model_repository, tmp_path / "logs").start(workers=0)
    yield cluster
    cluster.stop()


def start_scaler(cluster: Cluster, owner: str, models: str, port: int) -> subprocess.Popen:
    process = cluster.spawn(
        f"scaler-{port}",
        "services.scaler",
        "--port",
        str(port),
        *container_scaler_args(cluster, "docker", owner, models, cpus="1", memory="1g"),
        # Leave the containers running on exit so that a restarted scaler can adopt them.
        "--stop-workers-on-exit",
        "false",
    )
    # Generous: on a loaded 2-core machine a scaler has taken over 30 s to start.
    wait_healthy(f"127.0.0.1:{port}", timeout_s=120)
    return process


def owned(client: DockerClient, owner: str) -> dict[str, str]:
    """Running containers of `owner`: container id -> worker id."""
    containers = client.containers.list(
        ignore_removed=True, filters={"label": f"{OWNER_LABEL}={owner}"}
    )
    return {c.id: c.labels["tideserve.worker-id"] for c in containers}


def test_scaler_runs_worker_containers_end_to_end(
    client: DockerClient, owner_id: str, readable_models: str, control_plane: Cluster
) -> None:
    cluster = control_plane
    foreign = client.containers.run(
        WORKER_IMAGE,
        ["sleep", "300"],
        detach=True,
        network_mode="host",
        labels={OWNER_LABEL: f"{owner_id}-someone-else", "tideserve.worker-id": "foreign"},
    )
    try:
        scaler_port = free_port()
        scaler = start_scaler(cluster, owner_id, readable_models, scaler_port)
        channel = grpc.insecure_channel(f"127.0.0.1:{scaler_port}")
        admin = cluster_pb2_grpc.ScalerAdminStub(channel)

        # min_replicas=1: one container starts, registers and serves.
        cluster.wait_workers(1, timeout_s=90)
        first = owned(client, owner_id)
        assert len(first) == 1
        assert cluster.registered() == set(first.values())

        # Scale up and back down under load: not one request fails.
        async def scale_under_load() -> LoadResult:
            load = asyncio.create_task(
                closed_loop(cluster.batcher, "tiny_cnn", concurrency=8, seconds=30, timeout_s=20)
            )
            await asyncio.to_thread(admin.ScaleTo, cluster_pb2.ScaleToRequest(replicas=2))
            await asyncio.to_thread(
                wait_for, lambda: len(cluster.registered()) == 2, 90, "a second worker"
            )
            await asyncio.to_thread(admin.ScaleTo, cluster_pb2.ScaleToRequest(replicas=1))
            await asyncio.to_thread(
                wait_for, lambda: len(owned(client, owner_id)) == 1, 60, "scale-down to 1"
            )
            return await load

        result = asyncio.run(scale_under_load())
        assert result.errors == {}, result.errors
        assert result.ok > 50
        assert len(cluster.registered()) == 1

        # A container killed from outside is replaced.
        (victim_id,) = owned(client, owner_id)
        client.containers.get(victim_id).kill()
        wait_for(
            lambda: len(owned(client, owner_id)) == 1 and victim_id not in owned(client, owner_id),
            90,
            "a replacement container",
        )
        wait_for(lambda: len(cluster.registered()) == 1, 90, "the replacement registering")
        before_restart = owned(client, owner_id)

        # A restarted scaler with the same id adopts the container and starts no duplicate.
        scaler.send_signal(signal.SIGKILL)
        scaler.wait(10)
        start_scaler(cluster, owner_id, readable_models, scaler_port)
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:  # several ticks of the new scaler
            assert owned(client, owner_id) == before_restart
            time.sleep(0.5)
        workers = admin.ListWorkers(cluster_pb2.ListWorkersRequest(), timeout=5).workers
        assert {w.runtime_id for w in workers} == set(before_restart)
        channel.close()
        # The load ran during the scale-up and drain; the kill and the restart came after it.
        record_load("Docker workers: scale 1-2-1 under load, container killed, scaler SIGKILL "
                    "and restart adopting its container", result, cases=3)

        # Another owner's container was never touched.
        foreign.reload()
        assert foreign.status == "running"
    finally:
        foreign.remove(force=True)
