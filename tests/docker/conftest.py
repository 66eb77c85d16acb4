"""Fixtures for tests against a real Docker engine. Skipped only when no engine answers; in CI
the test command starts one (scripts/docker_offline.sh)."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker.errors
import pytest
from docker.client import DockerClient

from harness.cluster import Cluster
from services.scaler.docker_runtime import OWNER_LABEL
from tideserve.credentials import read_secret, write_secret

# One image per role (docker/Dockerfile's targets); TIDESERVE_<ROLE>_IMAGE names another tag.
ROLES = ("batcher", "balancer", "worker", "scaler")
IMAGES = {
    role: os.environ.get(f"TIDESERVE_{role.upper()}_IMAGE", f"tideserve-{role}:dev")
    for role in ROLES
}
WORKER_IMAGE = IMAGES["worker"]
SCALER_IMAGE = IMAGES["scaler"]
# The images' unprivileged user (docker/Dockerfile).
IMAGE_UID = 10001
# Every Docker API call of these tests is bounded by this (seconds).
API_TIMEOUT_S = 60


def container_scaler_args(
    cluster: Cluster, runtime: str, owner: str, models: str, *, cpus: str, memory: str
) -> list[str]:
    """The flags every container-runtime test gives its scaler: workers of WORKER_IMAGE with `cpus`
    and `memory` (docker's format), 1 to 3 replicas under the static policy, a 0.5 s tick, and
    the run's tokens: the scaler's own, and the workers' as the image's user can read it."""
    return [
        "--balancers", cluster.balancer, "--runtime", runtime, "--scaler-id", owner,
        "--worker-image", WORKER_IMAGE, "--model-repository", models,
        "--worker-cpus", cpus, "--worker-memory", memory,
        "--min-replicas", "1", "--max-replicas", "3", "--policy", "static", "--tick-s", "0.5",
        "--balancer-token-file", cluster.token_file("scaler"),
        "--worker-token-file", container_worker_token(cluster),
    ]


def container_worker_token(cluster: Cluster) -> str:
    """The run's worker token, owned by the image's user (uid 10001) as a container worker needs
    it: a secret file must be private to whoever reads it."""
    target = cluster.log_dir / "container-worker.token"
    write_secret(target, read_secret(cluster.token_file("worker")))
    os.chown(target, IMAGE_UID, IMAGE_UID)
    return str(target)


@pytest.fixture(scope="module")
def client() -> Iterator[DockerClient]:
    try:
        client = DockerClient.from_env(timeout=API_TIMEOUT_S)
        client.ping()
    except docker.errors.DockerException as error:
        pytest.skip(
            f"no Docker engine answers ({error}); start one, e.g. scripts/docker_offline.sh"
        )
    missing = []
    for image in IMAGES.values():
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            missing.append(image)
    if missing:
        client.close()
        pytest.fail(f"images {missing} are missing: build them with scripts/docker_offline.sh")
    yield client
    client.close()


@pytest.fixture
def owner_id(client: DockerClient) -> Iterator[str]:
    owner = f"test-{uuid.uuid4().hex[:12]}"
    yield owner
    for container in client.containers.list(
        ignore_removed=True, all=True, filters={"label": f"{OWNER_LABEL}={owner}"}
    ):
        container.remove(force=True)


@pytest.fixture
def readable_models(model_repository: Path, tmp_path: Path) -> str:
    """A copy of the test model repository that the image's unprivileged user can read (pytest's
    temporary directories are private to root)."""
    copy = tmp_path / "models"
    shutil.copytree(model_repository, copy)
    for path in [copy, *copy.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return str(copy)


@pytest.fixture(scope="module")
def swarm(client: DockerClient) -> Iterator[DockerClient]:
    """A swarm manager on loopback only; left again afterwards if this fixture made it."""
    state = client.info()["Swarm"]
    created = state["LocalNodeState"] != "active"
    if created:
        client.swarm.init(advertise_addr="127.0.0.1", listen_addr="127.0.0.1:2377")
    elif not state.get("ControlAvailable"):
        pytest.skip("the engine is a swarm worker, not a manager: it cannot create services")
    yield client
    if created:
        client.swarm.leave(force=True)
