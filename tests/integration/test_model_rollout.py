"""Ten model versions roll out in turn under steady load: each version appears in the
repository (found by the workers' poll, or asked for with RepositoryModelLoad), loads beside the
served one on every worker, takes the new requests, and the old one drains and unloads. Every
request is counted per rollout; none fails, and once a rollout is done only the new version
answers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.cluster import Cluster
from services.worker.models import write_default_model
from tests.rollout import roll_out_under_load

pytestmark = pytest.mark.integration

ROLLOUTS = 10
WORKERS = 2


@pytest.fixture(params=["poll", "load"])
def trigger(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def cluster(tmp_path: Path, trigger: str) -> Iterator[Cluster]:
    repository = tmp_path / "repository"
    write_default_model(repository)
    worker_args = ("--repository-poll-s", "0.2") if trigger == "poll" else ()
    running = Cluster(repository, tmp_path / "logs", worker_args=worker_args)
    running.start(workers=WORKERS)
    yield running
    running.stop()


def test_ten_versions_roll_out_under_load_without_a_failed_request(
    cluster: Cluster, trigger: str
) -> None:
    roll_out_under_load(
        cluster.batcher,
        cluster.repository,
        ROLLOUTS,
        f"process runtime, {trigger}",
        explicit_load=trigger == "load",
    )
