"""A corrupt model file or an invalid config.pbtxt in a served model's repository, found by the
workers' poll or asked for with RepositoryModelLoad, under steady load: Load answers
INVALID_ARGUMENT saying what is wrong, the repository index shows it UNAVAILABLE with the reason,
and the version already serving keeps serving every request. Once fixed, the new version rolls
out."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
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


def index(cluster: Cluster) -> dict[str, tuple[str, str]]:
    with sync_channel(cluster.batcher) as channel:
        response = inference_pb2_grpc.GRPCInferenceServiceStub(channel).RepositoryIndex(
            pb.RepositoryIndexRequest(), timeout=5
        )
    return {m.version: (m.state, m.reason) for m in response.models if m.name == DEFAULT_MODEL}


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
