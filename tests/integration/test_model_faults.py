"""A corrupt model file or an invalid config.pbtxt in a served model's repository, found by the
workers' poll or asked for with RepositoryModelLoad, under steady load: Load answers
INVALID_ARGUMENT saying what is wrong, the repository index shows it UNAVAILABLE with the reason,
and the version already serving keeps serving every request. Once fixed, the new version rolls
out. A model new to the repository is found by the poll and served, and one removed from it is
no longer, while the other model serves on."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from harness.cluster import Cluster, sync_channel, wait_for
from services.worker.models import DEFAULT_MODEL, write_default_model
from tests.rollout import (
    ANSWERS_AFTER_RETIREMENT,
    Rollouts,
    check_counts,
    load_model,
    steady_load,
)
from tideserve.v1 import inference_pb2 as pb
from tideserve.v1 import inference_pb2_grpc

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    repository = tmp_path / "repository"
    write_default_model(repository)
    running = Cluster(repository, tmp_path / "logs", worker_args=("--repository-poll-s", "0.2"))
    running.start(workers=1)
    yield running
    running.stop()


def index(cluster: Cluster, model: str = DEFAULT_MODEL) -> dict[str, tuple[str, str]]:
    with sync_channel(cluster.batcher) as channel:
        response = inference_pb2_grpc.GRPCInferenceServiceStub(channel).RepositoryIndex(
            pb.RepositoryIndexRequest(), timeout=5
        )
    return {m.version: (m.state, m.reason) for m in response.models if m.name == model}


def infer(cluster: Cluster, model: str) -> pb.ModelInferResponse:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="INPUT__0", datatype="FP32", shape=[1, 1, 28, 28])
    request.raw_input_contents.append(np.zeros(784, np.float32).tobytes())
    with sync_channel(cluster.batcher) as channel:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        return stub.ModelInfer(request, timeout=30)


def refused_load(cluster: Cluster) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as refused:
        load_model(cluster.batcher)
    return refused.value


def test_bad_versions_and_configs_are_shown_and_the_served_version_serves_on(
    cluster: Cluster,
) -> None:
    model_dir = cluster.repository / DEFAULT_MODEL
    config = model_dir / "config.pbtxt"
    valid_config = config.read_text()
    rollouts = Rollouts()
    with steady_load(cluster.batcher, rollouts):
        wait_for(lambda: rollouts.current().answered["1"] >= 10, 60, "requests served by 1")

        # A version whose model file is corrupt, renamed into place as a deployment would.
        (model_dir / ".incoming").mkdir()
        (model_dir / ".incoming" / "model.pt").write_bytes(b"not a torchscript archive")
        (model_dir / ".incoming").rename(model_dir / "2")
        wait_for(lambda: index(cluster).get("2", ("",))[0] == "UNAVAILABLE", 30, "2 refused")
        state, reason = index(cluster)["2"]
        assert "model.pt could not be loaded" in reason
        assert "versions ['1'] go on serving" in reason
        assert index(cluster)["1"] == ("READY", "")
        refused = refused_load(cluster)
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "version 2" in (refused.details() or "")
        assert "Replace the file" in (refused.details() or "")

        # A config that does not parse, then one that parses but is invalid.
        config.write_text("max_batch_size: {{ not pbtxt\n")
        wait_for(lambda: index(cluster).get("", ("",))[0] == "UNAVAILABLE", 30, "config refused")
        state, reason = index(cluster)[""]
        assert "config.pbtxt" in reason
        assert "versions ['1'] go on serving as loaded before" in reason
        assert index(cluster)["1"] == ("READY", "")
        refused = refused_load(cluster)
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "config.pbtxt" in (refused.details() or "")

        config.write_text(valid_config.replace("max_batch_size: ", "max_batch_size: -"))
        refused = refused_load(cluster)
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "max_batch_size must be >= 0" in (refused.details() or "")
        during_faults = rollouts.current().answered["1"]
        wait_for(lambda: rollouts.current().answered["1"] >= during_faults + 10, 60, "1 serving on")

        # Fixed: version 2 rolls out.
        rollouts.begin("2")
        config.write_text(valid_config)
        shutil.copyfile(model_dir / "1" / "model.pt", model_dir / "2" / ".model.pt")
        (model_dir / "2" / ".model.pt").rename(model_dir / "2" / "model.pt")
        wait_for(
            lambda: (
                index(cluster).get("2") == ("READY", "")
                and index(cluster)["1"][0] == "UNAVAILABLE"
                and "" not in index(cluster)
            ),
            60,
            "version 2 serving alone",
        )
        rollouts.mark_retired()
        wait_for(
            lambda: sum(rollouts.current().after_retirement.values()) >= ANSWERS_AFTER_RETIREMENT,
            60,
            "answers from version 2",
        )
    check_counts(rollouts, "bad model and config, poll")


def test_a_model_new_to_the_repository_is_served_and_one_removed_is_not(
    cluster: Cluster, tmp_path: Path
) -> None:
    staging = tmp_path / "staging"
    shutil.copytree(cluster.repository / DEFAULT_MODEL, staging, ignore=lambda *_: [".*"])
    config = staging / "config.pbtxt"
    config.write_text(config.read_text().replace(f'"{DEFAULT_MODEL}"', '"second"'))
    rollouts = Rollouts()
    with steady_load(cluster.batcher, rollouts):
        wait_for(lambda: rollouts.current().answered["1"] >= 10, 60, "requests served by 1")
        assert index(cluster, "second") == {}

        staging.rename(cluster.repository / "second")
        wait_for(lambda: index(cluster, "second").get("1") == ("READY", ""), 60, "second ready")
        assert infer(cluster, "second").model_version == "1"

        # A model the batcher cannot batch: the index says why.
        odd = tmp_path / "odd"
        shutil.copytree(cluster.repository / "second", odd)
        (odd / "config.pbtxt").write_text(
            (odd / "config.pbtxt").read_text().replace('"second"', '"odd"')
            + 'parameters { key: "batching_policy" value { string_value: "magic" } }\n'
        )
        odd.rename(cluster.repository / "odd")
        wait_for(
            lambda: index(cluster, "odd").get("1", ("",))[0] == "UNAVAILABLE", 60, "odd refused"
        )
        state, reason = index(cluster, "odd")["1"]
        assert state == "UNAVAILABLE"
        assert "unknown batching_policy 'magic'" in reason

        shutil.rmtree(cluster.repository / "second")
        wait_for(
            lambda: index(cluster, "second").get("1", ("",))[0] == "UNAVAILABLE", 60, "removed"
        )
        assert index(cluster, "second")["1"] == ("UNAVAILABLE", "removed from the model repository")
        with pytest.raises(grpc.RpcError) as refused:
            infer(cluster, "second")
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        assert "'second' is not served (removed from the model repository)" in (
            refused.value.details() or ""
        )
        served = rollouts.current().answered["1"]
        wait_for(
            lambda: rollouts.current().answered["1"] >= served + 10, 60, "the other serving on"
        )
    check_counts(rollouts, "a model added and removed, poll")
