"""KubernetesRuntime against a fake of `CoreV1Api` (the same four methods, the client's own model
objects and ApiException): the pods it asks for, that it deletes exactly the pod it is told to
stop and only pods with its owner label, adoption, and how ended pods are reaped."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes.client import V1ObjectMeta, V1Pod, V1PodList, V1PodStatus
from kubernetes.client.exceptions import ApiException

from services.scaler.kubernetes_runtime import (
    OWNER_LABEL,
    WORKER_ID_LABEL,
    KubernetesRuntime,
)
from tideserve.errors import Unavailable

NAMESPACE = "tideserve-workers"
OWNER = "scaler-a"
CREATED = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
TEMPLATE: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"labels": {"app.kubernetes.io/name": "tideserve-worker"}},
    "spec": {
        "containers": [
            {
                "name": "worker",
                "image": "tideserve-worker:dev",
                "env": [
                    {"name": "TIDESERVE_WORKER_MODEL_REPOSITORY", "value": "/models"},
                    {"name": "TIDESERVE_WORKER_WORKER_ID", "value": "from-template"},
                ],
            },
            {"name": "sidecar", "image": "busybox"},
        ]
    },
}


class FakeCoreApi:
    """Pods by name in one namespace; a label selector `key=value` as the API server applies it
    (unless `honor_selector` is off, to prove the runtime checks labels itself)."""

    def __init__(self) -> None:
        self.pods: dict[str, V1Pod] = {}
        self.created: list[dict[str, Any]] = []
        self.deleted: list[tuple[str, int | None]] = []
        self.honor_selector = True
        self.fail_with: Exception | None = None
        # Deleted pods stay (terminating) for this many reads, as with a real grace period.
        self.terminating_reads = 0
        self.timeouts: set[object] = set()

    def add(self, name: str, labels: dict[str, str], phase: str = "Running") -> V1Pod:
        pod = V1Pod(
            metadata=V1ObjectMeta(name=name, labels=labels, creation_timestamp=CREATED),
            status=V1PodStatus(phase=phase),
        )
        self.pods[name] = pod
        return pod

    def _check(self, namespace: str, kwargs: dict[str, Any]) -> None:
        assert namespace == NAMESPACE
        self.timeouts.add(kwargs.get("_request_timeout"))
        if self.fail_with is not None:
            raise self.fail_with

    def create_namespaced_pod(self, namespace: str, body: dict[str, Any], **kwargs: Any) -> V1Pod:
        self._check(namespace, kwargs)
        name = body["metadata"]["name"]
        if name in self.pods:
            raise ApiException(status=409, reason="AlreadyExists")
        self.created.append(body)
        return self.add(name, body["metadata"]["labels"], phase="Pending")

    def read_namespaced_pod(self, name: str, namespace: str, **kwargs: Any) -> V1Pod:
        self._check(namespace, kwargs)
        pod = self.pods.get(name)
        if pod is None:
            raise ApiException(status=404, reason="NotFound")
        if pod.metadata.deletion_timestamp is not None:
            if self.terminating_reads <= 0:
                del self.pods[name]
                raise ApiException(status=404, reason="NotFound")
            self.terminating_reads -= 1
        return pod

    def delete_namespaced_pod(self, name: str, namespace: str, **kwargs: Any) -> V1Pod:
        self._check(namespace, kwargs)
        pod = self.pods.get(name)
        if pod is None:
            raise ApiException(status=404, reason="NotFound")
        self.deleted.append((name, kwargs.get("grace_period_seconds")))
        pod.metadata.deletion_timestamp = CREATED
        return pod

    def list_namespaced_pod(self, namespace: str, **kwargs: Any) -> V1PodList:
        self._check(namespace, kwargs)
        key, _, value = kwargs["label_selector"].partition("=")
        pods = [
            p
            for p in self.pods.values()
            if not self.honor_selector or (p.metadata.labels or {}).get(key) == value
        ]
        return V1PodList(items=pods)


@pytest.fixture
def api() -> FakeCoreApi:
    return FakeCoreApi()


def make_runtime(api: FakeCoreApi, **overrides: Any) -> KubernetesRuntime:
    ticks = itertools.count()
    options: dict[str, Any] = {
        "namespace": NAMESPACE,
        "owner_id": OWNER,
        "balancers": ["balancer-0.balancers:8100", "balancer-1.balancers:8100"],
        "pod_template": TEMPLATE,
        "stop_grace_s": 7.5,
        # Each clock read is a second later: `stop`'s wait ends without real sleeping too long.
        "clock": lambda: float(next(ticks)),
    }
    options.update(overrides)
    return KubernetesRuntime(api, **options)


def env_of(pod: dict[str, Any]) -> dict[str, Any]:
    (worker,) = [c for c in pod["spec"]["containers"] if c["name"] == "worker"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in worker["env"]}


async def test_start_creates_one_pod_from_the_template(api: FakeCoreApi) -> None:
    runtime = make_runtime(api)
    worker = await runtime.start("worker-a1b2c3")

    (pod,) = api.created
    assert pod["metadata"]["name"] == "tideserve-worker-worker-a1b2c3" == worker.runtime_id
    assert pod["metadata"]["labels"] == {
        "app.kubernetes.io/name": "tideserve-worker",
        OWNER_LABEL: OWNER,
        WORKER_ID_LABEL: "worker-a1b2c3",
    }
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["terminationGracePeriodSeconds"] == 8
    env = env_of(pod)
    assert env["TIDESERVE_WORKER_WORKER_ID"] == "worker-a1b2c3"
    balancers = "balancer-0.balancers:8100,balancer-1.balancers:8100"
    assert env["TIDESERVE_WORKER_BALANCERS"] == balancers
    assert env["TIDESERVE_WORKER_HOST"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["TIDESERVE_WORKER_MODEL_REPOSITORY"] == "/models"
    # The template itself is not modified, and the other container is untouched.
    assert TEMPLATE["spec"]["containers"][0]["env"][1]["value"] == "from-template"
    assert pod["spec"]["containers"][1] == {"name": "sidecar", "image": "busybox"}
    assert api.timeouts == {30}
    with pytest.raises(ValueError, match="already running"):
        await runtime.start("worker-a1b2c3")


async def test_stop_deletes_exactly_that_pod_and_waits_until_it_is_gone(api: FakeCoreApi) -> None:
    runtime = make_runtime(api)
    first = await runtime.start("worker-1")
    await runtime.start("worker-2")
    api.terminating_reads = 2

    await runtime.stop(first, grace_s=4.2)

    assert api.deleted == [("tideserve-worker-worker-1", 5)]
    assert set(api.pods) == {"tideserve-worker-worker-2"}
    assert [w.worker_id for w in await runtime.list()] == ["worker-2"]
    # Stopping a pod that is already gone is not an error.
    await runtime.stop(first, grace_s=1)


async def test_never_touches_pods_of_another_owner(api: FakeCoreApi) -> None:
    api.honor_selector = False
    api.add("foreign", {OWNER_LABEL: "scaler-b", WORKER_ID_LABEL: "foreign"})
    api.add("unlabelled", {})
    api.add("foreign-ended", {OWNER_LABEL: "scaler-b"}, phase="Failed")
    runtime = make_runtime(api)

    assert await runtime.list() == []
    assert await runtime.reap() == []
    foreign = await make_runtime(api, owner_id="scaler-b").list()
    with pytest.raises(ValueError, match="not owned"):
        await runtime.stop(foreign[0], grace_s=1)
    assert api.deleted == []


async def test_adopts_running_pods_of_its_owner(api: FakeCoreApi) -> None:
    api.add("tideserve-worker-worker-9", {OWNER_LABEL: OWNER, WORKER_ID_LABEL: "worker-9"})
    runtime = make_runtime(api)

    (worker,) = await runtime.list()
    assert (worker.worker_id, worker.runtime_id) == ("worker-9", "tideserve-worker-worker-9")
    assert worker.started_unix == CREATED.timestamp()
    # The same object on the next call, so states the controller sets on it stick.
    worker.state = "ready"
    assert (await runtime.list())[0] is worker


async def test_reap_reports_ended_and_vanished_pods_once(api: FakeCoreApi) -> None:
    runtime = make_runtime(api)
    crashed = await runtime.start("worker-crashed")
    evicted = await runtime.start("worker-evicted")
    vanished = await runtime.start("worker-vanished")
    healthy = await runtime.start("worker-healthy")
    api.pods[crashed.runtime_id].status.phase = "Failed"
    # Someone else (an eviction, a node drain) is deleting this one.
    api.pods[evicted.runtime_id].metadata.deletion_timestamp = CREATED
    del api.pods[vanished.runtime_id]

    dead = await runtime.reap()

    assert {w.worker_id for w in dead} == {"worker-crashed", "worker-evicted", "worker-vanished"}
    # The failed pod is deleted at once; the one already terminating is left to finish.
    assert api.deleted == [(crashed.runtime_id, 0)]
    assert await runtime.reap() == []
    assert [w.worker_id for w in await runtime.list()] == [healthy.worker_id]


async def test_api_errors_are_unavailable(api: FakeCoreApi) -> None:
    runtime = make_runtime(api)
    api.fail_with = ApiException(status=403, reason="Forbidden")
    with pytest.raises(Unavailable, match="403"):
        await runtime.start("worker-1")
    with pytest.raises(Unavailable):
        await runtime.list()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"namespace": ""}, "namespace"),
        ({"owner_id": "host/with/slashes"}, "label value"),
        ({"balancers": []}, "balancer"),
        ({"pod_template": {"kind": "Deployment", "spec": {}}}, "must be a Pod"),
        ({"pod_template": {"kind": "Pod", "spec": {"containers": [{"name": "x"}]}}}, "worker"),
        ({"stop_grace_s": -1}, "stop_grace_s"),
    ],
)
def test_invalid_configuration_is_rejected(
    api: FakeCoreApi, overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        make_runtime(api, **overrides)
