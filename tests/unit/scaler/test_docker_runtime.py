"""DockerRuntime against a fake Docker engine: what containers it asks for, and that it only ever
lists, stops or removes containers carrying its own owner label."""

from __future__ import annotations

import itertools
from typing import Any

import docker.errors
import pytest

from services.scaler.docker_runtime import OWNER_LABEL, WORKER_ID_LABEL, DockerRuntime
from tideserve.errors import Unavailable

OWNER = "scaler-a"
OTHER = "scaler-b"
STARTED_AT = "2026-11-25T12:00:00.123456789Z"
STARTED_UNIX = 1795608000.123456


class FakeContainer:
    """Mirrors the attributes docker-py's Container exposes after an inspect."""

    def __init__(self, engine: FakeEngine, container_id: str, labels: dict[str, str]) -> None:
        self.engine = engine
        self.id = container_id
        self.attrs: dict[str, Any] = {
            "Config": {"Labels": dict(labels)},
            "State": {"Status": "running", "StartedAt": STARTED_AT, "ExitCode": 0},
        }
        self.stop_timeouts: list[int] = []

    @property
    def labels(self) -> dict[str, str]:
        return self.attrs["Config"]["Labels"]

    @property
    def status(self) -> str:
        return self.attrs["State"]["Status"]

    def exit(self, code: int) -> None:
        self.attrs["State"].update(Status="exited", ExitCode=code)

    def stop(self, *, timeout: int) -> None:
        if self.id not in self.engine.containers_by_id:
            raise docker.errors.NotFound(f"No such container: {self.id}")
        self.stop_timeouts.append(timeout)
        self.exit(143)

    def remove(self, *, force: bool) -> None:
        if self.status == "running" and not force:
            raise docker.errors.APIError("container is running")
        if self.engine.containers_by_id.pop(self.id, None) is None:
            raise docker.errors.NotFound(f"No such container: {self.id}")
        self.engine.removed.append(self.id)


class FakeContainers:
    """The `client.containers` collection; filters as the engine applies them (labels ANDed,
    statuses ORed), unless `honor_filters` is off to prove the runtime checks labels itself."""

    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.run_calls: list[dict[str, Any]] = []
        self.fail_start_with: Exception | None = None

    def run(self, image: str, command: list[str], **kwargs: Any) -> FakeContainer:
        self.run_calls.append({"image": image, "command": command, **kwargs})
        container = self.engine.add(kwargs.get("labels", {}))
        if self.fail_start_with is not None:
            container.attrs["State"]["Status"] = "created"
            raise self.fail_start_with
        return container

    def get(self, container_id: str) -> FakeContainer:
        try:
            return self.engine.containers_by_id[container_id]
        except KeyError:
            raise docker.errors.NotFound(f"No such container: {container_id}") from None

    def list(
        self, *, all: bool, filters: dict[str, Any], ignore_removed: bool = False
    ) -> list[FakeContainer]:
        found = list(self.engine.containers_by_id.values())
        if not all:
            found = [c for c in found if c.status == "running"]
        if not self.engine.honor_filters:
            return found
        for wanted in filters.get("label", []):
            key, _, value = wanted.partition("=")
            found = [c for c in found if c.labels.get(key) == value]
        if "status" in filters:
            found = [c for c in found if c.status in filters["status"]]
        return found


class FakeEngine:
    """A fake `docker.DockerClient` holding containers in memory."""

    def __init__(self, *, honor_filters: bool = True) -> None:
        self.honor_filters = honor_filters
        self.containers_by_id: dict[str, FakeContainer] = {}
        self.removed: list[str] = []
        self.closed = False
        self._ids = (f"{n:064x}" for n in itertools.count(1))
        self.containers = FakeContainers(self)

    def add(self, labels: dict[str, str]) -> FakeContainer:
        container = FakeContainer(self, next(self._ids), labels)
        self.containers_by_id[container.id] = container
        return container

    def add_worker(self, owner: str, worker_id: str) -> FakeContainer:
        return self.add({OWNER_LABEL: owner, WORKER_ID_LABEL: worker_id})

    def close(self) -> None:
        self.closed = True


