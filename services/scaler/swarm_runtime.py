"""Workers on Docker Swarm: `SwarmRuntime` implements `WorkerRuntime` over docker-py's services
API, talking to a Swarm manager.

One Swarm service per worker, not one service whose replica count the scaler sets. The reason is
draining: the scaler must remove exactly the worker it drained through the balancer, and Swarm
gives no way to choose which replica a scale-down removes:

* Lowering `Replicas` makes the replicated orchestrator (swarmkit,
  `manager/orchestrator/replicated/services.go`, `reconcile`) pick the victims itself: it sorts
  the service's slots so that tasks not running come last, then numbers each running task as the
  n-th copy of the service on its node and removes those with the highest n (the nodes with the
  most copies lose one first). The slots are collected from a Go map, whose iteration order is
  random, and the sort is not stable, so on a node holding several replicas the victim among
  them is arbitrary: not the highest slot, not the newest task. A drained replica is removed only
  by luck; otherwise a busy one is killed and the drained one stays, idle.
* There is no API to remove one task of a service. The only per-replica handle is the task's
  container, and container calls go to the engine of the node that runs it, which a scaler
  talking to a manager cannot reach in general (it works on a one-node swarm only).
* Making the drained worker exit by itself (workers exit once released after a drain) and then
  lowering `Replicas` does leave exactly the drained one out, when the service's restart
  condition is `on-failure`. But a worker that does not exit in time can then only be stopped by
  a scale-down, which kills an arbitrary replica; and tasks restarted by Swarm register under new
  ids that the scaler did not choose.

With one replicated service of one replica per worker, removing the service after the drain
stops exactly that worker, on whichever node it runs: Swarm sends SIGTERM, waits the service's
stop grace period, then SIGKILL. Swarm still places each worker (constraints, resource
reservations) and the worker registers with the id the scaler chose. Restart condition `none`:
the scaler, not Swarm, replaces a worker that died, as with the other runtimes, so a crash is
never replaced twice. The cost is one `docker service ls` line per worker; they share the
labels `tideserve.owner=<scaler id>` (filter on it) and a name prefix.

Ownership works as in `DockerRuntime`: the runtime lists, scales and removes only services that
carry its owner label, and services outlive the scaler so that a restarted one adopts them.

Stopping: the service is scaled to 0 first (Swarm shuts the task down with the grace period),
the runtime waits for the task to reach a terminal state, then removes the service. A service at
0 replicas is one being stopped: `list` and `reap` skip it, and `reap` removes one left behind by
a scaler that died mid-stop.

Networking: workers use the `host` network, bind `worker_host` (default 127.0.0.1, right for a
one-node swarm) and register that address with the balancers. On several nodes the address must
be one the balancers can reach: pass a Swarm template such as `{{.Node.Hostname}}` (it must
resolve to the node's address) and start the balancers where they can reach it.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import docker.errors
from docker.client import DockerClient
from docker.types import Mount, Resources, RestartPolicy, SecretReference, ServiceMode
from docker.utils import parse_bytes

from services.scaler.docker_runtime import (
    CONTAINER_MODEL_REPOSITORY,
    DOCKER_API_TIMEOUT_S,
    OWNER_LABEL,
    WORKER_COMMAND,
    WORKER_ID_LABEL,
    check_worker_settings,
    worker_environment,
)
from services.scaler.runtime import ManagedWorker
from tideserve.errors import Unavailable

if TYPE_CHECKING:
    from services.scaler.settings import ScalerSettings

logger = logging.getLogger(__name__)

SERVICE_PREFIX = "tideserve-worker"
# Swarm service names: a letter or digit first, then letters, digits, '-', '_' or '.'; at most 63.
MAX_SERVICE_NAME = 63
# Task states after which the task's container will not run again.
TERMINAL_TASK_STATES = frozenset(
    {"complete", "failed", "shutdown", "rejected", "orphaned", "remove"}
)
# How often `stop` looks at the task while Swarm shuts it down.
STOP_POLL_S = 0.2
# Extra time `stop` allows past the grace period for Swarm to report the task's end.
STOP_MARGIN_S = 10.0

T = TypeVar("T")


class ServiceLike(Protocol):
    """The part of `docker.models.services.Service` the runtime uses."""

    id: str
    name: str
    attrs: dict[str, Any]

    def tasks(self, filters: dict[str, Any] | None = None) -> list[dict[str, Any]]: ...

    def scale(self, replicas: int) -> bool: ...

    def remove(self) -> bool: ...


class ServiceCollectionLike(Protocol):
    """The part of `docker.models.services.ServiceCollection` the runtime uses."""

    def create(self, image: str, command: list[str], **kwargs: Any) -> ServiceLike: ...

    def get(self, service_id: str) -> ServiceLike: ...

    def list(self, *, filters: dict[str, Any]) -> Sequence[ServiceLike]: ...


class SwarmClientLike(Protocol):
    """The part of `docker.client.DockerClient` the runtime uses."""

    @property
    def services(self) -> ServiceCollectionLike: ...

    @property
    def secrets(self) -> Any: ...

    def close(self) -> None: ...


# Where a worker service finds the workers' token secret, and the image's user that reads it.
SECRET_TOKEN_PATH = "/run/secrets/worker.token"
IMAGE_UID = "10001"


class SwarmRuntime:
    """Starts each worker as a one-replica Swarm service running `python -m services.worker` in
    `image`, which every node that may run workers must have (pulled or loaded; Swarm pulls from
    a registry only if the name points at one).

    `constraints` are Swarm placement constraints (`node.labels.gpu==true`,
    `node.role==worker`); `cpus` and `memory` become both the reservation (so Swarm only places
    a worker where the capacity is free) and the limit. The model repository is bind-mounted
    read-only from `model_repository` on whichever node runs the worker, so it must exist at
    that path on every eligible node (a shared filesystem, or constrain placement); so must
    `worker_token_file`, the workers' balancer token, bind-mounted read-only at the same path.
    """

    name = "swarm"

    def __init__(
        self,
        client: SwarmClientLike,
        *,
        image: str,
        owner_id: str,
        balancers: Sequence[str],
        model_repository: str,
        cpus: float = 1.0,
        memory: str | int = "2g",
        constraints: Sequence[str] = (),
        worker_host: str = "127.0.0.1",
        stop_grace_s: float = 10.0,
        worker_env: Mapping[str, str] | None = None,
        worker_token_file: str = "",
        worker_token_secret: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        check_worker_settings(image, owner_id, balancers, model_repository, cpus)
        if stop_grace_s < 0:
            raise ValueError("stop_grace_s must be >= 0")
        self.client = client
        self.image = image
        self.owner_id = owner_id
        self.balancers = tuple(balancers)
        self.model_repository = model_repository
        self.cpus = cpus
        # Swarm takes bytes; docker's "2g" notation is accepted here as for containers.
        self.memory_bytes = memory if isinstance(memory, int) else parse_bytes(memory)
        self.constraints = list(constraints)
        self.worker_host = worker_host
        self.stop_grace_s = stop_grace_s
        self.worker_env = dict(worker_env or {})
        self.worker_token_file = worker_token_file
        self.worker_token_secret = worker_token_secret
        if worker_token_secret:
            self.worker_env["TIDESERVE_WORKER_BALANCER_TOKEN_FILE"] = SECRET_TOKEN_PATH
        self.clock = clock
        # Known workers by worker id (the same objects across `list` calls, as DockerRuntime).
        self._workers: dict[str, ManagedWorker] = {}
        # Service ids being stopped by this runtime: neither listed nor reaped meanwhile.
        self._stopping: set[str] = set()

    async def _token_secret(self) -> list[SecretReference]:
        """The workers' token secret, readable by the image's user only, or none."""
        if not self.worker_token_secret:
            return []
        found = await _call(self.client.secrets.list, filters={"name": self.worker_token_secret})
        matches = [s for s in found if s.name == self.worker_token_secret]
        if not matches:
            raise Unavailable(
                f"no Docker secret named {self.worker_token_secret!r} (worker_token_secret)"
            )
        return [
            SecretReference(
                matches[0].id,
                self.worker_token_secret,
                filename=Path(SECRET_TOKEN_PATH).name,
                uid=IMAGE_UID,
                gid=IMAGE_UID,
                mode=0o400,
            )
        ]

    async def start(self, worker_id: str) -> ManagedWorker:
        """Create the worker's service; return once Swarm accepted it (the task is scheduled,
        then the worker registers with the balancers when its model is loaded)."""
        if worker_id in self._workers:
            raise ValueError(f"worker {worker_id!r} is already running")
        labels = {OWNER_LABEL: self.owner_id, WORKER_ID_LABEL: worker_id}
        nano_cpus = int(self.cpus * 1e9)
        service = await _call(
            self.client.services.create,
            self.image,
            WORKER_COMMAND,
            name=self.service_name(worker_id),
            labels=labels,
            container_labels=labels,
            env=worker_environment(
                worker_id, self.balancers, self.cpus, self.worker_env, host=self.worker_host
            ),
            mounts=[
                f"{self.model_repository}:{CONTAINER_MODEL_REPOSITORY}:ro",
                # Scratch space under the read-only root filesystem.
                Mount("/tmp", None, type="tmpfs"),
                *(
                    [f"{self.worker_token_file}:{self.worker_token_file}:ro"]
                    if self.worker_token_file and not self.worker_token_secret
                    else []
                ),
            ],
            secrets=await self._token_secret(),
            resources=Resources(
                cpu_limit=nano_cpus,
                mem_limit=self.memory_bytes,
                cpu_reservation=nano_cpus,
                mem_reservation=self.memory_bytes,
            ),
            mode=ServiceMode("replicated", replicas=1),
            # The scaler replaces dead workers itself; Swarm restarting them too would leave one
            # worker too many.
            restart_policy=RestartPolicy(condition="none"),
            constraints=self.constraints,
            networks=["host"],
            init=True,
            cap_drop=["ALL"],
            read_only=True,
            stop_grace_period=int(self.stop_grace_s * 1e9),
        )
        worker = ManagedWorker(worker_id, service.id, time.time())
        self._workers[worker_id] = worker
        logger.info(
            "worker service created", extra={"worker_id": worker_id, "service": service.name}
        )
        return worker

    async def stop(self, worker: ManagedWorker, grace_s: float) -> None:
        """Scale the worker's service to 0 (Swarm: SIGTERM, the service's stop grace period,
        then SIGKILL), wait until its task has ended, then remove the service. A service that is
        already gone counts as stopped.

        Swarm applies the grace period set at creation (`stop_grace_s`); `grace_s` bounds how
        long this call waits for it, so the controller's setting should match."""
        self._workers.pop(worker.worker_id, None)
        self._stopping.add(worker.runtime_id)
        try:
            try:
                service = await _call(self.client.services.get, worker.runtime_id)
            except _GoneError:
                return
            self._check_owned(service)
            try:
                await _call(service.scale, 0)
                await self._wait_tasks_ended(service, max(grace_s, self.stop_grace_s))
                await _call(service.remove)
            except _GoneError:
                return
        finally:
            self._stopping.discard(worker.runtime_id)
        logger.info("worker service removed", extra={"worker_id": worker.worker_id})

    async def list(self) -> list[ManagedWorker]:
        """Live workers of this scaler, adopting services it did not create in this run."""
        alive = []
        for service in await self._owned_services():
            if _replicas(service) == 0 or service.id in self._stopping:
                continue
            tasks = await _call(service.tasks)
            if _service_dead(tasks):
                continue
            alive.append(self._known_or_adopted(service))
        return alive

    # builtins.list: inside the class body `list` is the method above.
    async def reap(self) -> builtins.list[ManagedWorker]:
        """Remove this scaler's services whose worker ended (crashed, rejected by its node, or
        shut down with a node that left), and forget known workers whose service disappeared;
        return both. Also removes services left at 0 replicas by an interrupted `stop`."""
        present: set[str] = set()
        dead: list[ManagedWorker] = []
        for service in await self._owned_services():
            present.add(service.id)
            if service.id in self._stopping:
                continue
            if _replicas(service) == 0:
                await self._remove(service)
                continue
            tasks = await _call(service.tasks)
            if not _service_dead(tasks):
                continue
            worker = self._known_or_adopted(service)
            self._workers.pop(worker.worker_id, None)
            await self._remove(service)
            logger.warning(
                "worker service ended",
                extra={"worker_id": worker.worker_id, "task_states": _task_states(tasks)},
            )
            dead.append(worker)
        for worker_id, worker in builtins.list(self._workers.items()):
            if worker.runtime_id not in present and worker.runtime_id not in self._stopping:
                del self._workers[worker_id]
                logger.warning("worker service vanished", extra={"worker_id": worker_id})
                dead.append(worker)
        return dead

    async def close(self) -> None:
        """Close the connection; services keep running for a restarted scaler to adopt."""
        await asyncio.to_thread(self.client.close)

    def service_name(self, worker_id: str) -> str:
        """`tideserve-worker-<owner>-<worker id>`, made a valid Swarm name; for people reading
        `docker service ls` only (ownership is decided by labels)."""
        name = re.sub(r"[^a-zA-Z0-9_.-]", "-", f"{SERVICE_PREFIX}-{self.owner_id}-{worker_id}")
        if len(name) > MAX_SERVICE_NAME:
            # Keep the worker id, which is what tells the services apart.
            tail = re.sub(r"[^a-zA-Z0-9_.-]", "-", f"-{worker_id}")
            name = name[: MAX_SERVICE_NAME - len(tail)] + tail
        return name[:MAX_SERVICE_NAME]

    async def _owned_services(self) -> builtins.list[ServiceLike]:
        services = await _call(
            self.client.services.list, filters={"label": f"{OWNER_LABEL}={self.owner_id}"}
        )
        # Checked here as well as in the manager's filter: touching another owner's service is
        # the one mistake this runtime must never make.
        return [s for s in services if self._owned(s)]

    def _owned(self, service: ServiceLike) -> bool:
        return _labels(service).get(OWNER_LABEL) == self.owner_id

    def _check_owned(self, service: ServiceLike) -> None:
        if not self._owned(service):
            raise ValueError(f"service {service.name} is not owned by scaler {self.owner_id!r}")

    def _known_or_adopted(self, service: ServiceLike) -> ManagedWorker:
        worker_id = _labels(service).get(WORKER_ID_LABEL, service.name)
        known = self._workers.get(worker_id)
        if known is not None and known.runtime_id == service.id:
            return known
        worker = ManagedWorker(worker_id, service.id, _created_unix(service))
        self._workers[worker_id] = worker
        logger.info("adopted worker service", extra={"worker_id": worker_id})
        return worker

    async def _wait_tasks_ended(self, service: ServiceLike, grace_s: float) -> None:
        deadline = self.clock() + grace_s + STOP_MARGIN_S
        while True:
            tasks = await _call(service.tasks)
            if all(_state(t) in TERMINAL_TASK_STATES for t in tasks):
                return
            if self.clock() > deadline:
                logger.warning(
                    "worker task still shutting down; removing its service",
                    extra={"service": service.name, "task_states": _task_states(tasks)},
                )
                return
            await asyncio.sleep(STOP_POLL_S)

    async def _remove(self, service: ServiceLike) -> None:
        try:
            await _call(service.remove)
        except _GoneError:
            return


