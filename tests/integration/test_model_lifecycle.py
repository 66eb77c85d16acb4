"""Model lifecycle and statistics through tritonclient, unchanged, against a real suite: Triton's
statistics extension agrees with the batcher's Prometheus metrics."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.worker.models import DEFAULT_MODEL, write_default_model
from tests.cluster import ROOT, Cluster, sync_channel
from tideserve.v1 import inference_pb2 as pb
from tideserve.v1 import inference_pb2_grpc

pytestmark = pytest.mark.integration


def triton(cluster: Cluster, action: str, *args: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "tests.clients.triton_lifecycle", cluster.batcher, action, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def prometheus(cluster: Cluster, model: str) -> dict[tuple[str, str], float]:
    """The batcher's samples of `model`, by sample name and status code ("" without one)."""
    url = f"http://127.0.0.1:{cluster.batcher_metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, sample.labels.get("code", "")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.labels.get("model") == model and "le" not in sample.labels
    }


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository of its own: the lifecycle tests change it."""
    path = tmp_path_factory.mktemp("lifecycle_repository")
    write_default_model(path)
    return path


@pytest.fixture(scope="module")
def cluster(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    running = Cluster(repository, tmp_path_factory.mktemp("logs")).start(workers=1)
    yield running
    running.stop()


def test_statistics_count_what_prometheus_counts(cluster: Cluster) -> None:
    assert triton(cluster, "infer", DEFAULT_MODEL, "6") == {"ok": 6, "versions": ["1"]}
    # One request the model refuses (a wrong input shape): a failure in both.
    with sync_channel(cluster.batcher) as channel:
        request = pb.ModelInferRequest(model_name=DEFAULT_MODEL)
        request.inputs.add(name="INPUT__0", datatype="FP32", shape=[1, 2, 2])
        request.raw_input_contents.append(np.zeros(4, np.float32).tobytes())
        with pytest.raises(grpc.RpcError) as refused:
            inference_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    (stats,) = triton(cluster, "stats", DEFAULT_MODEL)["model_stats"]
    assert (stats["name"], stats["version"]) == (DEFAULT_MODEL, "1")
    infer = stats["inference_stats"]
    samples = prometheus(cluster, DEFAULT_MODEL)
    ok = samples[("tideserve_batcher_requests_total", "OK")]
    failed = sum(
        value
        for (name, code), value in samples.items()
        if name == "tideserve_batcher_requests_total" and code != "OK"
    )
    # tritonclient reads the uint64 counters as JSON strings.
    assert int(infer["success"]["count"]) == ok == 6
    assert int(infer["fail"]["count"]) == failed == 1
    batches = samples[("tideserve_batcher_batch_size_rows_count", "")]
    rows = samples[("tideserve_batcher_batch_size_rows_sum", "")]
    assert int(stats["execution_count"]) == batches
    assert int(stats["inference_count"]) == rows == 6
    for duration in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        assert int(infer[duration]["ns"]) > 0, duration
    for duration in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert int(infer[duration]["count"]) == 6, duration
    assert int(stats["last_inference"]) > 0
    by_size = stats["batch_stats"]
    assert sum(int(b["batch_size"]) * int(b["compute_infer"]["count"]) for b in by_size) == 6
    assert sum(int(b["compute_infer"]["count"]) for b in by_size) == batches


def test_statistics_of_an_unknown_model_are_not_found(cluster: Cluster) -> None:
    answer = triton(cluster, "stats", "no_such_model")
    assert answer["status"] == "StatusCode.NOT_FOUND"
    assert "no_such_model" in answer["error"]
