"""Loading and unloading a worker's models while it serves (Triton's explicit model control).

A load reads the model from the repository again and builds its runner beside the one serving:
only once the new runner is warm does it take the model's batches, so a load that fails (a
corrupt file, an invalid config) leaves the version already serving in place. The runner
replaced, or unloaded, finishes the batches it holds before its threads stop.

Every model version the worker has known keeps a state, READY, LOADING or UNAVAILABLE with the
reason, which the balancers learn from the worker's ModelUpdate reports and the batcher shows
as Triton's repository index.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from services.worker.repository import RepositoryEntry, scan
from tideserve.errors import InvalidArgument, TideserveError
from tideserve.v1 import cluster_pb2
from tideserve.v1 import model_config_pb2 as mc

logger = logging.getLogger(__name__)

READY = "READY"
LOADING = "LOADING"
UNAVAILABLE = "UNAVAILABLE"


class Runner(Protocol):
    """What the lifecycle needs of a services.worker.runner.ModelRunner."""

    config: mc.ModelConfig
    version: str

    def close(self) -> None: ...


R = TypeVar("R", bound=Runner)


@dataclass(frozen=True)
class VersionState:
    state: str
    reason: str = ""


class ModelLifecycle(Generic[R]):
    """Owns the worker's `runners` (model name -> runner; WorkerCore routes batches by it).
    `build(entry)` makes a warm runner and blocks (it runs in a thread). Every change of state
    is passed to each subscriber as a ModelUpdate, so every balancer learns it."""

    def __init__(
        self,
        repository: Path,
        runners: dict[str, R],
        build: Callable[[RepositoryEntry], R],
    ) -> None:
        self.repository = repository
        self.runners = runners
        self.build = build
        self.states: dict[tuple[str, str], VersionState] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._subscribers: list[Callable[[cluster_pb2.ModelUpdate], None]] = []

    def subscribe(self, callback: Callable[[cluster_pb2.ModelUpdate], None]) -> None:
        self._subscribers.append(callback)

    async def load(self, name: str) -> None:
        """Load `name`'s latest version from the repository; a no-op when that version is
        serving with the same config. Raises NotFound (not in the repository), InvalidArgument
        (invalid config, a model file that does not load) with the reason."""
        async with self._locks.setdefault(name, asyncio.Lock()):
            current = self.runners.get(name)
            try:
                (entry,) = await asyncio.to_thread(scan, self.repository, [name])
            except TideserveError as error:
                if current is None:
                    self._set(name, "", VersionState(UNAVAILABLE, str(error)))
                raise
            if current is not None and (current.version, current.config) == (
                entry.version,
                entry.config,
            ):
                return
            version = entry.version
            self._set(name, version, VersionState(LOADING))
            try:
                runner = await asyncio.to_thread(self.build, entry)
            except Exception as error:
                failure = (
                    error
                    if isinstance(error, TideserveError)
                    else InvalidArgument(
                        f"model {name} version {version}: {entry.model_path.name} could not be "
                        f"loaded: {error}"
                    )
                )
                serving = current is not None and current.version == version
                self._set(
                    name, version, VersionState(READY if serving else UNAVAILABLE, str(failure))
                )
                logger.warning(
                    "model load failed",
                    extra={"model": name, "version": version, "error": str(failure)},
                )
                raise failure from error
            self.runners[name] = runner
            self.states.pop((name, ""), None)
            if current is not None and current.version != version:
                self.states[(name, current.version)] = VersionState(
                    UNAVAILABLE, f"replaced by version {version}"
                )
            self._set(name, version, VersionState(READY))
            logger.info("model loaded", extra={"model": name, "version": version})
            if current is not None:
                await asyncio.to_thread(current.close)

    async def unload(self, name: str) -> None:
        """Stop serving `name` (a no-op if it is not served); batches it holds finish first."""
        async with self._locks.setdefault(name, asyncio.Lock()):
            runner = self.runners.pop(name, None)
            if runner is None:
                return
            self._set(name, runner.version, VersionState(UNAVAILABLE, "unloaded"))
            logger.info("model unloaded", extra={"model": name, "version": runner.version})
            await asyncio.to_thread(runner.close)

    def served(self) -> list[cluster_pb2.ServedModel]:
        return [
            cluster_pb2.ServedModel(config=runner.config, versions=[runner.version])
            for runner in self.runners.values()
        ]

    def statuses(self) -> list[cluster_pb2.ModelStatus]:
        served = {(name, runner.version) for name, runner in self.runners.items()}
        states = dict(self.states)
        for key in served:
            states.setdefault(key, VersionState(READY))
        return [
            cluster_pb2.ModelStatus(name=name, version=version, state=s.state, reason=s.reason)
            for (name, version), s in sorted(states.items())
        ]

    def update(
        self, control_id: int = 0, error: TideserveError | None = None
    ) -> cluster_pb2.ModelUpdate:
        update = cluster_pb2.ModelUpdate(
            control_id=control_id, models=self.served(), statuses=self.statuses()
        )
        if error is not None:
            update.error_code, update.error = error.code, str(error)
        return update

    def _set(self, name: str, version: str, state: VersionState) -> None:
        self.states[(name, version)] = state
        update = self.update()
        for callback in self._subscribers:
            callback(update)
