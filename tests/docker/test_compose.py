"""compose.yaml brings the suite up under docker-compose (Debian's 1.29 here) and an inference
through the batcher works; `down` drains and removes the workers the scaler started."""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from pathlib import Path

import grpc
import pytest
from docker.client import DockerClient

from services.scaler.docker_runtime import OWNER_LABEL
from tests.cluster import ROOT, free_port, wait_for, wait_healthy
from tideserve.loadgen import closed_loop
from tideserve.v1 import inference_pb2, inference_pb2_grpc

pytestmark = pytest.mark.docker

SERVICES = ("balancer", "batcher", "scaler")


def compose(env: dict[str, str], *args: str, timeout_s: float = 180) -> str:
    done = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "compose.yaml"), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert done.returncode == 0, f"docker-compose {' '.join(args)}:\n{done.stdout}{done.stderr}"
    return done.stdout + done.stderr


def test_compose_brings_the_suite_up_and_serves(
    client: DockerClient, readable_models: str, tmp_path: Path
) -> None:
    if subprocess.run(["which", "docker-compose"], capture_output=True).returncode:
        pytest.fail("docker-compose is not installed (apt-get install docker-compose)")
    project = f"tideserve-test-{uuid.uuid4().hex[:8]}"
    ports = {name: free_port() for name in ("BATCHER_PORT", "BALANCER_PORT", "SCALER_PORT")}
    env = {
        **os.environ,
        **{k: str(v) for k, v in ports.items()},
        "COMPOSE_PROJECT_NAME": project,
        "SCALER_ID": project,
        "MODEL_REPOSITORY": readable_models,
        "DOCKER_GID": str(os.stat("/var/run/docker.sock").st_gid),
    }
    try:
        compose(env, "up", "-d", "--no-build", *SERVICES)
        batcher = f"127.0.0.1:{ports['BATCHER_PORT']}"
        wait_healthy(batcher, timeout_s=90)
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
        result = asyncio.run(
            closed_loop(batcher, "tiny_cnn", concurrency=4, seconds=2, timeout_s=60)
        )
        assert result.errors == {}, result.errors
        assert result.ok > 0
    finally:
        compose(env, "logs", "--no-color", timeout_s=60)
        compose(env, "down", "--timeout", "60", timeout_s=240)
    leftovers = client.containers.list(
        ignore_removed=True, all=True, filters={"label": f"{OWNER_LABEL}={project}"}
    )
    assert leftovers == [], "down must leave no worker container behind"
