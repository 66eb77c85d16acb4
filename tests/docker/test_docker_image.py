"""The built images (one per role) and DockerRuntime against a real Docker engine.

Needs the images (`scripts/docker_offline.sh` builds them; TIDESERVE_<ROLE>_IMAGE names another
tag) and a running engine; skipped only when no engine answers. Containers use host networking and
are labelled with a per-test owner id, which the teardown uses to remove whatever a failing test
left behind.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker.errors
import pytest
from docker.client import DockerClient

from harness.cluster import wait_for
from services.scaler.docker_runtime import OWNER_LABEL, DockerRuntime
from tests.docker.conftest import IMAGES, SCALER_IMAGE, WORKER_IMAGE
from tideserve.credentials import create_credentials
from tideserve.healthprobe import probe
from tideserve.procs import free_port

pytestmark = pytest.mark.docker

# The image's user (docker/Dockerfile), which must own the credentials it reads.
IMAGE_USER = 10001
# Libraries a role's image must not carry: the batcher and balancer are the plain install, the
# scaler runs its learned policy in numpy.
ABSENT = {
    "batcher": ("torch", "docker", "stable_baselines3", "gymnasium", "matplotlib"),
    "balancer": ("torch", "docker", "stable_baselines3", "gymnasium", "matplotlib"),
    "scaler": ("torch", "stable_baselines3", "gymnasium", "matplotlib"),
    "worker": ("docker", "stable_baselines3", "gymnasium", "matplotlib"),
}


@pytest.mark.parametrize("role", sorted(IMAGES))
def test_image_runs_its_service_entry_point(client: DockerClient, role: str) -> None:
    output = client.containers.run(
        IMAGES[role],
        ["python", "-m", f"services.{role}", "--help"],
        remove=True,
        network_mode="none",
    )
    assert "--host" in output.decode()


@pytest.mark.parametrize("role", sorted(IMAGES))
def test_image_carries_only_its_roles_libraries(client: DockerClient, role: str) -> None:
    probe_code = (
        "import importlib.util, json, sys; "
        "print(json.dumps([m for m in sys.argv[1:] if importlib.util.find_spec(m)]))"
    )
    output = client.containers.run(
        IMAGES[role],
        ["python", "-c", probe_code, *ABSENT[role], "grpc", "numpy"],
        remove=True,
        network_mode="none",
    )
    assert json.loads(output) == ["grpc", "numpy"]


@pytest.mark.parametrize("role", sorted(IMAGES))
def test_image_runs_as_an_unprivileged_user(client: DockerClient, role: str) -> None:
    output = client.containers.run(IMAGES[role], ["id", "-u"], remove=True, network_mode="none")
    assert output.decode().strip() == str(IMAGE_USER)


@pytest.mark.parametrize("role", sorted(IMAGES))
def test_image_has_no_setuid_or_setgid_file(client: DockerClient, role: str) -> None:
    """No way to gain privileges inside, even where the engine cannot set no-new-privileges."""
    output = client.containers.run(
        IMAGES[role],
        ["find", "/", "-xdev", "-type", "f", "-perm", "/6000"],
        user="0",
        remove=True,
        network_mode="none",
    )
    assert output.decode().split() == []


def test_scaler_image_runs_the_learned_policy_it_ships(client: DockerClient) -> None:
    """The installed package carries the default policy, and the policy decides in numpy, with
    no fallback to the HPA rule, in an image without torch."""
    probe_code = (
        "import json\n"
        "from services.scaler.context import ScalingContext\n"
        "from services.scaler.policies import create_policy\n"
        "policy = create_policy('learned')\n"
        "ctx = ScalingContext(now=0.0, current_replicas=2, ready_replicas=2, arrival_rate=60.0,\n"
        "    queued_requests=0, ongoing_requests=5.0, latency_p99_s=0.25, slo_s=0.5,\n"
        "    utilisation=0.5, service_rate_per_replica=48.0)\n"
        "replicas = policy.decide(ctx)\n"
        "print(json.dumps([str(policy.policy_file), policy.fallback_reason, replicas]))\n"
    )
    output = client.containers.run(
        SCALER_IMAGE, ["python", "-c", probe_code], remove=True, network_mode="none"
    )
    policy_file, reason, replicas = json.loads(output)
    assert policy_file.startswith("/opt/venv/lib/")
    assert reason == ""
    assert replicas >= 1


@pytest.fixture
def credentials(tmp_path: Path) -> Path:
    """Tokens for every role, owned by the images' user as the credentials step of compose.yaml
    hands them over."""
    directory = tmp_path / "credentials"
    create_credentials(directory)
    for path in (directory, *directory.iterdir()):
        os.chown(path, IMAGE_USER, IMAGE_USER)
    return directory


@pytest.fixture
def containers(client: DockerClient) -> Iterator[list[Any]]:
    started: list[Any] = []
    yield started
    for container in started:
        container.remove(force=True)


def run_service(
    client: DockerClient,
    containers: list[Any],
    role: str,
    environment: dict[str, str],
    credentials: Path,
) -> Any:
    container = client.containers.run(
        IMAGES[role],
        detach=True,
        network_mode="host",
        environment=environment,
        volumes={str(credentials): {"bind": str(credentials), "mode": "ro"}},
        labels={OWNER_LABEL: "image-test"},
    )
    containers.append(container)
    return container


def wait_serving(container: Any, address: str, live: bool = False) -> None:
    def answered() -> bool:
        container.reload()
        if container.status not in ("created", "running"):
            pytest.fail(f"{container.name} exited:\n{container.logs().decode()}")
        return probe(address, live=live)[0]

    wait_for(answered, timeout_s=60, what=f"{address} health")


def test_balancer_batcher_and_scaler_images_start_their_services(
    client: DockerClient, containers: list[Any], credentials: Path
) -> None:
    balancer_port, batcher_port, scaler_port = free_port(), free_port(), free_port()
    balancer = run_service(
        client,
        containers,
        "balancer",
        {
            "TIDESERVE_BALANCER_HOST": "127.0.0.1",
            "TIDESERVE_BALANCER_PORT": str(balancer_port),
            "TIDESERVE_BALANCER_METRICS_PORT": str(free_port()),
            "TIDESERVE_BALANCER_CREDENTIALS_DIR": str(credentials),
        },
        credentials,
    )
    wait_serving(balancer, f"127.0.0.1:{balancer_port}")
    batcher = run_service(
        client,
        containers,
        "batcher",
        {
            "TIDESERVE_BATCHER_HOST": "127.0.0.1",
            "TIDESERVE_BATCHER_PORT": str(batcher_port),
            "TIDESERVE_BATCHER_METRICS_PORT": str(free_port()),
            "TIDESERVE_BATCHER_BALANCERS": f"127.0.0.1:{balancer_port}",
            "TIDESERVE_BATCHER_BALANCER_TOKEN_FILE": str(credentials / "batcher.token"),
        },
        credentials,
    )
    # No worker serves a model here, so the batcher is alive but not ready.
    wait_serving(batcher, f"127.0.0.1:{batcher_port}", live=True)
    # No runtime reachable from here is needed: it never has to start a worker (0 replicas).
    scaler = run_service(
        client,
        containers,
        "scaler",
        {
            "TIDESERVE_SCALER_HOST": "127.0.0.1",
            "TIDESERVE_SCALER_PORT": str(scaler_port),
            "TIDESERVE_SCALER_METRICS_PORT": str(free_port()),
            "TIDESERVE_SCALER_BALANCERS": f"127.0.0.1:{balancer_port}",
            "TIDESERVE_SCALER_MIN_REPLICAS": "0",
            "TIDESERVE_SCALER_MAX_REPLICAS": "1",
            "TIDESERVE_SCALER_POLICY": "static",
            "TIDESERVE_SCALER_BALANCER_TOKEN_FILE": str(credentials / "scaler.token"),
            "TIDESERVE_SCALER_WORKER_TOKEN_FILE": str(credentials / "worker.token"),
            "TIDESERVE_SCALER_ADMIN_TOKEN_FILE": str(credentials / "operator.token"),
        },
        credentials,
    )
    wait_serving(scaler, f"127.0.0.1:{scaler_port}", live=True)


async def test_runtime_starts_a_worker_container_and_stop_removes_it(
    client: DockerClient, owner_id: str, readable_models: str
) -> None:
    runtime = DockerRuntime(
        client,
        image=WORKER_IMAGE,
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
