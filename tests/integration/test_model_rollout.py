"""A new model version rolls out under steady load with the worker polling its repository: the
version appears, loads beside the served one, takes the new requests, and the old one drains
and unloads. Every request is counted and none fails."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.cluster import Cluster, sync_channel, wait_for
from services.worker.models import DEFAULT_MODEL, write_default_model
from tideserve.v1 import inference_pb2 as pb
from tideserve.v1 import inference_pb2_grpc
from tideserve_tools.loadgen import SteadyLoad

pytestmark = pytest.mark.integration

CLIENTS = 4


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    repository = tmp_path / "repository"
    write_default_model(repository)
    running = Cluster(
        repository, tmp_path / "logs", worker_args=("--repository-poll-s", "0.2")
    ).start(workers=1)
    yield running
    running.stop()


def index(cluster: Cluster) -> dict[str, str]:
    with sync_channel(cluster.batcher) as channel:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        response = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=5)
    return {m.version: m.state for m in response.models if m.name == DEFAULT_MODEL}


def test_a_new_version_rolls_out_under_load_without_a_failed_request(cluster: Cluster) -> None:
    model_dir = cluster.repository / DEFAULT_MODEL
    with SteadyLoad(cluster.batcher, DEFAULT_MODEL, clients=CLIENTS) as load:
        wait_for(lambda: load.versions["1"] >= 20, 60, "requests served by version 1")
        # Copied under a name the scan ignores, then renamed into place at once.
        shutil.copytree(model_dir / "1", model_dir / ".incoming")
        (model_dir / ".incoming").rename(model_dir / "2")
        wait_for(lambda: load.versions["2"] >= 20, 60, "requests served by version 2")
        wait_for(lambda: index(cluster) == {"1": "UNAVAILABLE", "2": "READY"}, 30, "1 retired")
        with load.lock:
            after_retirement = load.versions["2"]
        wait_for(lambda: load.versions["2"] >= after_retirement + 20, 60, "more on version 2")
    answered = sum(load.versions.values())
    assert not load.failures, load.failures
    assert answered == load.sent
    assert set(load.versions) == {"1", "2"}
    # Once version 1 was retired, only version 2 answered.
    assert load.last_versions == ["2"] * 20
