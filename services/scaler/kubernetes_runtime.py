"""Workers on Kubernetes: `KubernetesRuntime` implements `WorkerRuntime` with the official
`kubernetes` client (the optional extra `tideserve[kubernetes]`, imported only when this runtime
is built).

One pod per worker, created and deleted by the scaler, not a Deployment whose replicas it
patches. The reason is draining: the scaler must remove exactly the worker it drained.

* A Deployment scale-down is carried out by its ReplicaSet, which ranks the pods and deletes the
  first ones: unscheduled before scheduled, Pending before Unknown before Running, not Ready
  before Ready, and only then by the `controller.kubernetes.io/pod-deletion-cost` annotation
  (lower goes first), followed by more tie-breakers. So marking the drained pod with the lowest
  cost works only while every other pod is scheduled, Running and Ready; a worker still loading
  its model (not Ready) or a pod still Pending is deleted instead, with whatever batches it
  holds, and the drained pod stays. The Kubernetes documentation calls the annotation best
  effort. A rollout with two ReplicaSets splits a scale-down between them as well.
* The worker ids of a Deployment's pods are the names the ReplicaSet invents, so the controller
  could not start a worker under the id it chose and drain it by that id.

A pod per worker makes `stop` exact: after the balancer drained the worker, deleting its pod sends
SIGTERM, waits `terminationGracePeriodSeconds`, then SIGKILL, for that pod only. The pods have
`restartPolicy: Never` and no controlling owner: the scaler replaces a worker that died (as in
the other runtimes), so nothing replaces it twice. The price is RBAC: the scaler's Role must
allow creating and deleting pods in the workers' namespace, which Kubernetes cannot narrow to
some pods (`resourceNames` does not apply to `create`, and pod names are per worker). Keep the
workers in a namespace of their own with nothing else in it (deploy/kubernetes/ does).

The pod is the template the operator provides (image, resources, volumes, node selection,
tolerations: everything about where and how a worker runs), with the runtime adding only its
name, the labels `tideserve.io/owner` and `tideserve.io/worker-id`, the worker's environment (id,
balancers, its pod IP as the address to bind and register) and the grace period. The runtime
lists and deletes only pods with its owner label, and pods outlive the scaler so that a restarted
one adopts them.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import copy
import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from services.scaler.runtime import ManagedWorker
from tideserve.errors import Unavailable

if TYPE_CHECKING:
    from services.scaler.settings import ScalerSettings

logger = logging.getLogger(__name__)

OWNER_LABEL = "tideserve.io/owner"
WORKER_ID_LABEL = "tideserve.io/worker-id"
WORKER_CONTAINER = "worker"
POD_PREFIX = "tideserve-worker"
# Bound on each API request (seconds).
API_TIMEOUT_S = 30
# Where a pod's service account namespace is mounted inside a cluster.
IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# Pod phases after which its containers will not run again (restartPolicy Never).
ENDED_PHASES = ("Succeeded", "Failed")
STOP_POLL_S = 0.5
# Extra time `stop` waits past the grace period for the pod object to go.
STOP_MARGIN_S = 15.0
# Label values: at most 63 characters of [A-Za-z0-9_.-], alphanumeric at both ends.
LABEL_VALUE = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]$")

T = TypeVar("T")


class CoreApiLike(Protocol):
    """The part of `kubernetes.client.CoreV1Api` the runtime uses."""

    def create_namespaced_pod(self, namespace: str, body: dict[str, Any], **kwargs: Any) -> Any: ...

    def read_namespaced_pod(self, name: str, namespace: str, **kwargs: Any) -> Any: ...

    def delete_namespaced_pod(self, name: str, namespace: str, **kwargs: Any) -> Any: ...

    def list_namespaced_pod(self, namespace: str, **kwargs: Any) -> Any: ...


class KubernetesRuntime:
    """Starts each worker as a pod made from `pod_template` (a Pod manifest as a dict, with a
    container named `worker`) in `namespace`.

    The container must run `python -m services.worker` with the model repository where
    TIDESERVE_WORKER_MODEL_REPOSITORY (set in the template) says; its readiness probe should be
    the gRPC health service, which turns SERVING once the model is loaded."""

    name = "kubernetes"

    def __init__(
        self,
        api: CoreApiLike,
        *,
        namespace: str,
        owner_id: str,
        balancers: Sequence[str],
        pod_template: Mapping[str, Any],
        stop_grace_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not namespace:
            raise ValueError("namespace must be named")
        if not LABEL_VALUE.match(owner_id):
            raise ValueError(
                f"owner_id {owner_id!r} must be a Kubernetes label value (it labels the pods)"
            )
        if not balancers:
            raise ValueError("at least one balancer address is needed")
        if stop_grace_s < 0:
            raise ValueError("stop_grace_s must be >= 0")
        _check_template(pod_template)
        self.api = api
        self.namespace = namespace
        self.owner_id = owner_id
        self.balancers = tuple(balancers)
        self.pod_template = copy.deepcopy(dict(pod_template))
        self.stop_grace_s = stop_grace_s
        self.clock = clock
        self._workers: dict[str, ManagedWorker] = {}
        # Pods being deleted by this runtime's `stop`: not reported dead by `reap` meanwhile.
        self._stopping: set[str] = set()
        # Ended pods already reported by `reap` that still exist (terminating): reported once.
        self._reported: set[str] = set()

    async def start(self, worker_id: str) -> ManagedWorker:
        """Create the worker's pod; return once the API server stored it (it is scheduled, then
        the worker registers with the balancers when its model is loaded)."""
        if worker_id in self._workers:
            raise ValueError(f"worker {worker_id!r} is already running")
        if not LABEL_VALUE.match(worker_id):
            raise ValueError(f"worker id {worker_id!r} must be a Kubernetes label value")
        body = self.pod(worker_id)
        await self._call(self.api.create_namespaced_pod, self.namespace, body)
        name = body["metadata"]["name"]
        worker = ManagedWorker(worker_id, name, time.time())
        self._workers[worker_id] = worker
        logger.info("worker pod created", extra={"worker_id": worker_id, "pod": name})
        return worker

    async def stop(self, worker: ManagedWorker, grace_s: float) -> None:
        """Delete the worker's pod with `grace_s` as its grace period (SIGTERM, then SIGKILL)
        and wait until it is gone. A pod that is already gone counts as stopped."""
        self._workers.pop(worker.worker_id, None)
        self._stopping.add(worker.runtime_id)
        try:
            try:
                pod = await self._call(
                    self.api.read_namespaced_pod, worker.runtime_id, self.namespace
                )
                self._check_owned(pod)
                await self._call(
                    self.api.delete_namespaced_pod,
                    worker.runtime_id,
                    self.namespace,
                    grace_period_seconds=max(0, math.ceil(grace_s)),
                )
            except _GoneError:
                return
            await self._wait_gone(worker.runtime_id, grace_s)
        finally:
            self._stopping.discard(worker.runtime_id)
        logger.info("worker pod deleted", extra={"worker_id": worker.worker_id})

    async def list(self) -> list[ManagedWorker]:
        """Live workers of this scaler, adopting pods it did not create in this run."""
        return [
            self._known_or_adopted(pod)
            for pod in await self._owned_pods()
            if pod.metadata.name not in self._stopping and not _ended(pod)
        ]

    async def reap(self) -> builtins.list[ManagedWorker]:
        """Delete this scaler's pods whose worker ended (exited, failed, or being deleted by
        someone else: an eviction, a node drain), and forget known workers whose pod
        disappeared; return both."""
        present: set[str] = set()
        dead: list[ManagedWorker] = []
        for pod in await self._owned_pods():
            name = pod.metadata.name
            present.add(name)
            if name in self._stopping or name in self._reported or not _ended(pod):
                continue
            self._reported.add(name)
            worker = self._known_or_adopted(pod)
            self._workers.pop(worker.worker_id, None)
            if pod.metadata.deletion_timestamp is None:
                with contextlib.suppress(_GoneError):
                    await self._call(
                        self.api.delete_namespaced_pod, name, self.namespace, grace_period_seconds=0
                    )
            logger.warning(
                "worker pod ended", extra={"worker_id": worker.worker_id, "phase": _phase(pod)}
            )
            dead.append(worker)
        self._reported &= present
        for worker_id, worker in builtins.list(self._workers.items()):
            if worker.runtime_id not in present and worker.runtime_id not in self._stopping:
                del self._workers[worker_id]
                logger.warning("worker pod vanished", extra={"worker_id": worker_id})
                dead.append(worker)
        return dead

    async def close(self) -> None:
        """Nothing to release per call; pods keep running for a restarted scaler to adopt."""

    def pod(self, worker_id: str) -> dict[str, Any]:
        """The pod manifest for one worker: the template plus name, labels, env, grace."""
        pod = copy.deepcopy(self.pod_template)
        metadata = pod.setdefault("metadata", {})
        metadata.pop("generateName", None)
        metadata["name"] = _pod_name(worker_id)
        metadata["labels"] = {
            **(metadata.get("labels") or {}),
            OWNER_LABEL: self.owner_id,
            WORKER_ID_LABEL: worker_id,
        }
        spec = pod["spec"]
        # The scaler replaces dead workers itself.
        spec["restartPolicy"] = "Never"
        spec["terminationGracePeriodSeconds"] = max(0, math.ceil(self.stop_grace_s))
        container = next(c for c in spec["containers"] if c["name"] == WORKER_CONTAINER)
        ours = {"TIDESERVE_WORKER_WORKER_ID", "TIDESERVE_WORKER_BALANCERS", "TIDESERVE_WORKER_HOST"}
        container["env"] = [
            *(e for e in container.get("env") or [] if e["name"] not in ours),
            {"name": "TIDESERVE_WORKER_WORKER_ID", "value": worker_id},
            {"name": "TIDESERVE_WORKER_BALANCERS", "value": ",".join(self.balancers)},
            # The pod's own address: what it binds, and what it registers with the balancers.
            {
                "name": "TIDESERVE_WORKER_HOST",
                "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}},
            },
        ]
        return pod

    async def _owned_pods(self) -> builtins.list[Any]:
        result = await self._call(
            self.api.list_namespaced_pod,
            self.namespace,
            label_selector=f"{OWNER_LABEL}={self.owner_id}",
        )
        # Checked here as well as by the selector: deleting another owner's pod is the one
        # mistake this runtime must never make.
        return [p for p in result.items if self._owned(p)]

    def _owned(self, pod: Any) -> bool:
        return (pod.metadata.labels or {}).get(OWNER_LABEL) == self.owner_id

    def _check_owned(self, pod: Any) -> None:
        if not self._owned(pod):
            raise ValueError(f"pod {pod.metadata.name} is not owned by scaler {self.owner_id!r}")

    def _known_or_adopted(self, pod: Any) -> ManagedWorker:
        name = pod.metadata.name
        worker_id = (pod.metadata.labels or {}).get(WORKER_ID_LABEL, name)
        known = self._workers.get(worker_id)
        if known is not None and known.runtime_id == name:
            return known
        worker = ManagedWorker(worker_id, name, _created_unix(pod))
        self._workers[worker_id] = worker
        logger.info("adopted worker pod", extra={"worker_id": worker_id, "pod": name})
        return worker

    async def _wait_gone(self, name: str, grace_s: float) -> None:
        deadline = self.clock() + grace_s + STOP_MARGIN_S
        while self.clock() <= deadline:
            try:
                await self._call(self.api.read_namespaced_pod, name, self.namespace)
            except _GoneError:
                return
            await asyncio.sleep(STOP_POLL_S)
        logger.warning("worker pod still terminating", extra={"pod": name})

    async def _call(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking client call in a thread with a request timeout; 404 is `_GoneError`,
        any other API or connection error `Unavailable`."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return await asyncio.to_thread(func, *args, _request_timeout=API_TIMEOUT_S, **kwargs)
        except ApiException as error:
            if error.status == 404:
                raise _GoneError(str(error.reason)) from error
            raise Unavailable(f"kubernetes: {error.status} {error.reason}") from error
        except HTTPError as error:
            raise Unavailable(f"kubernetes: {error}") from error


class _GoneError(Exception):
    """The pod no longer exists."""


def _check_template(template: Mapping[str, Any]) -> None:
    if template.get("kind", "Pod") != "Pod":
        raise ValueError(f"worker pod template must be a Pod, not {template.get('kind')!r}")
    containers = (template.get("spec") or {}).get("containers") or []
    if not any(c.get("name") == WORKER_CONTAINER for c in containers):
        raise ValueError(f"worker pod template needs a container named {WORKER_CONTAINER!r}")


def _pod_name(worker_id: str) -> str:
    """A DNS-1123 name for the worker's pod (lowercase; the label keeps the exact id)."""
    name = re.sub(r"[^a-z0-9-]", "-", f"{POD_PREFIX}-{worker_id}".lower())
    return name[:253].strip("-")


