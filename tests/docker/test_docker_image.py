"""The built image and DockerRuntime against a real Docker engine.

Needs the image (`scripts/docker_offline.sh` builds it; TIDESERVE_IMAGE names another tag) and a
running engine; skipped only when no engine answers. Containers use host networking and are
labelled with a per-test owner id, which the teardown uses to remove whatever a failing test
left behind.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import docker.errors
import pytest
from docker.client import DockerClient

from services.scaler.docker_runtime import DockerRuntime
from tests.docker.conftest import API_TIMEOUT_S, IMAGE
from tideserve.procs import free_port

pytestmark = pytest.mark.docker


def test_image_runs_a_service_entry_point(client: DockerClient) -> None:
    container = client.containers.run(
        IMAGE, ["python", "-m", "services.balancer", "--help"], detach=True, network_mode="host"
    )
    try:
        result = container.wait(timeout=API_TIMEOUT_S)
        output = container.logs().decode()
    finally:
        container.remove(force=True)
    assert result["StatusCode"] == 0, output
    assert "--routing-policy" in output


def test_image_runs_as_an_unprivileged_user(client: DockerClient) -> None:
    output = client.containers.run(IMAGE, ["id", "-u"], remove=True, network_mode="host")
    assert output.decode().strip() != "0"


def test_image_has_no_setuid_or_setgid_file(client: DockerClient) -> None:
    """No way to gain privileges inside, even where the engine cannot set no-new-privileges."""
    output = client.containers.run(
        IMAGE,
        ["find", "/", "-xdev", "-type", "f", "-perm", "/6000"],
        user="0",
        remove=True,
        network_mode="none",
    )
    assert output.decode().split() == []


def test_image_loads_the_learned_policy_it_ships(client: DockerClient) -> None:
    """The installed package carries the default policy: no fallback to the HPA rule."""
    probe = (
        "import json; from services.scaler.policies import create_policy; "
        "policy = create_policy('learned'); "
        "print(json.dumps([str(policy.policy_file), policy.fallback_reason]))"
    )
    output = client.containers.run(IMAGE, ["python", "-c", probe], remove=True, network_mode="none")
    policy_file, reason = json.loads(output)
    assert policy_file.startswith("/opt/venv/lib/")
    assert reason == ""


async def test_runtime_starts_a_worker_container_and_stop_removes_it(
    client: DockerClient, owner_id: str, readable_models: str
) -> None:
    runtime = DockerRuntime(
        client,
        image=IMAGE,
        owner_id=owner_id,
        # Nothing listens there: the heartbeats reach no real balancer.
        balancers=[f"127.0.0.1:{free_port()}"],
        model_repository=readable_models,
        cpus=1.0,
        memory="1g",
    )
    worker = await runtime.start("docker-test-w1")
    container = client.containers.get(worker.runtime_id)

    logs = await wait_for_log(container, "worker ready", timeout_s=60)
    container.reload()
    assert container.status == "running", logs
    assert container.attrs["HostConfig"]["NetworkMode"] == "host"
    assert container.attrs["HostConfig"]["NanoCpus"] == 1_000_000_000
    assert [w.worker_id for w in await runtime.list()] == ["docker-test-w1"]

    began = time.monotonic()
    await runtime.stop(worker, grace_s=5.0)
    # The worker handles SIGTERM, so it exits well before Docker's SIGKILL at the grace period.
    assert time.monotonic() - began < 5.0
    with pytest.raises(docker.errors.NotFound):
        client.containers.get(worker.runtime_id)
    assert await runtime.list() == []


async def wait_for_log(container: Any, text: str, timeout_s: float) -> str:
    """The container's log once it contains `text`; fails after `timeout_s` or if it exits."""
    deadline = time.monotonic() + timeout_s
    while True:
        container.reload()
        logs = container.logs().decode()
        if text in logs:
            return logs
        status = container.status
        if status != "running" or time.monotonic() > deadline:
            pytest.fail(f"no {text!r} in the log (container {status}):\n{logs}")
        await asyncio.sleep(0.2)
