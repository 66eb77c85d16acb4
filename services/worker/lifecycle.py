"""Loading and unloading a worker's models while it serves (Triton's explicit model control).

A load reads the model from the repository again and builds the runners of the versions its
version_policy picks beside those serving: only once every new runner is warm do they take the
model's batches, so a load that fails (a corrupt file, an invalid config) leaves the versions
already serving in place. A runner replaced, or unloaded, finishes the batches it holds before
its threads stop.

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

from services.worker.repository import MODEL_FILES, RepositoryEntry, model_names, scan
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

    def close(self) -> None: ...


R = TypeVar("R", bound=Runner)


@dataclass(frozen=True)
class VersionState:
    state: str
    reason: str = ""


def _fingerprint(model_dir: Path) -> tuple[tuple[str, int, int, int], ...]:
    """Path, inode, size and modification time of a model's config and model files: what a
    load reads, so a change to any of them (or one renamed into place) gives another."""
    paths = [model_dir / "config.pbtxt"]
    paths += [p for name in MODEL_FILES for p in model_dir.glob(f"*/{name}")]
    found = []
    for path in sorted(paths):
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        found.append(
            (str(path.relative_to(model_dir)), stat.st_ino, stat.st_size, stat.st_mtime_ns)
        )
    return tuple(found)


class ModelLifecycle(Generic[R]):
    """Owns the worker's `runners` (model name -> version -> runner, ascending versions;
    WorkerCore routes batches by it). `build(entry)` makes a warm runner and blocks (it runs in
    a thread). Every change of state is passed to each subscriber as a ModelUpdate, so every
    balancer learns it."""

    def __init__(
        self,
        repository: Path,
        runners: dict[str, dict[str, R]],
        build: Callable[[RepositoryEntry], R],
        names: tuple[str, ...] = (),
    ) -> None:
        self.repository = repository
        self.runners = runners
        self.build = build
        # The models a poll may load: these alone (the worker's --models), or every model of
        # the repository when empty.
        self.names = names
        self.states: dict[tuple[str, str], VersionState] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        # The repository as it was when polls should start leaving each model alone: at its
        # last failed poll-triggered load (rather than failing the same load every period), or
        # when model control unloaded it (the operator's unload holds). Polls skip the model
        # until its files change.
        self._held: dict[str, tuple[tuple[str, int, int, int], ...]] = {}
        self._subscribers: list[Callable[[cluster_pb2.ModelUpdate], None]] = []

    def subscribe(self, callback: Callable[[cluster_pb2.ModelUpdate], None]) -> None:
        self._subscribers.append(callback)

    async def load(self, name: str) -> None:
        """Serve the versions of `name` its version_policy picks in the repository now: build
        those not served (or whose config changed), then switch to the new set at once and
        close the runners left out. A no-op when nothing changed. Raises NotFound (not in the
        repository), InvalidArgument (invalid config, a model file that does not load) with
        the reason; then nothing served changes."""
        self._held.pop(name, None)
        async with self._locks.setdefault(name, asyncio.Lock()):
            current = dict(self.runners.get(name, {}))
            try:
                entries = await asyncio.to_thread(scan, self.repository, [name])
            except TideserveError as error:
                # Shown on the model's version-less row: the config is the model's, not one
                # version's. The versions serving keep the config they were loaded with.
                reason = str(error)
                if current:
                    reason += f"; versions {list(current)} go on serving as loaded before"
                self._set(name, "", VersionState(UNAVAILABLE, reason))
                raise
            kept = {
                e.version: current[e.version]
                for e in entries
                if e.version in current and current[e.version].config == e.config
            }
            missing = [e for e in entries if e.version not in kept]
            if not missing and len(kept) == len(current):
                return
            for entry in missing:
                self._set(name, entry.version, VersionState(LOADING))
            built = await self._build_all(name, missing, current)
            versions = {e.version: kept.get(e.version) or built[e.version] for e in entries}
            self.runners[name] = versions
            self.states.pop((name, ""), None)
            for version in current:
                if version not in versions:
                    self.states[(name, version)] = VersionState(
                        UNAVAILABLE, f"retired: versions {list(versions)} serve now"
                    )
            for version in versions:
                self.states[(name, version)] = VersionState(READY)
            self._publish()
            logger.info("model loaded", extra={"model": name, "versions": list(versions)})
            retired = [r for v, r in current.items() if versions.get(v) is not r]
            for runner in retired:
                await asyncio.to_thread(runner.close)

    async def _build_all(
        self, name: str, entries: list[RepositoryEntry], current: dict[str, R]
    ) -> dict[str, R]:
        """A runner per entry; if one fails, those built are closed and its error raised."""
        built: dict[str, R] = {}
        for entry in entries:
            try:
                built[entry.version] = await asyncio.to_thread(self.build, entry)
            except Exception as error:
                failure = (
                    error
                    if isinstance(error, TideserveError)
                    else InvalidArgument(
                        f"model {name} version {entry.version}: {entry.model_path.name} could "
                        f"not be loaded ({error}); versions {list(current)} go on serving. "
                        "Replace the file with a TorchScript or torch.export archive that "
                        "loads, then load the model again"
                    )
                )
                for other in entries:
                    serving = other.version in current
                    state = VersionState(READY) if serving else VersionState(UNAVAILABLE)
                    if other is entry:
                        state = VersionState(state.state, str(failure))
                    self._set(name, other.version, state)
                logger.warning(
                    "model load failed",
                    extra={"model": name, "version": entry.version, "error": str(failure)},
                )
                for runner in built.values():
                    await asyncio.to_thread(runner.close)
                raise failure from error
        return built

    async def unload(self, name: str, reason: str = "unloaded") -> None:
        """Stop serving `name` (a no-op if it is not served); batches it holds finish first.
        Until the model's files change, polls leave it unloaded."""
        self._held[name] = await asyncio.to_thread(_fingerprint, self.repository / name)
        async with self._locks.setdefault(name, asyncio.Lock()):
            versions = self.runners.pop(name, None)
            if not versions:
                return
            for version in versions:
                self.states[(name, version)] = VersionState(UNAVAILABLE, reason)
            self._publish()
            logger.info("model unloaded", extra={"model": name, "versions": list(versions)})
            for runner in versions.values():
                await asyncio.to_thread(runner.close)

    async def poll(self) -> None:
        """Bring the worker in line with the repository as it is now, as Triton's poll mode:
        load each model there (of `names`, if set) as its version_policy picks, new ones too (a
        no-op when nothing changed), and unload a served model whose directory or config is
        gone. A load that fails is logged, shown in the model's states, and tried again once
        the model's files change; the versions serving go on serving."""
        for name in list(self.runners):
            if not (self.repository / name / "config.pbtxt").is_file():
                await self.unload(name, "removed from the model repository")
        present = await asyncio.to_thread(model_names, self.repository)
        new = {n for n in present if not self.names or n in self.names}
        for name in sorted(new | set(self.runners)):
            seen = await asyncio.to_thread(_fingerprint, self.repository / name)
            if self._held.get(name) == seen:
                continue
            self._held.pop(name, None)
            try:
                await self.load(name)
            except TideserveError as error:
                self._held[name] = seen
                logger.warning(
                    "repository poll could not load a model; serving what was served",
                    extra={"model": name, "error": str(error)},
                )

    def served(self) -> list[cluster_pb2.ServedModel]:
        return [
            cluster_pb2.ServedModel(config=list(v.values())[-1].config, versions=list(v))
            for v in self.runners.values()
        ]

    def statuses(self) -> list[cluster_pb2.ModelStatus]:
        served = {(name, version) for name, v in self.runners.items() for version in v}
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
        self._publish()

    def _publish(self) -> None:
        update = self.update()
        for callback in self._subscribers:
            callback(update)
