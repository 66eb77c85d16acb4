"""Workers as Docker containers: `DockerRuntime` implements `WorkerRuntime` over docker-py.

Every container this runtime creates carries the label `tideserve.owner=<owner id>`; it lists,
stops and removes only containers with its own owner label, so several scalers (or a person's own
containers) can share one Docker engine safely. Containers outlive the scaler on purpose: a
restarted scaler with the same owner id adopts the workers it finds instead of cold-starting them.

docker-py is blocking, so every call runs in a worker thread (`asyncio.to_thread`). The client is
passed in, which keeps this module the only one importing `docker` and lets unit tests use a fake
with the same methods (`DockerClientLike` below is exactly the surface used).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import docker.errors
from docker.client import DockerClient

from services.scaler.runtime import ManagedWorker
from tideserve.errors import Unavailable

if TYPE_CHECKING:
    from services.scaler.settings import ScalerSettings

logger = logging.getLogger(__name__)

# Bound on each Docker API request (docker-py adds the grace period to `stop` requests).
DOCKER_API_TIMEOUT_S = 30

OWNER_LABEL = "tideserve.owner"
WORKER_ID_LABEL = "tideserve.worker-id"
# Where the model repository is mounted inside a worker container.
CONTAINER_MODEL_REPOSITORY = "/models"
WORKER_COMMAND = ["python", "-m", "services.worker"]
# Processes and threads one worker container may run: torch's thread pools at the largest CPU
# quota with room to spare, while a fork bomb stops there instead of exhausting the host.
WORKER_PIDS_LIMIT = 512
# Container states after which the worker process will not run again.
DEAD_STATES = ("exited", "dead")

T = TypeVar("T")


class ContainerLike(Protocol):
    """The part of `docker.models.containers.Container` the runtime uses."""

    id: str
    attrs: dict[str, Any]

    @property
    def labels(self) -> dict[str, str]: ...

    @property
    def status(self) -> str: ...

    def stop(self, *, timeout: int) -> None: ...

    def remove(self, *, force: bool) -> None: ...


class ContainerCollectionLike(Protocol):
    """The part of `docker.models.containers.ContainerCollection` the runtime uses."""

    def run(self, image: str, command: list[str], **kwargs: Any) -> ContainerLike: ...

    def get(self, container_id: str) -> ContainerLike: ...

    def list(
        self, *, all: bool, filters: dict[str, Any], ignore_removed: bool
    ) -> Sequence[ContainerLike]: ...


class DockerClientLike(Protocol):
    """The part of `docker.client.DockerClient` the runtime uses."""

    @property
    def containers(self) -> ContainerCollectionLike: ...

    def close(self) -> None: ...


def check_worker_settings(
    image: str, owner_id: str, balancers: Sequence[str], model_repository: str, cpus: float
) -> None:
    """Refuse settings that would start workers that cannot work, for every container runtime."""
    if not image:
        raise ValueError("image must be named")
    if not owner_id:
        raise ValueError("owner_id must be non-empty: it is what keeps scalers apart")
    if not balancers:
        raise ValueError("at least one balancer address is needed")
    if not PurePosixPath(model_repository).is_absolute():
        # Docker would read a relative path as a named volume, silently empty.
        raise ValueError(f"model_repository must be an absolute path: {model_repository!r}")
    if cpus <= 0:
        raise ValueError("cpus must be > 0")


def worker_environment(
    worker_id: str,
    balancers: Sequence[str],
    cpus: float,
    base: Mapping[str, str],
    **settings: str,
) -> dict[str, str]:
    """A worker container's environment: its id, balancers and model repository, any further
    worker `settings` (as TIDESERVE_WORKER_<NAME>), over the configured `base`."""
    # torch sizes its thread pool from OMP_NUM_THREADS; more threads than the CPU quota
    # only adds contention.
    return {
        **base,
        "TIDESERVE_WORKER_WORKER_ID": worker_id,
        **{f"TIDESERVE_WORKER_{name.upper()}": value for name, value in settings.items()},
        "TIDESERVE_WORKER_BALANCERS": ",".join(balancers),
        "TIDESERVE_WORKER_MODEL_REPOSITORY": CONTAINER_MODEL_REPOSITORY,
        "OMP_NUM_THREADS": str(max(1, math.floor(cpus))),
    }


class DockerRuntime:
    """Starts each worker as `python -m services.worker` in a container of `image`.

    A worker container uses host networking (it binds a free loopback port and registers it with
    the balancers), sees the model repository read-only at /models, gets `cpus` CPUs and `memory`
    of RAM (docker's format: bytes or a string such as "2g"), runs under Docker's init so SIGTERM
    reaches the worker and zombies are reaped, and has no capabilities.

    Make the client with a request timeout (`DockerClient.from_env(timeout=...)`): it bounds
    every call except `stop`, which docker-py extends by the grace period.
    """

    name = "docker"

    def __init__(
        self,
        client: DockerClientLike,
        *,
        image: str,
        owner_id: str,
        balancers: Sequence[str],
        model_repository: str,
        cpus: float = 1.0,
        memory: str | int = "2g",
        worker_env: Mapping[str, str] | None = None,
        worker_token_file: str = "",
    ) -> None:
        check_worker_settings(image, owner_id, balancers, model_repository, cpus)
        self.client = client
        # Mounted read-only at the same path in every worker (which the worker's environment
        # names): the token reaches the worker as a file, never through its environment.
        self.worker_token_file = worker_token_file
        self.image = image
        self.owner_id = owner_id
        self.balancers = tuple(balancers)
        self.model_repository = model_repository
        self.cpus = cpus
        self.memory = memory
        self.worker_env = dict(worker_env or {})
        # Workers this runtime knows, by worker id, so `list` hands back the same objects (and so
        # the states the controller set on them) rather than fresh copies.
        self._workers: dict[str, ManagedWorker] = {}

    def _volumes(self) -> dict[str, dict[str, str]]:
        volumes = {self.model_repository: {"bind": CONTAINER_MODEL_REPOSITORY, "mode": "ro"}}
        if self.worker_token_file:
            volumes[self.worker_token_file] = {"bind": self.worker_token_file, "mode": "ro"}
        return volumes

    async def start(self, worker_id: str) -> ManagedWorker:
        """Create and start a worker container; return once Docker reports it started (the worker
        itself becomes ready later, when it registers with the balancers)."""
        if worker_id in self._workers:
            raise ValueError(f"worker {worker_id!r} is already running")
        try:
            container = await self._call(
                self.client.containers.run,
                self.image,
                WORKER_COMMAND,
                detach=True,
                labels={OWNER_LABEL: self.owner_id, WORKER_ID_LABEL: worker_id},
                environment=worker_environment(
                    worker_id, self.balancers, self.cpus, self.worker_env
                ),
                volumes=self._volumes(),
                nano_cpus=int(self.cpus * 1e9),
                mem_limit=self.memory,
                init=True,
                network_mode="host",
                privileged=False,
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                pids_limit=WORKER_PIDS_LIMIT,
                # The worker writes nothing but scratch files.
                read_only=True,
                tmpfs={"/tmp": ""},
            )
        except Unavailable:
            # docker-py creates before it starts: a failed start leaves a container behind.
            await self._remove_leftovers(worker_id)
            raise
        worker = ManagedWorker(worker_id, container.id, time.time())
        self._workers[worker_id] = worker
        logger.info(
            "worker container started",
            extra={"worker_id": worker_id, "container": container.id[:12]},
        )
        return worker

    async def stop(self, worker: ManagedWorker, grace_s: float) -> None:
        """SIGTERM, up to `grace_s` for the worker to drain and exit, then SIGKILL; then remove
        the container. A container that is already gone counts as stopped."""
        self._workers.pop(worker.worker_id, None)
        try:
            container = await self._call(self.client.containers.get, worker.runtime_id)
        except _GoneError:
            return
        self._check_owned(container)
        try:
            # Docker sends SIGTERM, waits, then SIGKILLs; its timeout is whole seconds.
            await self._call(container.stop, timeout=max(0, math.ceil(grace_s)))
        except _GoneError:
            return
        await self._remove(container)
        logger.info("worker container stopped", extra={"worker_id": worker.worker_id})

    async def list(self) -> list[ManagedWorker]:
        """Running workers of this scaler, adopting containers it did not start in this run."""
        containers = await self._call(
            self.client.containers.list,
            all=False,
            filters=self._owner_filter(),
            # A container removed between Docker's listing and its inspection is simply gone.
            ignore_removed=True,
        )
        alive = []
        for container in containers:
            if not self._owned(container) or container.status in DEAD_STATES:
                continue
            worker = self._known_or_adopted(container)
            alive.append(worker)
        return alive

    # builtins.list: inside the class body `list` is the method above (mypy reads it so).
    async def reap(self) -> builtins.list[ManagedWorker]:
        """Remove this scaler's containers whose worker exited, and forget known workers whose
        container disappeared; return both."""
        containers = await self._call(
            self.client.containers.list,
            all=True,
            filters=self._owner_filter(),
            ignore_removed=True,
        )
        present: set[str] = set()
        dead: list[ManagedWorker] = []
        for container in containers:
            if not self._owned(container):
                continue
            present.add(container.id)
            if container.status not in DEAD_STATES:
                continue
            worker = self._known_or_adopted(container)
            self._workers.pop(worker.worker_id, None)
            await self._remove(container)
            logger.warning(
                "worker container died",
                extra={
                    "worker_id": worker.worker_id,
                    "exit_code": container.attrs.get("State", {}).get("ExitCode"),
                },
            )
            dead.append(worker)
        for worker_id, worker in list(self._workers.items()):
            if worker.runtime_id not in present:
                del self._workers[worker_id]
                logger.warning("worker container vanished", extra={"worker_id": worker_id})
                dead.append(worker)
        return dead

    async def close(self) -> None:
        """Close the Docker connection. Containers keep running: a scaler that restarts adopts
        them; stopping workers on shutdown is the controller's decision (`stop` each)."""
        await asyncio.to_thread(self.client.close)

    def _owner_filter(self) -> dict[str, Any]:
        return {"label": [f"{OWNER_LABEL}={self.owner_id}"]}

    def _owned(self, container: ContainerLike) -> bool:
        # Checked here as well as in the engine's filter: touching another owner's container is
        # the one mistake this runtime must never make.
        return container.labels.get(OWNER_LABEL) == self.owner_id

    def _check_owned(self, container: ContainerLike) -> None:
        if not self._owned(container):
            raise ValueError(
                f"container {container.id[:12]} is not owned by scaler {self.owner_id!r}"
            )

    def _known_or_adopted(self, container: ContainerLike) -> ManagedWorker:
        worker_id = container.labels.get(WORKER_ID_LABEL, container.id[:12])
        known = self._workers.get(worker_id)
        if known is not None and known.runtime_id == container.id:
            return known
        worker = ManagedWorker(worker_id, container.id, _started_unix(container))
        if container.status not in DEAD_STATES:
            self._workers[worker_id] = worker
            logger.info(
                "adopted worker container",
                extra={"worker_id": worker_id, "container": container.id[:12]},
            )
        return worker

    async def _remove(self, container: ContainerLike) -> None:
        with contextlib.suppress(_GoneError):
            await self._call(container.remove, force=True)

    async def _remove_leftovers(self, worker_id: str) -> None:
        filters = {"label": [f"{OWNER_LABEL}={self.owner_id}", f"{WORKER_ID_LABEL}={worker_id}"]}
        try:
            leftovers = await self._call(
                self.client.containers.list, all=True, filters=filters, ignore_removed=True
            )
            for container in leftovers:
                if self._owned(container):
                    await self._remove(container)
        except Unavailable:
            logger.exception("cleanup after a failed start failed", extra={"worker_id": worker_id})

    async def _call(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking docker-py call in a thread, translating its errors so the controller
        never needs to import docker: a missing container is `_GoneError`, anything else from the
        engine is `Unavailable`."""
        try:
            return await asyncio.to_thread(func, *args, **kwargs)
        except docker.errors.ImageNotFound as error:
            raise Unavailable(f"docker: {error}") from error
        except docker.errors.NotFound as error:
            raise _GoneError(str(error)) from error
        except docker.errors.DockerException as error:
            raise Unavailable(f"docker: {error}") from error


class _GoneError(Exception):
    """The container no longer exists (removed by someone else, or `--rm`)."""


def _started_unix(container: ContainerLike) -> float:
    """When the container started, from the engine's RFC 3339 timestamp; now if unknown."""
    started = container.attrs.get("State", {}).get("StartedAt", "")
    try:
        return datetime.fromisoformat(started).timestamp()
    except ValueError:
        return time.time()


def create_docker_runtime(settings: ScalerSettings) -> DockerRuntime:
    """The runtime the scaler's settings describe, talking to the engine named by the usual
    DOCKER_HOST environment (default: the local socket).

    `model_repository` is resolved against the working directory and must be the path on the
    Docker host: the engine, not this process, resolves bind mounts. When the scaler itself runs
    in a container, mount the repository at the same path inside it (compose.yaml does).
    """
    client = DockerClient.from_env(timeout=DOCKER_API_TIMEOUT_S)
    return DockerRuntime(
        client,
        image=settings.worker_image,
        owner_id=settings.scaler_id,
        balancers=settings.balancers,
        model_repository=os.path.abspath(settings.model_repository),
        cpus=settings.worker_cpus,
        memory=settings.worker_memory,
        worker_env=settings.worker_settings_env(),
        worker_token_file=os.path.abspath(settings.worker_token_file)
        if settings.worker_token_file
        else "",
    )