def make_runtime(engine: FakeEngine, **overrides: Any) -> DockerRuntime:
    kwargs: dict[str, Any] = {
        "image": "tideserve-worker:dev",
        "owner_id": OWNER,
        "balancers": ["127.0.0.1:8100", "127.0.0.1:8101"],
        "model_repository": "/srv/models",
        "cpus": 2.0,
        "memory": "1g",
    }
    kwargs.update(overrides)
    return DockerRuntime(engine, **kwargs)


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


async def test_start_runs_a_labelled_confined_worker_container(engine: FakeEngine) -> None:
    runtime = make_runtime(engine)

    worker = await runtime.start("w1")

    (call,) = engine.containers.run_calls
    assert worker.worker_id == "w1"
    assert worker.runtime_id in engine.containers_by_id
    assert worker.state == "starting"
    assert call["image"] == "tideserve-worker:dev"
    assert call["command"] == ["python", "-m", "services.worker"]
    assert call["labels"] == {OWNER_LABEL: OWNER, WORKER_ID_LABEL: "w1"}
    assert call["environment"] == {
        "TIDESERVE_WORKER_WORKER_ID": "w1",
        "TIDESERVE_WORKER_BALANCERS": "127.0.0.1:8100,127.0.0.1:8101",
        "TIDESERVE_WORKER_MODEL_REPOSITORY": "/models",
        "OMP_NUM_THREADS": "2",
    }
    assert call["volumes"] == {"/srv/models": {"bind": "/models", "mode": "ro"}}
    assert call["nano_cpus"] == 2_000_000_000
    assert call["mem_limit"] == "1g"
    assert call["init"] is True
    assert call["network_mode"] == "host"
    assert call["privileged"] is False
    assert call["cap_drop"] == ["ALL"]
    assert call["security_opt"] == ["no-new-privileges"]
    assert call["pids_limit"] > 0
    assert call["read_only"] is True
    assert call["tmpfs"] == {"/tmp": ""}
    assert call["detach"] is True


@pytest.mark.parametrize(("cpus", "threads"), [(0.5, "1"), (1.0, "1"), (2.5, "2"), (4.0, "4")])
async def test_omp_threads_follow_the_cpu_quota(
    engine: FakeEngine, cpus: float, threads: str
) -> None:
    await make_runtime(engine, cpus=cpus).start("w1")

    (call,) = engine.containers.run_calls
    assert call["environment"]["OMP_NUM_THREADS"] == threads
    assert call["nano_cpus"] == int(cpus * 1e9)


async def test_worker_env_cannot_override_identity(engine: FakeEngine) -> None:
    runtime = make_runtime(
        engine, worker_env={"TIDESERVE_WORKER_WORKER_ID": "spoof", "TIDESERVE_WORKER_DEVICE": "cpu"}
    )

    await runtime.start("w1")

    env = engine.containers.run_calls[0]["environment"]
    assert env["TIDESERVE_WORKER_WORKER_ID"] == "w1"
    assert env["TIDESERVE_WORKER_DEVICE"] == "cpu"


async def test_starting_a_running_worker_id_again_is_refused(engine: FakeEngine) -> None:
    runtime = make_runtime(engine)
    await runtime.start("w1")

    with pytest.raises(ValueError, match="already running"):
        await runtime.start("w1")


async def test_failed_start_removes_the_created_container(engine: FakeEngine) -> None:
    foreign = engine.add_worker(OTHER, "w1")
    engine.containers.fail_start_with = docker.errors.APIError("bind source path does not exist")
    runtime = make_runtime(engine)

    with pytest.raises(Unavailable, match="bind source"):
        await runtime.start("w1")

    assert list(engine.containers_by_id) == [foreign.id]
    assert await runtime.list() == []


async def test_missing_image_is_unavailable(engine: FakeEngine) -> None:
    engine.containers.fail_start_with = docker.errors.ImageNotFound("no such image")

    with pytest.raises(Unavailable, match="no such image"):
        await make_runtime(engine).start("w1")


