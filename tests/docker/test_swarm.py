"""The scaler driving real workers on Docker Swarm: a one-node swarm on 127.0.0.1, each worker a
Swarm service on the host network, scaled up and down under load without failing a request;
the worker removed on scale-down is exactly the one drained; a worker killed from outside is
replaced; the scaler's exit drains and removes every worker service.

The swarm (conftest.py) is created for the test and left afterwards, unless the engine is already
in one."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from docker.client import DockerClient

from harness.cluster import Cluster, free_port, wait_for, wait_healthy
from services.scaler.docker_runtime import OWNER_LABEL, WORKER_ID_LABEL
from tests.docker.conftest import container_scaler_args
from tideserve.v1 import cluster_pb2, cluster_pb2_grpc
from tideserve_tools.loadgen import closed_loop

pytestmark = pytest.mark.docker


@pytest.fixture
def swarm_owner(swarm: DockerClient, owner_id: str) -> Iterator[str]:
    """An owner id whose services are removed after the test, and their containers gone."""
    yield owner_id
    label = {"label": f"{OWNER_LABEL}={owner_id}"}
    for service in swarm.services.list(filters=label):
        service.remove()
    wait_for(
        lambda: not swarm.containers.list(ignore_removed=True, all=True, filters=label),
        30,
        "task containers",
    )


def services(client: DockerClient, owner: str) -> dict[str, str]:
    """This owner's worker services at 1 replica: service id -> worker id."""
    found = client.services.list(filters={"label": f"{OWNER_LABEL}={owner}"})
    return {
        s.id: s.attrs["Spec"]["Labels"][WORKER_ID_LABEL]
        for s in found
        if s.attrs["Spec"]["Mode"]["Replicated"]["Replicas"] == 1
    }


def test_scaler_runs_workers_as_swarm_services(
    swarm: DockerClient,
    swarm_owner: str,
    readable_models: str,
    model_repository: Path,
    tmp_path: Path,
) -> None:
    began = time.monotonic()
    cluster = Cluster(model_repository, tmp_path / "logs").start(workers=0)
    try:
        scaler_port = free_port()
        scaler = cluster.spawn(
            "scaler",
            "services.scaler",
            "--port",
            str(scaler_port),
            "--metrics-port",
            str(free_port()),
            *container_scaler_args(
                cluster, "swarm", swarm_owner, readable_models,
                cpus="0.5", memory="768m",
            ),
            "--stop-grace-s",
            "5",
        )
        wait_healthy(f"127.0.0.1:{scaler_port}")
        channel = grpc.insecure_channel(f"127.0.0.1:{scaler_port}")
        admin = cluster_pb2_grpc.ScalerAdminStub(channel)

        cluster.wait_workers(1, timeout_s=60)
        ((first_service, first_worker),) = services(swarm, swarm_owner).items()
        spec = swarm.services.get(first_service).attrs["Spec"]
        task = spec["TaskTemplate"]
        assert task["RestartPolicy"]["Condition"] == "none"
        assert task["Resources"]["Limits"]["NanoCPUs"] == 500_000_000
        assert task["Resources"]["Reservations"]["MemoryBytes"] == 768 * 2**20
        assert cluster.registered() == set(services(swarm, swarm_owner).values())

        async def scale_under_load() -> tuple[object, set[str]]:
            load = asyncio.create_task(
                closed_loop(cluster.batcher, "tiny_cnn", concurrency=8, seconds=25, timeout_s=20)
            )
            await asyncio.to_thread(admin.ScaleTo, cluster_pb2.ScaleToRequest(replicas=3))
            await asyncio.to_thread(
                wait_for, lambda: len(cluster.registered()) == 3, 60, "three workers"
            )
            # Let the new workers take batches before two of them are drained away.
            await asyncio.sleep(3)
            before = set(services(swarm, swarm_owner).values())
            await asyncio.to_thread(admin.ScaleTo, cluster_pb2.ScaleToRequest(replicas=1))
            await asyncio.to_thread(
                wait_for, lambda: len(services(swarm, swarm_owner)) == 1, 60, "scale-down to 1"
            )
            return await load, before

        result, before = asyncio.run(scale_under_load())
        assert result.errors == {}, result.errors
        assert result.ok > 50
        # The controller retires the newest workers: the first one is the survivor, and the
        # two it drained are exactly the two whose services Swarm removed.
        remaining = set(services(swarm, swarm_owner).values())
        assert remaining == {first_worker}
        assert len(before) == 3
        wait_for(lambda: cluster.registered() == remaining, 15, "drained workers to leave")

        # A worker whose container is killed from outside is replaced by a new service. The
        # drained workers' containers may still be stopping (their grace period) after Swarm
        # removed their services: wait for the survivor's to be the only one.
        def running() -> list:
            return swarm.containers.list(
                ignore_removed=True, filters={"label": [f"{OWNER_LABEL}={swarm_owner}"]}
            )

        (container,) = wait_for(lambda: (c := running()) and len(c) == 1 and c, 30, "one container")
        container.kill()
        wait_for(
            lambda: (
                services(swarm, swarm_owner) and first_service not in services(swarm, swarm_owner)
            ),
            30,
            "a replacement service",
        )
        wait_for(
            lambda: len(cluster.registered()) == 1 and cluster.registered() != remaining,
            60,
            "the replacement registering",
        )
        channel.close()

        # The scaler's own exit drains and removes every worker service.
        scaler.send_signal(signal.SIGTERM)
        scaler.wait(60)
        assert swarm.services.list(filters={"label": f"{OWNER_LABEL}={swarm_owner}"}) == []
    finally:
        cluster.stop()
    assert time.monotonic() - began < 120
