"""deploy/swarm/stack.yaml deployed for real with `docker stack deploy` on a one-node swarm on
127.0.0.1: the control plane comes up on the host network with its token secrets, hardened, its
scaler starts a worker service, the batcher serves through it; a balancer task killed under load
is replaced at once and the batcher serves again; scaling the scaler to 0 drains and removes its
workers, and `docker stack rm` removes the rest."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import uuid
from pathlib import Path

import grpc
import pytest
from docker.client import DockerClient
from docker.models.containers import Container

from harness.cluster import ROOT, free_port, wait_for, wait_healthy
from services.scaler.docker_runtime import OWNER_LABEL
from tests.accounting import record
from tests.docker.conftest import IMAGES
from tideserve.credentials import create_credentials
from tideserve.v1 import inference_pb2_grpc
from tideserve_tools.loadgen import LoadResult, closed_loop, sample_request

pytestmark = pytest.mark.docker

STACK_FILE = ROOT / "deploy" / "swarm" / "stack.yaml"
# The token files each service is given, as Docker secrets in /run/secrets.
SECRETS = {
    "balancer": {"worker.token", "batcher.token", "scaler.token", "operator.token"},
    "batcher": {"batcher.token"},
    "scaler": {"scaler.token", "worker.token", "operator.token"},
}


def docker_cli(*args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        ["docker", *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def task_containers(swarm: DockerClient, stack: str, service: str) -> list[Container]:
    return swarm.containers.list(
        filters={"label": f"com.docker.swarm.service.name={stack}_{service}"}
    )


def assert_hardened(container: Container) -> None:
    host = container.attrs["HostConfig"]
    assert container.attrs["Config"]["User"].split(":")[0] == "10001"
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"]
    for limit in ("PidsLimit", "NanoCpus", "Memory"):
        assert host[limit], limit
    # Stacks cannot set no-new-privileges; the engine here sets it for every container.
    status = container.exec_run(["grep", "NoNewPrivs", "/proc/1/status"]).output.decode()
    assert status.split() == ["NoNewPrivs:", "1"], status


async def outage_after_kill(
    swarm: DockerClient, stack: str, batcher: str
) -> tuple[float, LoadResult]:
    """Kill the balancer's task container (SIGKILL) while two clients keep the batcher busy;
    seconds from the kill until a request sent after Swarm started the replacement succeeds."""
    async with grpc.aio.insecure_channel(batcher) as channel:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = await sample_request(stub, "tiny_cnn")
        load = asyncio.create_task(
            closed_loop(batcher, "tiny_cnn", concurrency=2, seconds=15, timeout_s=5)
        )
        await asyncio.sleep(1)
        (old,) = task_containers(swarm, stack, "balancer")
        await asyncio.to_thread(old.kill)
        killed = time.monotonic()
        deadline = killed + 60
        while not [c for c in task_containers(swarm, stack, "balancer") if c.id != old.id]:
            assert time.monotonic() < deadline, "Swarm started no new balancer task"
            await asyncio.sleep(0.05)
        while True:
            try:
                await stub.ModelInfer(request, timeout=1)
                break
            except grpc.aio.AioRpcError:
                assert time.monotonic() < deadline, "the batcher did not serve again"
                await asyncio.sleep(0.05)
        outage = time.monotonic() - killed
        result = await load
    assert result.ok > 0
    return outage, result


def test_stack_deploys_and_serves(
    swarm: DockerClient, readable_models: str, tmp_path: Path
) -> None:
    stack = f"tstest{uuid.uuid4().hex[:8]}"
    owner = f"{stack}-scaler"
    ports = {
        name: str(free_port())
        for name in (
            "BATCHER_PORT",
            "BALANCER_PORT",
            "SCALER_PORT",
            "BATCHER_METRICS_PORT",
            "BALANCER_METRICS_PORT",
            "SCALER_METRICS_PORT",
        )
    }
    env = {
        **os.environ,
        **ports,
        **{f"{role.upper()}_IMAGE": image for role, image in IMAGES.items()},
        "SCALER_ID": owner,
        "MODEL_REPOSITORY": readable_models,
        "WORKER_CPUS": "0.5",
        "WORKER_MEMORY": "768m",
        "DOCKER_GID": str(Path("/var/run/docker.sock").stat().st_gid),
        "CREDENTIALS_DIR": str(tmp_path / "credentials"),
        "WORKER_TOKEN_SECRET": f"{stack}_worker_token",
    }
    create_credentials(tmp_path / "credentials")
    owned = {"label": f"{OWNER_LABEL}={owner}"}
    try:
        docker_cli("stack", "deploy", "--compose-file", str(STACK_FILE), stack, env=env)
        for name in ("BALANCER_PORT", "BATCHER_PORT", "SCALER_PORT"):
            wait_healthy(f"127.0.0.1:{ports[name]}", timeout_s=60)
        wait_for(lambda: len(swarm.services.list(filters=owned)) == 1, 30, "a worker service")
        batcher = f"127.0.0.1:{ports['BATCHER_PORT']}"
        result = wait_for(
            lambda: (
                (
                    r := asyncio.run(
                        closed_loop(batcher, "tiny_cnn", concurrency=2, seconds=2, timeout_s=10)
                    )
                ).ok
                and not r.errors
                and r
            ),
            60,
            "the batcher serving through the worker",
        )
        assert result.ok > 0
        for service, tokens in SECRETS.items():
            (container,) = task_containers(swarm, stack, service)
            assert_hardened(container)
            listing = container.exec_run(["ls", "-ln", "/run/secrets"]).output.decode()
            modes = {line.split()[-1]: line.split()[:4] for line in listing.splitlines()[1:]}
            assert set(modes) == tokens, (service, listing)
            for mode, _, uid, _ in modes.values():
                assert (mode, uid) == ("-r--------", "10001"), (service, listing)

        outage, load = asyncio.run(outage_after_kill(swarm, stack, batcher))
        # The figure goes to the notes; the bound only keeps a broken restart from passing.
        record("SIGKILL the balancer task under load (Swarm)", cases=1, sent=load.sent,
               answered=load.sent, errors=load.errors,
               detail={"seconds_until_served": round(outage, 2)})
        assert outage < 30

        # The scaler drains and removes its workers when stopped (while the balancer runs).
        docker_cli("service", "scale", "--detach", f"{stack}_scaler=0")
        wait_for(lambda: not swarm.services.list(filters=owned), 60, "worker services removed")
    finally:
        subprocess.run(["docker", "stack", "rm", stack], capture_output=True, timeout=60)
        for service in swarm.services.list(filters=owned):
            service.remove()
        wait_for(
            lambda: (
                not swarm.containers.list(
                    ignore_removed=True,
                    all=True,
                    filters={"label": f"com.docker.stack.namespace={stack}"},
                )
                and not swarm.containers.list(ignore_removed=True, all=True, filters=owned)
            ),
            60,
            "the stack's containers to go",
        )
