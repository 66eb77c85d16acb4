"""Successive model versions rolled out under steady load, every request counted: shared by the
process-runtime and the Docker rollout tests.

A rollout publishes version N in the repository (copied under a name the workers' scan ignores,
then renamed into place at once), optionally asks for it with RepositoryModelLoad, and waits
until the repository index shows N READY and every older version retired. From then on every
request sent must be answered by version N. Each request is booked against the rollout during
which it was sent."""

from __future__ import annotations

import shutil
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from harness.cluster import sync_channel, wait_for
from services.worker.models import DEFAULT_MODEL
from tideserve.v1 import inference_pb2 as pb
from tideserve.v1 import inference_pb2_grpc

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
    # Answers to requests sent once the index showed the old versions retired, by version.
    after_retirement: Counter[str] = field(default_factory=Counter)

    def as_line(self) -> str:
        return (
            f"rollout to version {self.version}: {self.sent} sent, "
            f"{sum(self.failed.values())} failed, answered by {dict(sorted(self.answered.items()))}"
        )


class SteadyLoad:
    """CLIENTS threads sending one-row requests for the default model back to back until
    stopped. Each request is booked on the rollout current when it was sent."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.lock = threading.Lock()
        self.counts = [RolloutCount("1")]
        self.retired = False
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(i,)) for i in range(CLIENTS)]

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

    def _client(self, index: int) -> None:
        rng = np.random.default_rng(index)
        with sync_channel(self.address) as channel:
            stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
            while not self.stop.is_set():
                request = pb.ModelInferRequest(model_name=DEFAULT_MODEL)
                request.inputs.add(name="INPUT__0", datatype="FP32", shape=[1, 1, 28, 28])
                request.raw_input_contents.append(rng.random(784, np.float32).tobytes())
                with self.lock:
                    count, retired = self.counts[-1], self.retired
                    count.sent += 1
                try:
                    version = stub.ModelInfer(request, timeout=30).model_version
                except grpc.RpcError as error:
                    with self.lock:
                        count.failed[f"{error.code().name}: {error.details()}"] += 1
                    continue
                with self.lock:
                    count.answered[version] += 1
                    if retired:
                        count.after_retirement[version] += 1

    def __enter__(self) -> SteadyLoad:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)


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
    load: SteadyLoad,
    address: str,
    repository: Path,
    versions: range,
    *,
    explicit_load: bool,
    mode: int | None = None,
    timeout_s: float = 120.0,
) -> None:
    """Roll out each of `versions` in turn under `load`; with `explicit_load`, each is asked for
    with RepositoryModelLoad, else the workers' repository poll finds it."""
    wait_for(
        lambda: load.current().answered["1"] >= ANSWERS_AFTER_RETIREMENT,
        timeout_s,
        "requests served by version 1",
    )
    for number in versions:
        version = str(number)
        load.begin(version)
        publish_version(repository, number, mode)
        if explicit_load:
            load_model(address)
        wait_for(
            lambda version=version: only_latest_ready(address, version),
            timeout_s,
            f"version {version} serving alone",
        )
        load.mark_retired()
        wait_for(
            lambda: sum(load.current().after_retirement.values()) >= ANSWERS_AFTER_RETIREMENT,
            timeout_s,
            f"answers after version {version} took over",
        )


def check_counts(load: SteadyLoad, label: str, report: Callable[[str], None] = print) -> None:
    """Every request answered, none failed, and after each rollout only the new version
    answered. Each rollout's counts are reported first, as lines starting with `label`."""
    for count in load.counts:
        report(f"{label}: {count.as_line()}")
    for count in load.counts:
        assert not count.failed, count.as_line() + f" failures: {dict(count.failed)}"
        assert sum(count.answered.values()) == count.sent, count.as_line()
    for count in load.counts[1:]:
        assert set(count.after_retirement) == {count.version}, (
            f"after version {count.version} took over, answers came from "
            f"{dict(count.after_retirement)}"
        )
        assert count.answered[count.version] > 0, count.as_line()