async def test_list_adopts_own_containers_and_ignores_other_owners(engine: FakeEngine) -> None:
    adopted = engine.add_worker(OWNER, "w-old")
    engine.add_worker(OTHER, "w-theirs")
    engine.add({"app": "unrelated"})
    engine.add_worker(OWNER, "w-exited").exit(1)
    runtime = make_runtime(engine)
    started = await runtime.start("w-new")
    started.state = "ready"

    workers = {w.worker_id: w for w in await runtime.list()}

    assert set(workers) == {"w-old", "w-new"}
    assert workers["w-old"].runtime_id == adopted.id
    assert workers["w-old"].started_unix == pytest.approx(STARTED_UNIX)
    # The same object comes back, so the controller's bookkeeping on it survives.
    assert workers["w-new"] is started
    assert workers["w-new"].state == "ready"


async def test_stop_terminates_with_grace_then_removes(engine: FakeEngine) -> None:
    runtime = make_runtime(engine)
    worker = await runtime.start("w1")
    container = engine.containers_by_id[worker.runtime_id]

    await runtime.stop(worker, grace_s=2.5)

    assert container.stop_timeouts == [3]
    assert engine.removed == [worker.runtime_id]
    assert await runtime.list() == []


async def test_stop_of_a_vanished_container_is_quiet(engine: FakeEngine) -> None:
    runtime = make_runtime(engine)
    worker = await runtime.start("w1")
    del engine.containers_by_id[worker.runtime_id]

    await runtime.stop(worker, grace_s=1.0)

    assert await runtime.list() == []


async def test_stop_refuses_a_container_of_another_owner(engine: FakeEngine) -> None:
    foreign = engine.add_worker(OTHER, "w1")
    runtime = make_runtime(engine)
    (impostor,) = await make_runtime(engine, owner_id=OTHER).list()

    with pytest.raises(ValueError, match="not owned"):
        await runtime.stop(impostor, grace_s=1.0)

    assert foreign.status == "running"
    assert foreign.stop_timeouts == []
    assert engine.removed == []


async def test_reap_removes_own_dead_containers_only(engine: FakeEngine) -> None:
    runtime = make_runtime(engine)
    alive = await runtime.start("w-alive")
    crashed = await runtime.start("w-crashed")
    engine.containers_by_id[crashed.runtime_id].exit(137)
    adopted_dead = engine.add_worker(OWNER, "w-dead-before-restart")
    adopted_dead.exit(1)
    theirs = engine.add_worker(OTHER, "w-theirs")
    theirs.exit(1)

    reaped = await runtime.reap()

    assert {w.worker_id for w in reaped} == {"w-crashed", "w-dead-before-restart"}
    assert set(engine.removed) == {crashed.runtime_id, adopted_dead.id}
    assert theirs.id in engine.containers_by_id
    assert [w.worker_id for w in await runtime.list()] == [alive.worker_id]
    assert await runtime.reap() == []


async def test_reap_forgets_workers_whose_container_disappeared(engine: FakeEngine) -> None:
    runtime = make_runtime(engine)
    worker = await runtime.start("w1")
    del engine.containers_by_id[worker.runtime_id]

    assert await runtime.reap() == [worker]
    assert await runtime.reap() == []


async def test_labels_are_checked_even_if_the_engine_ignores_filters() -> None:
    engine = FakeEngine(honor_filters=False)
    theirs = engine.add_worker(OTHER, "w-theirs")
    theirs_dead = engine.add_worker(OTHER, "w-theirs-dead")
    theirs_dead.exit(1)
    runtime = make_runtime(engine)
    await runtime.start("w-mine")

    assert [w.worker_id for w in await runtime.list()] == ["w-mine"]
    assert await runtime.reap() == []
    assert engine.removed == []
    assert theirs.status == "running"


async def test_close_closes_the_client_and_leaves_workers_running(engine: FakeEngine) -> None:
    runtime = make_runtime(engine)
    worker = await runtime.start("w1")

    await runtime.close()

    assert engine.closed
    assert engine.containers_by_id[worker.runtime_id].status == "running"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"owner_id": ""}, "owner_id"),
        ({"image": ""}, "image"),
        ({"balancers": []}, "balancer"),
        ({"model_repository": "models"}, "absolute"),
        ({"cpus": 0}, "cpus"),
    ],
)
def test_invalid_configuration_is_rejected(
    engine: FakeEngine, overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        make_runtime(engine, **overrides)
