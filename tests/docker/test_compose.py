"""compose.yaml brings the suite up (Compose v2 where installed, else Debian's docker-compose 1.29)
and an inference through the batcher works; the scaler's default learned policy decides (its
policy file ships in the image), every service runs hardened, the credentials step hands each
service its tokens owner-only, and `down` drains and removes the workers the scaler started."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import stat
import subprocess
import threading
import time
import uuid
from pathlib import Path

import grpc
import pytest
from docker.client import DockerClient

from harness.cluster import ROOT, free_port, wait_for, wait_healthy
from services.scaler.docker_runtime import OWNER_LABEL
from tests.accounting import record
from tideserve.v1 import cluster_pb2, cluster_pb2_grpc, inference_pb2, inference_pb2_grpc
from tideserve_tools.loadgen import closed_loop, sample_request

pytestmark = pytest.mark.docker

SERVICES = ("balancer", "batcher", "scaler")
IMAGE_USER = 10001


def compose_command() -> list[str]:
    """`docker compose` (v2) if the Docker CLI has it, else Compose v1's `docker-compose`."""
    v2 = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
    if v2.returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose") is None:
        pytest.fail("neither `docker compose` nor docker-compose is installed")
    return ["docker-compose"]


def compose(env: dict[str, str], *args: str, timeout_s: float = 180) -> str:
    done = subprocess.run(
        [*compose_command(), "-f", str(ROOT / "compose.yaml"), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert done.returncode == 0, f"compose {' '.join(args)}:\n{done.stdout}{done.stderr}"
    return done.stdout + done.stderr


def assert_hardened(client: DockerClient, project: str) -> None:
    for service in SERVICES:
        (container,) = client.containers.list(
            filters={
                "label": [
                    f"com.docker.compose.project={project}",
                    f"com.docker.compose.service={service}",
                ]
            }
        )
        host = container.attrs["HostConfig"]
        assert container.attrs["Config"]["User"].split(":")[0] == str(IMAGE_USER), service
        assert host["ReadonlyRootfs"] is True, service
        assert host["CapDrop"] == ["ALL"], service
        assert not host["CapAdd"], service
        assert "no-new-privileges:true" in host["SecurityOpt"], service
        for limit in ("PidsLimit", "NanoCpus", "Memory"):
            assert host[limit], (service, limit)
        assert host["RestartPolicy"]["Name"] == "unless-stopped", service


def assert_credentials(credentials: Path) -> None:
    expected = {
        "balancer": {"worker.token", "batcher.token", "scaler.token", "operator.token"},
        "batcher": {"batcher.token"},
        "scaler": {"scaler.token", "worker.token", "operator.token"},
    }
    for reader, names in expected.items():
        assert {p.name for p in (credentials / reader).iterdir()} == names, reader
        for path in [credentials / reader, *(credentials / reader).iterdir()]:
            info = path.stat()
            assert info.st_uid == IMAGE_USER, path
            assert stat.S_IMODE(info.st_mode) & 0o077 == 0, path
    assert (credentials / "scaler" / "worker.token").read_text() == (
        credentials / "balancer" / "worker.token"
    ).read_text()


def learned_policy_decisions(
    scaler: str, token: str, stop: threading.Event
) -> list[cluster_pb2.ScalerStatus]:
    """GetStatus every 0.5 s until `stop` is set."""
    seen = []
    with grpc.insecure_channel(scaler) as channel:
        stub = cluster_pb2_grpc.ScalerAdminStub(channel)
        while not stop.wait(0.5):
            seen.append(
                stub.GetStatus(
                    cluster_pb2.GetStatusRequest(),
                    metadata=[("authorization", f"Bearer {token}")],
                    timeout=10,
                )
            )
    return seen


async def balancer_killed_under_load(
    client: DockerClient, project: str, batcher: str
) -> dict[str, object]:
    """SIGKILL the balancer container under closed-loop load; the load's outcome and the seconds
    from the kill to the first request that succeeded after it."""
    (balancer,) = client.containers.list(
        filters={"label": [f"com.docker.compose.project={project}",
                           "com.docker.compose.service=balancer"]}
    )
    load = asyncio.create_task(
        closed_loop(batcher, "tiny_cnn", concurrency=4, seconds=10, timeout_s=60)
    )
    await asyncio.sleep(3)
    # As a crash: SIGKILL to its process from the host (`docker kill` counts as a manual stop,
    # which the restart policy leaves stopped).
    killed_at = time.monotonic()
    os.kill(balancer.attrs["State"]["Pid"], signal.SIGKILL)
    async with grpc.aio.insecure_channel(batcher) as channel:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = await sample_request(stub, "tiny_cnn")
        await stub.ModelInfer(request, timeout=60)
    served_after = time.monotonic() - killed_at
    result = await load
    return {"sent": result.sent, "errors": result.errors,
            "seconds_until_served": round(served_after, 2)}


def test_compose_brings_the_suite_up_and_serves(
    client: DockerClient, readable_models: str, tmp_path: Path
) -> None:
    project = f"tideserve-test-{uuid.uuid4().hex[:8]}"
    ports = {
        f"{service}{kind}": free_port()
        for service in ("BATCHER", "BALANCER", "SCALER")
        for kind in ("_PORT", "_METRICS_PORT")
    }
    credentials = tmp_path / "credentials"
    env = {
        **os.environ,
        **{k: str(v) for k, v in ports.items()},
        "COMPOSE_PROJECT_NAME": project,
        "SCALER_ID": project,
        "MODEL_REPOSITORY": readable_models,
        "CREDENTIALS_DIR": str(credentials),
        "DOCKER_GID": str(os.stat("/var/run/docker.sock").st_gid),
    }
    try:
        compose(env, "up", "-d", "--no-build", *SERVICES)
        batcher = f"127.0.0.1:{ports['BATCHER_PORT']}"
        scaler = f"127.0.0.1:{ports['SCALER_PORT']}"
        wait_healthy(batcher, timeout_s=90)
        wait_healthy(scaler, timeout_s=90)
        assert_credentials(credentials)
        assert_hardened(client, project)
        # The scaler starts a worker container; the batcher learns of its model.
        wait_for(
            lambda: client.containers.list(
                ignore_removed=True, filters={"label": f"{OWNER_LABEL}={project}"}
            ),
            120,
            "the scaler's worker container",
        )
        with grpc.insecure_channel(batcher) as channel:
            stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
            wait_for(
                lambda: stub.ModelReady(inference_pb2.ModelReadyRequest(name="tiny_cnn")).ready,
                120,
                "tiny_cnn ready behind the batcher",
            )
        token = (credentials / "scaler" / "operator.token").read_text().strip()
        stop = threading.Event()
        statuses: list[cluster_pb2.ScalerStatus] = []
        poller = threading.Thread(
            target=lambda: statuses.extend(learned_policy_decisions(scaler, token, stop))
        )
        poller.start()
        try:
            # Enough clients for a tail latency inside the policy's trained range (p99 at least
            # a quarter of the SLO): with four, an idle machine answers too fast and every
            # decision is the fallback's.
            result = asyncio.run(
                closed_loop(batcher, "tiny_cnn", concurrency=32, seconds=10, timeout_s=60)
            )
        finally:
            stop.set()
            poller.join(timeout=30)
        assert result.errors == {}, result.errors
        assert result.ok > 0
        assert statuses, "GetStatus never answered"
        assert {s.policy for s in statuses} == {"learned"}
        reasons = {s.fallback_reason for s in statuses}
        assert not any("unusable" in r for r in reasons), reasons
        # Under load the learned policy itself decides at least once.
        assert "" in reasons, reasons

        # A balancer that crashes under load is restarted by Docker, and the batcher holds the
        # requests meanwhile: none of them fails.
        outage = asyncio.run(balancer_killed_under_load(client, project, batcher))
        assert outage["errors"] == {}, outage
        record("SIGKILL the balancer under load (compose)", cases=1, sent=outage["sent"],
               answered=outage["sent"], errors=outage["errors"],
               detail={"seconds_until_served": outage["seconds_until_served"]})
    finally:
        compose(env, "logs", "--no-color", timeout_s=60)
        compose(env, "down", "--timeout", "60", timeout_s=240)
    leftovers = client.containers.list(
        ignore_removed=True, all=True, filters={"label": f"{OWNER_LABEL}={project}"}
    )
    assert leftovers == [], "down must leave no worker container behind"
