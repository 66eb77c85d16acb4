"""A new model version rolls out under steady load with the worker polling its repository: the
version appears, loads beside the served one, takes the new requests, and the old one drains
and unloads. Every request is counted and none fails."""

from __future__ import annotations

import shutil
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from harness.cluster import Cluster, sync_channel, wait_for
from services.worker.models import DEFAULT_MODEL, write_default_model
from tideserve.v1 import inference_pb2 as pb
from tideserve.v1 import inference_pb2_grpc

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


class SteadyLoad:
    """CLIENTS threads sending one-row requests back to back until stopped; every answer is
    counted by the version that computed it, every failure by its status code."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.versions: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.sent = 0
        self.last_versions: list[str] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(i,)) for i in range(CLIENTS)]

    def _client(self, index: int) -> None:
        rng = np.random.default_rng(index)
        with sync_channel(self.address) as channel:
            stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
            while not self.stop.is_set():
                request = pb.ModelInferRequest(model_name=DEFAULT_MODEL)
                request.inputs.add(name="INPUT__0", datatype="FP32", shape=[1, 1, 28, 28])
                request.raw_input_contents.append(rng.random(784, np.float32).tobytes())
                with self.lock:
                    self.sent += 1
                try:
                    version = stub.ModelInfer(request, timeout=30).model_version
                except grpc.RpcError as error:
                    with self.lock:
                        self.failures[f"{error.code().name}: {error.details()}"] += 1
                    continue
                with self.lock:
                    self.versions[version] += 1
                    self.last_versions = [*self.last_versions[-19:], version]

    def __enter__(self) -> SteadyLoad:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)


def index(cluster: Cluster) -> dict[str, str]:
    with sync_channel(cluster.batcher) as channel:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        response = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=5)
    return {m.version: m.state for m in response.models if m.name == DEFAULT_MODEL}


def test_a_new_version_rolls_out_under_load_without_a_failed_request(cluster: Cluster) -> None:
    model_dir = cluster.repository / DEFAULT_MODEL
    with SteadyLoad(cluster.batcher) as load:
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
