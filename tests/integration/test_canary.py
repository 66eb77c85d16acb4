"""A canary against a real suite: the config's canary_weights split a model's unversioned
requests 90/10 between two served versions, the batcher's Prometheus metrics count each
version's share and latency, and an operator's SetCanaryWeights on the balancer moves all of it
to the canary at run time. Only the operator may move it. Retiring a version the split sends
requests to fails none of them under steady load: the latest answers those the batcher sent on
before it heard."""

from __future__ import annotations

import shutil
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.cluster import Cluster, sync_channel, wait_for
from services.worker.models import DEFAULT_MODEL, write_default_model
from tests.rollout import (
    ANSWERS_AFTER_RETIREMENT,
    Rollouts,
    check_counts,
    load_model,
    only_latest_ready,
    steady_load,
)
from tideserve.v1 import cluster_pb2, cluster_pb2_grpc, inference_pb2_grpc
from tideserve.v1 import inference_pb2 as pb

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    repository = tmp_path / "repository"
    model_dir = write_default_model(repository)
    shutil.copytree(model_dir / "1", model_dir / "2")
    config = model_dir / "config.pbtxt"
    config.write_text(
        config.read_text()
        + "version_policy: { all: {} }\n"
        + 'parameters { key: "canary_weights" value { string_value: "1:90,2:10" } }\n'
    )
    running = Cluster(repository, tmp_path / "logs").start(workers=1)
    yield running
    running.stop()


def infer(stub: inference_pb2_grpc.GRPCInferenceServiceStub, count: int) -> list[str]:
    """The version that answered each of `count` unversioned requests, sent one after another."""
    rng = np.random.default_rng(0)
    versions = []
    for _ in range(count):
        request = pb.ModelInferRequest(model_name=DEFAULT_MODEL)
        request.inputs.add(name="INPUT__0", datatype="FP32", shape=[1, 1, 28, 28])
        request.raw_input_contents.append(rng.random(784, np.float32).tobytes())
        versions.append(stub.ModelInfer(request, timeout=30).model_version)
    return versions


def by_version(cluster: Cluster) -> tuple[dict[str, float], dict[str, float]]:
    """The batcher's successful requests and latency observations of the model, by version."""
    url = f"http://127.0.0.1:{cluster.batcher_metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    requests: dict[str, float] = {}
    latencies: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if labels.get("model") != DEFAULT_MODEL:
                continue
            if sample.name == "tideserve_batcher_requests_total" and labels["code"] == "OK":
                requests[labels["version"]] = sample.value
            if sample.name == "tideserve_batcher_request_duration_seconds_count":
                latencies[labels["version"]] = sample.value
    return requests, latencies


def set_weights(
    cluster: Cluster, role: str, **weights: int
) -> cluster_pb2.SetCanaryWeightsResponse:
    with sync_channel(cluster.balancer) as channel:
        return cluster_pb2_grpc.BalancerStub(channel).SetCanaryWeights(
            cluster_pb2.SetCanaryWeightsRequest(
                model_name=DEFAULT_MODEL,
                weights={version.removeprefix("v"): w for version, w in weights.items()},
            ),
            timeout=10,
            metadata=cluster.auth(role),
        )


def test_weights_split_traffic_and_an_operator_moves_them(cluster: Cluster) -> None:
    with sync_channel(cluster.batcher) as channel:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        first = Counter(infer(stub, 100))
        assert first == {"1": 90, "2": 10}
        requests, latencies = by_version(cluster)
        assert requests == latencies == {"1": 90, "2": 10}

        # Only the operator moves traffic; a weight for a version not served is refused.
        with pytest.raises(grpc.RpcError) as denied:
            set_weights(cluster, "batcher", v1=0, v2=100)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as invalid:
            set_weights(cluster, "operator", v2=50, v7=50)
        assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "['7'] are not served" in (invalid.value.details() or "")

        answer = set_weights(cluster, "operator", v1=0, v2=100)
        assert dict(answer.weights) == {"1": 0, "2": 100}
        # Under 90/10 no two requests in a row go to version 2; once the batcher has the new
        # weights from a cluster snapshot, all do.
        recent: list[str] = []
        wait_for(
            lambda: recent.extend(infer(stub, 1)) or recent[-5:] == ["2"] * 5,
            30,
            "the batcher to send every request to version 2",
        )
        assert Counter(infer(stub, 50)) == {"2": 50}
        requests, latencies = by_version(cluster)
        sent = first + Counter(recent) + Counter({"2": 50})
        assert requests == latencies == dict(sent)

        # No weights: back to the config's split.
        assert not set_weights(cluster, "operator").weights
        wait_for(
            lambda: "1" in infer(stub, 10), 30, "the config's weights to send requests to 1 again"
        )


def test_retiring_the_version_the_split_favours_fails_no_request(cluster: Cluster) -> None:
    config = cluster.repository / DEFAULT_MODEL / "config.pbtxt"
    load = Rollouts()
    with steady_load(cluster.batcher, load):
        wait_for(
            lambda: load.current().answered["1"] >= ANSWERS_AFTER_RETIREMENT, 60, "1 answering"
        )
        load.begin("2")
        config.write_text(
            config.read_text().replace(
                "version_policy: { all: {} }", "version_policy: { specific: { versions: [2] } }"
            )
        )
        load_model(cluster.batcher)
        wait_for(lambda: only_latest_ready(cluster.batcher, "2"), 60, "version 2 serving alone")
        load.mark_retired()
        wait_for(
            lambda: sum(load.current().after_retirement.values()) >= ANSWERS_AFTER_RETIREMENT,
            60,
            "answers from version 2",
        )
    check_counts(load, "canary version retired")
