"""Ten model versions roll out under steady load to workers in containers: the workers read the
model repository bind-mounted from the host (read-only), each new version directory is written
on the host, and no image is rebuilt. Every request is counted per rollout and none fails, as in
tests/integration/test_model_rollout.py for the process runtime."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from docker.client import DockerClient

from harness.cluster import Cluster
from services.scaler.docker_runtime import OWNER_LABEL, DockerRuntime
from services.worker.models import write_default_model
from tests.docker.conftest import WORKER_IMAGE, container_worker_token
from tests.rollout import roll_out_under_load

pytestmark = pytest.mark.docker

ROLLOUTS = 10
WORKERS = 2
# What the image's unprivileged user needs to read the files written on the host.
READABLE = 0o644


@pytest.fixture(params=["poll", "load"])
def trigger(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    path = tmp_path / "models"
    write_default_model(path)
    for entry in [path, *path.rglob("*")]:
        entry.chmod(0o755 if entry.is_dir() else READABLE)
    return path


@pytest.fixture
def cluster(
    client: DockerClient, owner_id: str, repository: Path, tmp_path: Path, trigger: str
) -> Iterator[Cluster]:
    """Balancer and batcher as processes on the host; WORKERS worker containers, which poll the
    mounted repository only when `trigger` is "poll"."""
    running = Cluster(repository, tmp_path / "logs").start(workers=0)
    token = container_worker_token(running)
    worker_env = {"TIDESERVE_WORKER_THREADS": "1", "TIDESERVE_WORKER_BALANCER_TOKEN_FILE": token}
    if trigger == "poll":
        worker_env["TIDESERVE_WORKER_REPOSITORY_POLL_S"] = "0.2"
    runtime = DockerRuntime(
        client,
        image=WORKER_IMAGE,
        owner_id=owner_id,
        balancers=[running.balancer],
        model_repository=str(repository),
        cpus=1.0,
        memory="1g",
        worker_env=worker_env,
        worker_token_file=token,
    )
    try:
        for index in range(WORKERS):
            asyncio.run(runtime.start(f"rollout-w{index}"))
        try:
            # Generous: two containers importing torch on a loaded 2-core machine.
            running.wait_workers(WORKERS, timeout_s=180)
        except TimeoutError:
            mine = client.containers.list(all=True, filters={"label": f"{OWNER_LABEL}={owner_id}"})
            logs = [c.logs().decode()[-2000:] for c in mine]
            pytest.fail("the worker containers did not register:\n" + "\n".join(logs))
        yield running
    finally:
        # The owner_id fixture removes the containers.
        running.stop()


def test_ten_versions_roll_out_to_worker_containers_without_a_failed_request(
    cluster: Cluster, trigger: str
) -> None:
    roll_out_under_load(
        cluster.batcher,
        cluster.repository,
        ROLLOUTS,
        f"docker, {trigger}",
        explicit_load=trigger == "load", mode=READABLE,
    )
