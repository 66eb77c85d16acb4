"""Model lifecycle and statistics through tritonclient, unchanged, against a real suite: Triton's
statistics extension agrees with the batcher's Prometheus metrics."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.cluster import ROOT, Cluster, free_port, sync_channel, wait_for
from services.worker.models import DEFAULT_MODEL, write_default_model
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


def index(cluster: Cluster) -> dict[tuple[str, str], tuple[str, str]]:
    return {
        (m["name"], m.get("version", "")): (m.get("state", ""), m.get("reason", ""))
        for m in triton(cluster, "index")["models"]
    }


def test_unload_then_load_again(cluster: Cluster, repository: Path) -> None:
    assert index(cluster)[(DEFAULT_MODEL, "1")] == ("READY", "")

    assert triton(cluster, "unload", DEFAULT_MODEL) == {"ok": True}
    assert index(cluster)[(DEFAULT_MODEL, "1")] == ("UNAVAILABLE", "unloaded")
    refused = triton(cluster, "infer", DEFAULT_MODEL, "1")
    assert refused["status"] == "StatusCode.NOT_FOUND", refused
    assert triton(cluster, "unload", DEFAULT_MODEL) == {"ok": True}  # nothing left to unload

    assert triton(cluster, "load", DEFAULT_MODEL) == {"ok": True}
    assert index(cluster)[(DEFAULT_MODEL, "1")] == ("READY", "")
    assert triton(cluster, "infer", DEFAULT_MODEL, "2") == {"ok": 2, "versions": ["1"]}

    # A model put in the repository while the worker runs is served once loaded.
    shutil.copytree(repository / DEFAULT_MODEL, repository / "second")
    config = repository / "second" / "config.pbtxt"
    config.write_text(config.read_text().replace(f'"{DEFAULT_MODEL}"', '"second"'))
    assert triton(cluster, "load", "second") == {"ok": True}
    assert triton(cluster, "infer", "second", "2") == {"ok": 2, "versions": ["1"]}
    assert index(cluster)[("second", "1")] == ("READY", "")


def test_a_failed_load_keeps_the_served_version_and_says_why(
    cluster: Cluster, repository: Path
) -> None:
    version_2 = repository / DEFAULT_MODEL / "2"
    version_2.mkdir()
    (version_2 / "model.pt").write_bytes(b"not a torchscript archive")
    failed = triton(cluster, "load", DEFAULT_MODEL)
    assert failed["status"] == "StatusCode.INVALID_ARGUMENT", failed
    assert "version 2" in failed["error"]
    assert "model.pt" in failed["error"]
    states = index(cluster)
    assert states[(DEFAULT_MODEL, "1")] == ("READY", "")
    assert states[(DEFAULT_MODEL, "2")][0] == "UNAVAILABLE"
    assert "could not be loaded" in states[(DEFAULT_MODEL, "2")][1]
    assert triton(cluster, "infer", DEFAULT_MODEL, "2") == {"ok": 2, "versions": ["1"]}

    # A valid version 2 replaces version 1 without a request failing in between.
    shutil.copyfile(repository / DEFAULT_MODEL / "1" / "model.pt", version_2 / "model.pt")
    assert triton(cluster, "load", DEFAULT_MODEL) == {"ok": True}
    assert triton(cluster, "infer", DEFAULT_MODEL, "2") == {"ok": 2, "versions": ["2"]}
    states = index(cluster)
    assert states[(DEFAULT_MODEL, "2")] == ("READY", "")
    assert states[(DEFAULT_MODEL, "1")] == ("UNAVAILABLE", "retired: versions ['2'] serve now")


def test_invalid_or_missing_models_are_refused_with_the_reason(
    cluster: Cluster, repository: Path
) -> None:
    broken = repository / "broken"
    shutil.copytree(repository / DEFAULT_MODEL / "1", broken / "1")
    (broken / "config.pbtxt").write_text('name: "broken"\nmax_batch_size: -1\n')
    failed = triton(cluster, "load", "broken")
    assert failed["status"] == "StatusCode.INVALID_ARGUMENT", failed
    assert "max_batch_size" in failed["error"]
    (broken / "config.pbtxt").write_text("max_batch_size: {{ not pbtxt\n")
    failed = triton(cluster, "load", "broken")
    assert failed["status"] == "StatusCode.INVALID_ARGUMENT", failed
    assert "config.pbtxt" in failed["error"]
    missing = triton(cluster, "load", "absent")
    assert missing["status"] == "StatusCode.NOT_FOUND", missing
    assert "absent" in missing["error"]
    # The cluster serves on.
    assert triton(cluster, "infer", DEFAULT_MODEL, "1")["ok"] == 1


def test_a_model_naming_an_unknown_batching_policy_is_refused_by_the_batcher(
    cluster: Cluster, repository: Path
) -> None:
    """The batching policy is the batcher's alone: the worker loads the model whatever its
    config names, and the batcher refuses it at Load with the policies it knows."""
    odd = repository / "odd_policy"
    shutil.copytree(repository / DEFAULT_MODEL / "1", odd / "1")
    config = (repository / DEFAULT_MODEL / "config.pbtxt").read_text()
    (odd / "config.pbtxt").write_text(
        config.replace(f'"{DEFAULT_MODEL}"', '"odd_policy"')
        + 'parameters { key: "batching_policy" value { string_value: "magic" } }\n'
    )
    failed = triton(cluster, "load", "odd_policy")

    assert failed["status"] == "StatusCode.INVALID_ARGUMENT", failed
    assert "unknown batching_policy 'magic'" in failed["error"]
    assert "['aimd', 'fixed', 'queue_length', 'slo']" in failed["error"]
    state, reason = index(cluster)[("odd_policy", "1")]
    assert state == "UNAVAILABLE"
    assert "unknown batching_policy 'magic'" in reason
    with sync_channel(cluster.batcher) as channel:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        ready = stub.ModelReady(pb.ModelReadyRequest(name="odd_policy"), timeout=5)
    assert not ready.ready
    refused = triton(cluster, "infer", "odd_policy", "1")
    assert refused["status"] == "StatusCode.FAILED_PRECONDITION", refused
    assert "unknown batching_policy 'magic'" in refused["error"]
    assert triton(cluster, "infer", DEFAULT_MODEL, "1")["ok"] == 1, "the batcher serves on"

    # Fixed and loaded again, it is served.
    (odd / "config.pbtxt").write_text(config.replace(f'"{DEFAULT_MODEL}"', '"odd_policy"'))
    assert triton(cluster, "load", "odd_policy") == {"ok": True}
    assert index(cluster)[("odd_policy", "1")] == ("READY", "")
    assert triton(cluster, "infer", "odd_policy", "2") == {"ok": 2, "versions": ["1"]}


def test_model_control_can_be_turned_off(cluster: Cluster) -> None:
    port = free_port()
    cluster.spawn(
        "batcher-closed",
        "services.batcher",
        "--port",
        str(port),
        "--metrics-port",
        "0",
        "--balancers",
        cluster.balancers,
        "--balancer-token-file",
        cluster.token_file("batcher"),
        "--model-control",
        "false",
    )
    cluster.wait_serving("batcher-closed", f"127.0.0.1:{port}")
    closed = Cluster(cluster.repository, cluster.log_dir, batcher_port=port)
    for action in ("load", "unload"):
        refused = triton(closed, action, DEFAULT_MODEL)
        assert refused["status"] == "StatusCode.UNIMPLEMENTED", refused
        assert "--model-control" in refused["error"]
    assert triton(closed, "infer", DEFAULT_MODEL, "1")["ok"] == 1


def test_version_policy_serves_several_versions_by_name(cluster: Cluster, repository: Path) -> None:
    # Versions 1 and 2 lie in the repository (the tests above put 2 there).
    config = repository / DEFAULT_MODEL / "config.pbtxt"
    config.write_text(config.read_text() + "version_policy: { all: {} }\n")
    assert triton(cluster, "load", DEFAULT_MODEL) == {"ok": True}
    states = index(cluster)
    assert states[(DEFAULT_MODEL, "1")] == ("READY", "")
    assert states[(DEFAULT_MODEL, "2")] == ("READY", "")

    assert triton(cluster, "infer", DEFAULT_MODEL, "3", "1") == {"ok": 3, "versions": ["1"]}
    assert triton(cluster, "infer", DEFAULT_MODEL, "2", "2") == {"ok": 2, "versions": ["2"]}
    assert triton(cluster, "infer", DEFAULT_MODEL, "1") == {"ok": 1, "versions": ["2"]}
    with sync_channel(cluster.batcher) as channel:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        ready = {
            version: stub.ModelReady(
                pb.ModelReadyRequest(name=DEFAULT_MODEL, version=version), timeout=5
            ).ready
            for version in ("1", "2", "7", "")
        }
    assert ready == {"1": True, "2": True, "7": False, "": True}
    refused = triton(cluster, "infer", DEFAULT_MODEL, "1", "7")
    assert refused["status"] == "StatusCode.NOT_FOUND", refused
    assert "served versions are ['1', '2']" in refused["error"]

    stats = {s["version"]: s for s in triton(cluster, "stats", DEFAULT_MODEL)["model_stats"]}
    assert sorted(stats) == ["1", "2"]
    assert int(stats["1"]["inference_count"]) >= 3

    config.write_text(config.read_text().replace("all: {}", "specific: { versions: [1] }"))
    assert triton(cluster, "load", DEFAULT_MODEL) == {"ok": True}
    assert triton(cluster, "infer", DEFAULT_MODEL, "2") == {"ok": 2, "versions": ["1"]}
    assert index(cluster)[(DEFAULT_MODEL, "2")] == (
        "UNAVAILABLE",
        "retired: versions ['1'] serve now",
    )


def test_every_balancer_hears_and_later_workers_follow(tmp_path: Path) -> None:
    """With two balancers, an unload reaches the workers through both, and a worker started
    afterwards is told to unload too: a scaled-up worker serves what the others serve."""
    repository = tmp_path / "repository"
    write_default_model(repository)
    two = Cluster(repository, tmp_path / "logs", extra_balancer_ports=(free_port(),))
    two.start(workers=1)
    try:
        assert triton(two, "unload", DEFAULT_MODEL) == {"ok": True}
        for address in two.balancers.split(","):
            assert not two.snapshot(address).models
        two.add_worker("worker-late")
        wait_for(lambda: len(two.snapshot().workers) == 2, 60, "the late worker")
        wait_for(
            lambda: all(not w.models for w in two.snapshot().workers),
            30,
            "the late worker to unload the model too",
        )
        assert triton(two, "load", DEFAULT_MODEL) == {"ok": True}
        for address in two.balancers.split(","):
            workers = two.snapshot(address).workers
            assert [list(w.models) for w in workers] == [[DEFAULT_MODEL]] * 2
        assert triton(two, "infer", DEFAULT_MODEL, "2") == {"ok": 2, "versions": ["1"]}
    finally:
        two.stop()
