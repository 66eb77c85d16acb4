"""Successive model versions rolled out under steady load, every request counted: shared by the
process-runtime and the Docker rollout tests.

A rollout publishes version N in the repository (copied under a name the workers' scan ignores,
then renamed into place at once), optionally asks for it with RepositoryModelLoad, and waits
until the repository index shows N READY and every older version retired. From then on every
request sent must be answered by version N, or, if it is still in flight when version N + 1 is
published, by a version no older than N. Each request is booked against the rollout during
which it was sent, through the booking hook of tideserve_tools.loadgen's SteadyLoad."""

from __future__ import annotations

import shutil
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from harness.cluster import sync_channel, wait_for
from services.worker.models import DEFAULT_MODEL
from tideserve.v1 import inference_pb2 as pb
from tideserve.v1 import inference_pb2_grpc
from tideserve_tools.loadgen import SteadyLoad

CLIENTS = 4
# Answers from the new version, sent after the old one was retired, that each rollout waits for.
ANSWERS_AFTER_RETIREMENT = 10


@dataclass
class RolloutCount:
    """The requests sent while one version rolled out, and how each ended."""

    version: str
    sent: int = 0
    # Answers by the version that computed them.
    answered: Counter[str] = field(default_factory=Counter)
    # Failures by "CODE: details".
    failed: Counter[str] = field(default_factory=Counter)
    # Answers to requests sent once the index showed the old versions retired, by version:
    # those that came back before the next rollout began, and those that came back after it
    # (a request still in flight when the next version was published may be answered by it).
    after_retirement: Counter[str] = field(default_factory=Counter)
    after_next_rollout: Counter[str] = field(default_factory=Counter)

    def as_line(self) -> str:
        return (
            f"rollout to version {self.version}: {self.sent} sent, "
            f"{sum(self.failed.values())} failed, answered by {dict(sorted(self.answered.items()))}"
        )


@dataclass
class Booking:
    """One request, booked on the rollout current when it was sent."""

    count: RolloutCount
    # Whether the index already showed the older versions retired when it was sent.
    retired: bool
    rollouts: Rollouts

    def answered(self, response: pb.ModelInferResponse) -> None:
        with self.rollouts.lock:
            version = response.model_version
            self.count.answered[version] += 1
            if not self.retired:
                return
            if self.rollouts.counts[-1] is self.count:
                self.count.after_retirement[version] += 1
            else:
                self.count.after_next_rollout[version] += 1

    def failed(self, error: grpc.aio.AioRpcError) -> None:
        with self.rollouts.lock:
            self.count.failed[f"{error.code().name}: {error.details()}"] += 1


class Rollouts:
    """The requests of a SteadyLoad filed by rollout (pass `book` as the load's `book`): each
    request is booked on the rollout current when it was sent, from version 1 on."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts = [RolloutCount("1")]
        self.retired = False

    def begin(self, version: str) -> None:
        with self.lock:
            self.counts.append(RolloutCount(version))
            self.retired = False

    def mark_retired(self) -> None:
        with self.lock:
            self.retired = True

    def current(self) -> RolloutCount:
        with self.lock:
            return self.counts[-1]

    def book(self) -> Booking:
        with self.lock:
            count = self.counts[-1]
            count.sent += 1
            return Booking(count, self.retired, self)


def steady_load(address: str, rollouts: Rollouts) -> SteadyLoad:
    """CLIENTS clients sending one-row requests for the default model back to back, each
    request booked in `rollouts`."""
    return SteadyLoad(address, DEFAULT_MODEL, clients=CLIENTS, book=rollouts.book)


def repository_index(address: str) -> dict[str, str]:
    """The default model's versions and their states, as the batcher's repository index shows."""
    with sync_channel(address) as channel:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        response = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=5)
    return {m.version: m.state for m in response.models if m.name == DEFAULT_MODEL}


def load_model(address: str) -> None:
    with sync_channel(address) as channel:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = pb.RepositoryModelLoadRequest(model_name=DEFAULT_MODEL)
        stub.RepositoryModelLoad(request, timeout=60)


def publish_version(repository: Path, version: int, mode: int | None = None) -> None:
    """Version `version` of the default model, a copy of version 1, appears at once. `mode`:
    permissions for the new files (directories get their execute bits too), for readers of
    another user."""
    model_dir = repository / DEFAULT_MODEL
    staging = model_dir / f".incoming-{version}"
    shutil.copytree(model_dir / "1", staging)
    if mode is not None:
        for path in [staging, *staging.rglob("*")]:
            path.chmod(mode | 0o111 if path.is_dir() else mode)
    staging.rename(model_dir / str(version))


def only_latest_ready(address: str, version: str) -> bool:
    states = repository_index(address)
    return states.get(version) == "READY" and all(
        state == "UNAVAILABLE" for v, state in states.items() if v != version
    )


def roll_out(
    rollouts: Rollouts,
    address: str,
    repository: Path,
    versions: range,
    *,
    explicit_load: bool,
    mode: int | None = None,
    timeout_s: float = 120.0,
) -> None:
    """Roll out each of `versions` in turn while a load books its requests in `rollouts`; with
    `explicit_load`, each is asked for with RepositoryModelLoad, else the workers' repository
    poll finds it."""
    wait_for(
        lambda: rollouts.current().answered["1"] >= ANSWERS_AFTER_RETIREMENT,
        timeout_s,
        "requests served by version 1",
    )
    for number in versions:
        version = str(number)
        rollouts.begin(version)
        publish_version(repository, number, mode)
        if explicit_load:
            load_model(address)
        wait_for(
            lambda version=version: only_latest_ready(address, version),
            timeout_s,
            f"version {version} serving alone",
        )
        rollouts.mark_retired()
        wait_for(
            lambda: sum(rollouts.current().after_retirement.values()) >= ANSWERS_AFTER_RETIREMENT,
            timeout_s,
            f"answers after version {version} took over",
        )


def roll_out_under_load(
    address: str,
    repository: Path,
    rollouts_wanted: int,
    label: str,
    *,
    explicit_load: bool,
    mode: int | None = None,
) -> None:
    """Versions 2 .. 1 + `rollouts_wanted` rolled out one after another under a steady load,
    then every request checked: the whole test, whatever runtime serves `address`."""
    rollouts = Rollouts()
    with steady_load(address, rollouts):
        roll_out(
            rollouts,
            address,
            repository,
            range(2, 2 + rollouts_wanted),
            explicit_load=explicit_load,
            mode=mode,
        )
    assert len(rollouts.counts) == 1 + rollouts_wanted
    check_counts(rollouts, label)


def check_counts(rollouts: Rollouts, label: str, report: Callable[[str], None] = print) -> None:
    """Every request answered, none failed, and after each rollout only the new version
    answered. Each rollout's counts are reported first, as lines starting with `label`."""
    for count in rollouts.counts:
        report(f"{label}: {count.as_line()}")
    for count in rollouts.counts:
        assert not count.failed, count.as_line() + f" failures: {dict(count.failed)}"
        assert sum(count.answered.values()) == count.sent, count.as_line()
    for count in rollouts.counts[1:]:
        assert set(count.after_retirement) == {count.version}, (
            f"after version {count.version} took over, answers came from "
            f"{dict(count.after_retirement)}"
        )
        older = {v: n for v, n in count.after_next_rollout.items() if int(v) < int(count.version)}
        assert not older, (
            f"requests sent after version {count.version} took over were answered by older "
            f"versions {older} once the next rollout began"
        )
        assert count.answered[count.version] > 0, count.as_line()
