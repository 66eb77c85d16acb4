"""deploy/swarm/stack.yaml deployed for real with `docker stack deploy` on a one-node swarm on
127.0.0.1: the control plane comes up on the host network, its scaler starts a worker service,
the batcher serves through it; scaling the scaler to 0 drains and removes its workers, and
`docker stack rm` removes the rest."""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from pathlib import Path

import pytest
from docker.client import DockerClient

from services.scaler.docker_runtime import OWNER_LABEL
from tests.cluster import ROOT, free_port, wait_for, wait_healthy
from tests.docker.conftest import IMAGE
from tideserve.loadgen import closed_loop

pytestmark = pytest.mark.docker

STACK_FILE = ROOT / "deploy" / "swarm" / "stack.yaml"


def docker_cli(*args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        ["docker", *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_stack_deploys_and_serves(swarm: DockerClient, readable_models: str) -> None:
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
        "IMAGE": IMAGE,
        "SCALER_ID": owner,
        "MODEL_REPOSITORY": readable_models,
        "WORKER_CPUS": "0.5",
        "WORKER_MEMORY": "768m",
        "DOCKER_GID": str(Path("/var/run/docker.sock").stat().st_gid),
    }
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