class _GoneError(Exception):
    """The service no longer exists."""


async def _call(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking docker-py call in a thread; a missing service is `_GoneError`, any other
    engine error `Unavailable` (so the controller never imports docker)."""
    try:
        return await asyncio.to_thread(func, *args, **kwargs)
    except docker.errors.NotFound as error:
        raise _GoneError(str(error)) from error
    except docker.errors.DockerException as error:
        raise Unavailable(f"docker swarm: {error}") from error


def _labels(service: ServiceLike) -> dict[str, str]:
    return service.attrs.get("Spec", {}).get("Labels") or {}


def _replicas(service: ServiceLike) -> int:
    mode = service.attrs.get("Spec", {}).get("Mode", {})
    return int(mode.get("Replicated", {}).get("Replicas", 0))


def _state(task: dict[str, Any]) -> str:
    return str(task.get("Status", {}).get("State", ""))


def _task_states(tasks: Sequence[dict[str, Any]]) -> list[str]:
    return [_state(t) for t in tasks]


def _service_dead(tasks: Sequence[dict[str, Any]]) -> bool:
    """True once the service's worker will not run again: it has tasks, and none is both meant
    to run (desired state `running`) and not yet ended. No task at all means the orchestrator
    has not created it yet (just after `create`), which is starting, not dead."""
    if not tasks:
        return False
    return not any(
        t.get("DesiredState") == "running" and _state(t) not in TERMINAL_TASK_STATES for t in tasks
    )


def _created_unix(service: ServiceLike) -> float:
    try:
        return datetime.fromisoformat(service.attrs.get("CreatedAt", "")).timestamp()
    except ValueError:
        return time.time()


def create_swarm_runtime(settings: ScalerSettings) -> SwarmRuntime:
    """The runtime the scaler's settings describe, talking to the Swarm manager named by the
    usual DOCKER_HOST environment (default: the local socket, which must be a manager's)."""
    client = DockerClient.from_env(timeout=DOCKER_API_TIMEOUT_S)
    return SwarmRuntime(
        client,
        image=settings.worker_image,
        owner_id=settings.scaler_id,
        balancers=settings.balancers,
        model_repository=os.path.abspath(settings.model_repository),
        cpus=settings.worker_cpus,
        memory=settings.worker_memory,
        constraints=settings.worker_constraints,
        worker_host=settings.worker_host,
        stop_grace_s=settings.stop_grace_s,
        worker_env=settings.worker_settings_env(),
        worker_token_file=os.path.abspath(settings.worker_token_file)
        if settings.worker_token_file
        else "",
        worker_token_secret=settings.worker_token_secret,
    )