def _phase(pod: Any) -> str:
    return str(getattr(pod.status, "phase", "") or "")


def _ended(pod: Any) -> bool:
    """The worker will not run again: its pod finished, or is being deleted."""
    return _phase(pod) in ENDED_PHASES or pod.metadata.deletion_timestamp is not None


def _created_unix(pod: Any) -> float:
    created = pod.metadata.creation_timestamp
    if isinstance(created, datetime):
        return created.timestamp()
    return time.time()


def _namespace(configured: str, in_cluster: bool) -> str:
    if configured:
        return configured
    if in_cluster and IN_CLUSTER_NAMESPACE.exists():
        return IN_CLUSTER_NAMESPACE.read_text().strip()
    from kubernetes import config

    _, context = config.list_kube_config_contexts()
    return str((context or {}).get("context", {}).get("namespace") or "default")


def create_kubernetes_runtime(settings: ScalerSettings) -> KubernetesRuntime:
    """The runtime the settings describe. Credentials: the pod's service account inside a
    cluster, else the current context of the kubeconfig (KUBECONFIG or ~/.kube/config)."""
    import yaml
    from kubernetes import client, config

    if not settings.worker_pod_template:
        raise ValueError("the kubernetes runtime needs worker_pod_template (a Pod manifest)")
    template = yaml.safe_load(Path(settings.worker_pod_template).read_text())
    try:
        config.load_incluster_config()
        in_cluster = True
    except config.ConfigException:
        config.load_kube_config()
        in_cluster = False
    return KubernetesRuntime(
        client.CoreV1Api(),
        namespace=_namespace(settings.kubernetes_namespace, in_cluster),
        owner_id=settings.scaler_id,
        balancers=settings.balancers,
        pod_template=template,
        stop_grace_s=settings.stop_grace_s,
    )
