"""The scaler starts from the shipped image with `runtime=kubernetes`: the image carries the
runtime's dependencies (the kubernetes client, PyYAML), reads a kubeconfig and a worker pod
template, and creates its minimum of worker pods through the Kubernetes API.

No API server can run here, so the API is a small HTTP server in this test that stores pods the
way the real one answers the four calls the runtime makes (list, create, read, delete); the
scaler inside the container talks to it over loopback (host networking). What this proves is the
image, not the runtime's logic, which tests/unit/scaler/test_kubernetes_runtime.py covers.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import docker.errors
import pytest
import yaml
from docker.client import DockerClient
from docker.models.containers import Container

from harness.cluster import free_port, wait_for
from services.scaler.kubernetes_runtime import OWNER_LABEL
from tests.docker.conftest import SCALER_IMAGE, WORKER_IMAGE
from tideserve.healthprobe import probe

pytestmark = pytest.mark.docker

NAMESPACE = "tideserve-workers"
PODS = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods(?:/(?P<name>[^/]+))?$")


class FakeKubernetesApi(ThreadingHTTPServer):
    """Pods by namespace and name; every request is recorded as (method, path)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), PodHandler)
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()


class PodHandler(BaseHTTPRequestHandler):
    server: FakeKubernetesApi

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Quiet: the test reports what it needs."""

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self) -> tuple[str, str | None, dict[str, list[str]]] | None:
        url = urlparse(self.path)
        with self.server.lock:
            self.server.requests.append((self.command, url.path))
        match = PODS.match(url.path)
        if match is None:
            self._reply(404, {"kind": "Status", "code": 404, "message": f"no route {url.path}"})
            return None
        return match["ns"], match["name"], parse_qs(url.query)

    def _not_found(self, name: str) -> None:
        self._reply(
            404,
            {
                "kind": "Status",
                "apiVersion": "v1",
                "status": "Failure",
                "reason": "NotFound",
                "code": 404,
                "message": f"pods {name!r} not found",
            },
        )

    def do_GET(self) -> None:  # noqa: N802
        route = self._route()
        if route is None:
            return
        namespace, name, query = route
        with self.server.lock:
            if name is not None:
                pod = self.server.pods.get((namespace, name))
                if pod is None:
                    self._not_found(name)
                else:
                    self._reply(200, pod)
                return
            wanted = dict(
                pair.split("=", 1)
                for pair in query.get("labelSelector", [""])[0].split(",")
                if pair
            )
            items = [
                pod
                for (ns, _), pod in self.server.pods.items()
                if ns == namespace and wanted.items() <= pod["metadata"]["labels"].items()
            ]
        self._reply(200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items})

    def do_POST(self) -> None:  # noqa: N802
        route = self._route()
        if route is None:
            return
        namespace, _, _ = route
        pod = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        pod["metadata"]["namespace"] = namespace
        pod["metadata"]["creationTimestamp"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        pod["status"] = {"phase": "Running"}
        with self.server.lock:
            self.server.pods[(namespace, pod["metadata"]["name"])] = pod
        self._reply(201, pod)

    def do_DELETE(self) -> None:  # noqa: N802
        route = self._route()
        if route is None:
            return
        namespace, name, _ = route
        with self.server.lock:
            pod = self.server.pods.pop((namespace, name or ""), None)
        if pod is None:
            self._not_found(name or "")
        else:
            self._reply(200, pod)


@pytest.fixture
def kubernetes_api() -> Iterator[FakeKubernetesApi]:
    server = FakeKubernetesApi()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def write_readable(path: Path, text: str) -> None:
    """Write a file the image's unprivileged user can read (pytest's tmp dirs are root's)."""
    path.write_text(text)
    path.chmod(0o644)


def serving_or_exited(container: Container, port: int) -> bool:
    container.reload()
    return container.status == "exited" or probe(f"127.0.0.1:{port}", timeout_s=1)[0]


def test_scaler_runs_the_kubernetes_runtime_from_the_image(
    client: DockerClient, kubernetes_api: FakeKubernetesApi, tmp_path: Path
) -> None:
    config_dir = tmp_path / "config"
    config_dir.mkdir(mode=0o755)
    config_dir.chmod(0o755)
    server_url = f"http://127.0.0.1:{kubernetes_api.server_address[1]}"
    write_readable(
        config_dir / "kubeconfig",
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": server_url}}],
                "users": [{"name": "scaler", "user": {"token": "not-checked"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "scaler"}}],
                "current-context": "fake",
            }
        ),
    )
    write_readable(
        config_dir / "worker-pod.yaml",
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"labels": {"app.kubernetes.io/name": "tideserve-worker"}},
                "spec": {"containers": [{"name": "worker", "image": WORKER_IMAGE}]},
            }
        ),
    )
    port = free_port()
    owner = f"k8s-{port}"
    container = client.containers.run(
        SCALER_IMAGE,
        [
            "python",
            "-m",
            "services.scaler",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--metrics-port",
            str(free_port()),
            "--runtime",
            "kubernetes",
            "--kubernetes-namespace",
            NAMESPACE,
            "--worker-pod-template",
            "/config/worker-pod.yaml",
            "--scaler-id",
            owner,
            "--balancers",
            f"127.0.0.1:{free_port()}",
            "--min-replicas",
            "2",
            "--max-replicas",
            "2",
            "--policy",
            "static",
            "--tick-s",
            "0.5",
        ],
        detach=True,
        network_mode="host",
        init=True,
        environment={"KUBECONFIG": "/config/kubeconfig"},
        volumes={str(config_dir): {"bind": "/config", "mode": "ro"}},
        read_only=True,
        tmpfs={"/tmp": ""},
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
    )
    try:
        wait_for(lambda: serving_or_exited(container, port), 90, "the scaler to serve")
        if container.status != "running":
            logs = container.logs().decode(errors="replace")[-4000:]
            pytest.fail(f"the scaler container exited:\n{logs}")
        wait_for(lambda: len(kubernetes_api.pods) == 2, 60, "the scaler's two worker pods")
        for (namespace, _), pod in kubernetes_api.pods.items():
            assert namespace == NAMESPACE
            assert pod["metadata"]["labels"][OWNER_LABEL] == owner
            assert pod["spec"]["containers"][0]["image"] == WORKER_IMAGE
        assert ("GET", f"/api/v1/namespaces/{NAMESPACE}/pods") in kubernetes_api.requests
        # SIGTERM: the scaler drains and deletes the pods it made, then exits.
        container.stop(timeout=60)
        assert container.wait(timeout=60)["StatusCode"] == 0
        assert kubernetes_api.pods == {}
        assert probe(f"127.0.0.1:{port}", timeout_s=1)[0] is False
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)
