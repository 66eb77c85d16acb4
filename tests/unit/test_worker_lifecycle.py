"""The worker's model lifecycle on a real repository directory with a fake runner builder: a load
swaps the runner only once the new one is built, a failed load keeps the served version, an
unload closes the runner, and every change is published with each version's state."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from services.worker.lifecycle import ModelLifecycle
from services.worker.repository import RepositoryEntry
from tideserve.errors import InvalidArgument, NotFound
from tideserve.v1 import cluster_pb2
from tideserve.v1 import model_config_pb2 as mc

CONFIG = (
    "max_batch_size: 4\n"
    'input [ { name: "x" data_type: TYPE_FP32 dims: [2] } ]\n'
    'output [ { name: "y" data_type: TYPE_FP32 dims: [1] } ]\n'
)


class FakeRunner:
    """Stands in for a ModelRunner: remembers its entry and whether it was closed."""

    def __init__(self, entry: RepositoryEntry) -> None:
        self.config: mc.ModelConfig = entry.config
        self.version = entry.version
        self.closed = False

    def close(self) -> None:
        self.closed = True


def build(entry: RepositoryEntry) -> FakeRunner:
    if entry.model_path.read_bytes() == b"corrupt":
        raise RuntimeError("PytorchStreamReader failed reading zip archive")
    return FakeRunner(entry)


def add_version(repository: Path, name: str, version: str, content: bytes = b"weights") -> None:
    (repository / name / version).mkdir(parents=True)
    (repository / name / version / "model.pt").write_bytes(content)
    (repository / name / "config.pbtxt").write_text(CONFIG)


def states(lifecycle: ModelLifecycle) -> dict[tuple[str, str], tuple[str, str]]:
    return {(s.name, s.version): (s.state, s.reason) for s in lifecycle.statuses()}


@pytest.fixture
def published() -> list[cluster_pb2.ModelUpdate]:
    return []


@pytest.fixture
def lifecycle(tmp_path: Path, published: list) -> ModelLifecycle[FakeRunner]:
    add_version(tmp_path, "m", "1")
    created: ModelLifecycle[FakeRunner] = ModelLifecycle(tmp_path, {}, build)
    created.subscribe(published.append)
    return created


async def test_load_serves_the_latest_version_and_publishes_each_step(
    lifecycle: ModelLifecycle[FakeRunner], published: list[cluster_pb2.ModelUpdate]
) -> None:
    await lifecycle.load("m")
    assert list(lifecycle.runners["m"]) == ["1"]
    assert [[s.state for s in u.statuses] for u in published] == [["LOADING"], ["READY"]]
    assert [m.config.name for m in published[-1].models] == ["m"]
    published.clear()
    await lifecycle.load("m")  # the same version and config: nothing to do
    assert published == []


async def test_a_failed_load_keeps_the_served_version(
    lifecycle: ModelLifecycle[FakeRunner], tmp_path: Path
) -> None:
    await lifecycle.load("m")
    served = lifecycle.runners["m"]["1"]
    add_version(tmp_path, "m", "2", b"corrupt")
    with pytest.raises(InvalidArgument, match="version 2: model.pt could not be loaded"):
        await lifecycle.load("m")
    assert lifecycle.runners["m"] == {"1": served}
    assert not served.closed
    assert states(lifecycle)[("m", "1")] == ("READY", "")
    assert states(lifecycle)[("m", "2")][0] == "UNAVAILABLE"

    (tmp_path / "m" / "2" / "model.pt").write_bytes(b"good")
    await lifecycle.load("m")
    assert list(lifecycle.runners["m"]) == ["2"]
    assert served.closed
    assert states(lifecycle) == {
        ("m", "1"): ("UNAVAILABLE", "retired: versions ['2'] serve now"),
        ("m", "2"): ("READY", ""),
    }


async def test_unload_closes_the_runner_and_says_so(lifecycle: ModelLifecycle[FakeRunner]) -> None:
    await lifecycle.load("m")
    runner = lifecycle.runners["m"]["1"]
    await lifecycle.unload("m")
    assert "m" not in lifecycle.runners
    assert runner.closed
    assert states(lifecycle) == {("m", "1"): ("UNAVAILABLE", "unloaded")}
    assert lifecycle.update(7).control_id == 7
    assert not lifecycle.update().models
    await lifecycle.unload("m")  # not served: nothing to do


async def test_missing_models_and_invalid_configs_are_refused(
    lifecycle: ModelLifecycle[FakeRunner], tmp_path: Path
) -> None:
    with pytest.raises(NotFound, match="absent"):
        await lifecycle.load("absent")
    add_version(tmp_path, "bad", "1")
    (tmp_path / "bad" / "config.pbtxt").write_text("max_batch_size: -1\n")
    with pytest.raises(InvalidArgument, match="max_batch_size"):
        await lifecycle.load("bad")
    assert states(lifecycle)[("bad", "")][0] == "UNAVAILABLE"
    error = InvalidArgument("why")
    answer = lifecycle.update(3, error)
    assert (answer.error_code, answer.error) == ("INVALID_ARGUMENT", "why")


async def test_version_policy_picks_the_versions_served_together(
    lifecycle: ModelLifecycle[FakeRunner], tmp_path: Path
) -> None:
    add_version(tmp_path, "m", "2")
    add_version(tmp_path, "m", "3")
    config = tmp_path / "m" / "config.pbtxt"
    config.write_text(CONFIG + "version_policy: { latest: { num_versions: 2 } }\n")
    await lifecycle.load("m")
    assert list(lifecycle.runners["m"]) == ["2", "3"]
    (update,) = lifecycle.served()
    assert list(update.versions) == ["2", "3"]

    kept = lifecycle.runners["m"]["3"]
    config.write_text(CONFIG + "version_policy: { specific: { versions: [1, 3] } }\n")
    await lifecycle.load("m")
    assert list(lifecycle.runners["m"]) == ["1", "3"]
    assert lifecycle.runners["m"]["3"] is not kept  # the config changed: rebuilt
    assert states(lifecycle)[("m", "2")] == (
        "UNAVAILABLE",
        "retired: versions ['1', '3'] serve now",
    )

    config.write_text(CONFIG + "version_policy: { specific: { versions: [4] } }\n")
    with pytest.raises(NotFound, match=r"versions \[4\]"):
        await lifecycle.load("m")
    assert list(lifecycle.runners["m"]) == ["1", "3"]


async def test_poll_follows_version_directories_and_removed_models(
    lifecycle: ModelLifecycle[FakeRunner], tmp_path: Path
) -> None:
    await lifecycle.load("m")
    await lifecycle.poll()  # nothing changed
    assert list(lifecycle.runners["m"]) == ["1"]

    add_version(tmp_path, "m", "2", b"corrupt")  # a bad version: logged, 1 serves on
    await lifecycle.poll()
    assert list(lifecycle.runners["m"]) == ["1"]

    (tmp_path / "m" / "2" / "model.pt").write_bytes(b"good")
    await lifecycle.poll()
    assert list(lifecycle.runners["m"]) == ["2"]

    shutil.rmtree(tmp_path / "m" / "2")
    await lifecycle.poll()
    assert list(lifecycle.runners["m"]) == ["1"]

    shutil.rmtree(tmp_path / "m")
    await lifecycle.poll()
    assert "m" not in lifecycle.runners
    assert states(lifecycle)[("m", "1")] == ("UNAVAILABLE", "removed from the model repository")


async def test_poll_loads_models_new_to_the_repository(
    lifecycle: ModelLifecycle[FakeRunner], tmp_path: Path
) -> None:
    await lifecycle.poll()
    assert list(lifecycle.runners) == ["m"], "a model there before the first poll is loaded too"

    (tmp_path / "n" / "1").mkdir(parents=True)
    (tmp_path / "n" / "config.pbtxt").write_text(CONFIG)
    await lifecycle.poll()
    assert "n" not in lifecycle.runners, "a model without a model file yet is still arriving"
    assert ("n", "") not in states(lifecycle)

    (tmp_path / "n" / "1" / "model.pt").write_bytes(b"weights")
    await lifecycle.poll()
    assert list(lifecycle.runners["n"]) == ["1"]
    assert states(lifecycle)[("n", "1")] == ("READY", "")
    assert list(lifecycle.runners["m"]) == ["1"], "the other model is left as it was"


async def test_poll_loads_only_the_models_named(tmp_path: Path) -> None:
    add_version(tmp_path, "m", "1")
    add_version(tmp_path, "n", "1")
    named: ModelLifecycle[FakeRunner] = ModelLifecycle(tmp_path, {}, build, ("n",))
    await named.poll()
    assert list(named.runners) == ["n"]

    # One loaded by model control is followed from then on.
    await named.load("m")
    (tmp_path / "m" / "2").mkdir()
    (tmp_path / "m" / "2" / "model.pt").write_bytes(b"weights v2")
    await named.poll()
    assert list(named.runners["m"]) == ["2"]


async def test_a_model_unloaded_by_model_control_stays_unloaded_until_it_changes(
    lifecycle: ModelLifecycle[FakeRunner], tmp_path: Path
) -> None:
    await lifecycle.poll()
    await lifecycle.unload("m")
    await lifecycle.poll()
    assert "m" not in lifecycle.runners
    assert states(lifecycle)[("m", "1")] == ("UNAVAILABLE", "unloaded")

    (tmp_path / "m" / "2").mkdir()
    (tmp_path / "m" / "2" / "model.pt").write_bytes(b"weights v2")
    await lifecycle.poll()
    assert list(lifecycle.runners["m"]) == ["2"]


async def test_a_poll_shows_why_a_change_failed_and_tries_again_only_once_it_changes(
    lifecycle: ModelLifecycle[FakeRunner], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await lifecycle.load("m")
    served = lifecycle.runners["m"]["1"]
    builds: list[str] = []
    monkeypatch.setattr(lifecycle, "build", lambda e: builds.append(e.version) or build(e))

    add_version(tmp_path, "m", "2", b"corrupt")
    await lifecycle.poll()
    await lifecycle.poll()
    assert builds == ["2"], "an unchanged repository is not loaded again"
    state, reason = states(lifecycle)[("m", "2")]
    assert state == "UNAVAILABLE"
    assert "model.pt could not be loaded" in reason
    assert "versions ['1'] go on serving" in reason
    assert lifecycle.runners["m"] == {"1": served}

    config = tmp_path / "m" / "config.pbtxt"
    config.write_text("max_batch_size: {{ not pbtxt\n")
    await lifecycle.poll()
    state, reason = states(lifecycle)[("m", "")]
    assert state == "UNAVAILABLE"
    assert "config.pbtxt" in reason
    assert "versions ['1'] go on serving as loaded before" in reason
    assert states(lifecycle)[("m", "1")] == ("READY", "")
    assert lifecycle.runners["m"] == {"1": served}

    config.write_text(CONFIG)
    (tmp_path / "m" / "2" / "model.pt").write_bytes(b"weights v2")
    await lifecycle.poll()
    assert builds == ["2", "2"]
    assert list(lifecycle.runners["m"]) == ["2"]
    assert ("m", "") not in states(lifecycle)
    assert states(lifecycle)[("m", "2")] == ("READY", "")
    assert served.closed
