"""deploy/kubernetes/ checked for structure, since no API server can run here: every document
parses, workloads' selectors match their pod labels and Services select a workload, every server
has gRPC readiness and liveness probes on its gRPC port, the balancer is reachable by name through
a headless Service, the scaler's RBAC is limited to pods in the workers' namespace, the worker
pod template is one KubernetesRuntime accepts, every container is hardened, tokens reach each
service as owner-only files copied from Secrets, the model repository's claim is shipped, and
NetworkPolicies open each port only to the roles that need it."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from harness.cluster import ROOT
from services.scaler.kubernetes_runtime import KubernetesRuntime

MANIFESTS = ROOT / "deploy" / "kubernetes"
WORKLOADS = ("Deployment", "StatefulSet")


def load_all() -> list[dict[str, Any]]:
    documents = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        documents += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return documents


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return load_all()


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (doc,) = find(docs, kind, name)
    return doc


def worker_template(docs: list[dict[str, Any]]) -> dict[str, Any]:
    config = one(docs, "ConfigMap", "tideserve-worker-template")
    return yaml.safe_load(config["data"]["worker-pod.yaml"])


def env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def test_every_document_is_a_known_kind_with_a_namespace(docs: list[dict[str, Any]]) -> None:
    kinds = {d["kind"] for d in docs}
    assert kinds == {
        "Namespace", "Service", "StatefulSet", "Deployment", "ServiceAccount", "Role",
        "RoleBinding", "ConfigMap", "PersistentVolumeClaim", "Job", "NetworkPolicy",
    }
    namespaces = {d["metadata"]["name"] for d in find(docs, "Namespace")}
    assert namespaces == {"tideserve", "tideserve-workers"}
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] in namespaces, doc["metadata"]["name"]
    names = [(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names))


def test_selectors_match_pod_labels_and_services_select_a_workload(
    docs: list[dict[str, Any]],
) -> None:
    pods = {}
    for workload in (d for d in docs if d["kind"] in WORKLOADS):
        selector = workload["spec"]["selector"]["matchLabels"]
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), workload["metadata"]["name"]
        pods[workload["metadata"]["name"]] = (workload, labels)
    for service in find(docs, "Service"):
        selector = service["spec"]["selector"]
        matched = [
            w for w, labels in pods.values()
            if w["metadata"]["namespace"] == service["metadata"]["namespace"]
            and selector.items() <= labels.items()
        ]
        assert len(matched) == 1, service["metadata"]["name"]
        (container,) = matched[0]["spec"]["template"]["spec"]["containers"]
        port_names = {p["name"] for p in container["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names


def test_servers_have_grpc_probes_on_their_grpc_port(docs: list[dict[str, Any]]) -> None:
    specs = [w["spec"]["template"]["spec"] for w in docs if w["kind"] in WORKLOADS]
    specs.append(worker_template(docs)["spec"])
    assert len(specs) == 4
    for spec in specs:
        (container,) = spec["containers"]
        (grpc_port,) = [p["containerPort"] for p in container["ports"] if p["name"] == "grpc"]
        assert container["readinessProbe"]["grpc"] == {"port": grpc_port}, container["name"]
        liveness = container["livenessProbe"]
        if container["name"] == "batcher":
            # Alive while it waits for a balancer (NOT_SERVING): a restart would lose the
            # requests it holds, so liveness takes any answer of the health service.
            assert liveness["exec"]["command"][-2:] == [f"127.0.0.1:{grpc_port}", "--live"]
        else:
            assert liveness["grpc"] == {"port": grpc_port}, container["name"]
        # The server listens where the probe looks.
        listen = {k: v for k, v in env(container).items() if k.endswith("_PORT")}
        assert str(grpc_port) in listen.values(), container["name"]
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert spec["securityContext"]["runAsNonRoot"] is True


def test_balancers_are_named_through_a_headless_service(docs: list[dict[str, Any]]) -> None:
    service = one(docs, "Service", "tideserve-balancer")
    assert service["spec"]["clusterIP"] == "None"
    balancer = one(docs, "StatefulSet", "tideserve-balancer")
    assert balancer["spec"]["serviceName"] == "tideserve-balancer"
    expected = ",".join(
        f"tideserve-balancer-{i}.tideserve-balancer.tideserve.svc:8100"
        for i in range(balancer["spec"]["replicas"])
    )
    batcher = one(docs, "Deployment", "tideserve-batcher")
    scaler = one(docs, "Deployment", "tideserve-scaler")
    (batcher_container,) = batcher["spec"]["template"]["spec"]["containers"]
    (scaler_container,) = scaler["spec"]["template"]["spec"]["containers"]
    assert env(batcher_container)["TIDESERVE_BATCHER_BALANCERS"] == expected
    # The scaler hands its list to the workers it starts.
    assert env(scaler_container)["TIDESERVE_SCALER_BALANCERS"] == expected


def test_scaler_rbac_is_limited_to_pods_in_the_workers_namespace(
    docs: list[dict[str, Any]],
) -> None:
    assert find(docs, "ClusterRole") == []
    assert find(docs, "ClusterRoleBinding") == []
    (role,) = find(docs, "Role")
    assert role["metadata"]["namespace"] == "tideserve-workers"
    (rule,) = role["rules"]
    assert rule["apiGroups"] == [""]
    assert rule["resources"] == ["pods"]
    assert set(rule["verbs"]) == {"create", "get", "list", "delete"}
    (binding,) = find(docs, "RoleBinding")
    assert binding["metadata"]["namespace"] == role["metadata"]["namespace"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"],
    }
    (subject,) = binding["subjects"]
    account = one(docs, "ServiceAccount", subject["name"])
    assert subject["namespace"] == account["metadata"]["namespace"] == "tideserve"
    scaler = one(docs, "Deployment", "tideserve-scaler")
    assert scaler["spec"]["template"]["spec"]["serviceAccountName"] == subject["name"]
    assert scaler["spec"]["replicas"] == 1
    assert scaler["spec"]["strategy"] == {"type": "Recreate"}
    # Nothing else runs with API access.
    for workload in (d for d in docs if d["kind"] in WORKLOADS and d is not scaler):
        assert workload["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_worker_template_is_accepted_by_the_runtime(docs: list[dict[str, Any]]) -> None:
    scaler = one(docs, "Deployment", "tideserve-scaler")
    (container,) = scaler["spec"]["template"]["spec"]["containers"]
    settings = env(container)
    assert settings["TIDESERVE_SCALER_RUNTIME"] == "kubernetes"
    mount = container["volumeMounts"][0]["mountPath"]
    assert settings["TIDESERVE_SCALER_WORKER_POD_TEMPLATE"].startswith(mount + "/")
    assert settings["TIDESERVE_SCALER_KUBERNETES_NAMESPACE"] == "tideserve-workers"

    template = worker_template(docs)
    account = one(docs, "ServiceAccount", template["spec"]["serviceAccountName"])
    assert account["metadata"]["namespace"] == "tideserve-workers"
    assert account["automountServiceAccountToken"] is False
    runtime = KubernetesRuntime(
        object(),  # type: ignore[arg-type]  # building a pod makes no API call
        namespace="tideserve-workers",
        owner_id=settings["TIDESERVE_SCALER_SCALER_ID"],
        balancers=settings["TIDESERVE_SCALER_BALANCERS"].split(","),
        pod_template=template,
    )
    pod = runtime.pod("worker-abc123")
    (worker,) = pod["spec"]["containers"]
    worker_env = env(worker)
    assert worker_env["TIDESERVE_WORKER_WORKER_ID"] == "worker-abc123"
    assert worker_env["TIDESERVE_WORKER_MODEL_REPOSITORY"] == worker["volumeMounts"][0]["mountPath"]


def pod_specs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every pod spec the manifests run: workloads', the Job's and the worker template's."""
    specs = {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]
        for d in docs
        if d["kind"] in (*WORKLOADS, "Job")
    }
    specs["worker"] = worker_template(docs)["spec"]
    return specs


def test_every_container_is_hardened(docs: list[dict[str, Any]]) -> None:
    specs = pod_specs(docs)
    assert len(specs) == 5
    for name, spec in specs.items():
        pod_context = spec["securityContext"]
        assert pod_context["runAsNonRoot"] is True, name
        assert pod_context["runAsUser"] != 0, name
        assert pod_context["seccompProfile"] == {"type": "RuntimeDefault"}, name
        mounts_by_volume = {v["name"]: v for v in spec["volumes"]}
        for container in spec.get("initContainers", []) + spec["containers"]:
            where = (name, container["name"])
            context = container["securityContext"]
            assert context.get("runAsUser", 10001) != 0, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["capabilities"] == {"drop": ["ALL"]}, where
            limits = container["resources"]["limits"]
            assert {"cpu", "memory"} <= limits.keys(), where
            if container in spec["containers"]:
                (tmp,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
                assert "emptyDir" in mounts_by_volume[tmp["name"]], where


def token_files(spec: dict[str, Any]) -> set[str]:
    """The token files a pod's init container copies from its Secret volume."""
    (secret,) = [v["secret"] for v in spec["volumes"] if "secret" in v]
    # Group-readable root-owned files: only the init container reads them.
    assert secret["defaultMode"] == 0o440
    assert spec["securityContext"]["fsGroup"] == spec["securityContext"]["runAsUser"]
    return {item["key"] for item in secret["items"]}


def test_tokens_reach_each_service_as_owner_only_files(docs: list[dict[str, Any]]) -> None:
    specs = pod_specs(docs)
    expected = {
        "tideserve-balancer": {"worker.token", "batcher.token", "scaler.token", "operator.token"},
        "tideserve-batcher": {"batcher.token"},
        "tideserve-scaler": {"scaler.token", "operator.token"},
        "worker": {"worker.token"},
    }
    for name, tokens in expected.items():
        spec = specs[name]
        assert token_files(spec) == tokens, name
        (init,) = spec["initContainers"]
        assert "install -m 600" in init["command"][-1], name
        (container,) = spec["containers"]
        for variable in container["env"]:
            assert "secretKeyRef" not in variable.get("valueFrom", {}), (name, variable["name"])
        (credentials,) = [v for v in spec["volumes"] if v["name"] == "credentials"]
        assert credentials["emptyDir"]["medium"] == "Memory", name
        settings = env(container)
        files = [v for k, v in settings.items() if k.endswith(("_TOKEN_FILE", "_CREDENTIALS_DIR"))]
        assert files, name
        for path in files:
            assert path.startswith("/run/tideserve/credentials"), (name, path)
    scaler = env(specs["tideserve-scaler"]["containers"][0])
    # It listens beyond loopback, so its admin RPCs need the operator's token.
    assert scaler["TIDESERVE_SCALER_HOST"] == "0.0.0.0"
    assert scaler["TIDESERVE_SCALER_ADMIN_TOKEN_FILE"].endswith("/operator.token")
    # The Secrets are made by the operator (deploy/kubernetes/README.md), never shipped.
    assert find(docs, "Secret") == []
    readme = (MANIFESTS / "README.md").read_text()
    for secret in ("tideserve-credentials", "tideserve-worker-token"):
        assert f"create secret generic {secret}" in readme


def test_the_model_repository_claim_is_shipped(docs: list[dict[str, Any]]) -> None:
    template = worker_template(docs)
    (models,) = [v for v in template["spec"]["volumes"] if "persistentVolumeClaim" in v]
    claim = models["persistentVolumeClaim"]
    assert claim["readOnly"] is True
    pvc = one(docs, "PersistentVolumeClaim", claim["claimName"])
    assert pvc["metadata"]["namespace"] == "tideserve-workers"
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]
    (job,) = find(docs, "Job")
    volumes = job["spec"]["template"]["spec"]["volumes"]
    (volume,) = [v for v in volumes if "persistentVolumeClaim" in v]
    assert volume["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]


def allowed_sources(docs: list[dict[str, Any]], app: str, port: int) -> list[dict[str, Any]]:
    """The `from` peers NetworkPolicies allow to reach `port` of the pods named `app` ([{}] for
    any source)."""
    peers: list[dict[str, Any]] = []
    for policy in find(docs, "NetworkPolicy"):
        selector = policy["spec"]["podSelector"].get("matchLabels", {})
        if selector and selector != {"app.kubernetes.io/name": app}:
            continue
        for rule in policy["spec"].get("ingress", []):
            if port in [p["port"] for p in rule.get("ports", [])]:
                peers += rule.get("from", [{}])
    return peers


def peer_apps(peers: list[dict[str, Any]]) -> set[str]:
    return {
        p["podSelector"]["matchLabels"].get("app.kubernetes.io/name")
        or p["podSelector"]["matchLabels"].get("tideserve.io/role", "")
        for p in peers
    }


def test_network_policies_open_each_port_to_its_callers_only(docs: list[dict[str, Any]]) -> None:
    for namespace in ("tideserve", "tideserve-workers"):
        deny = [
            p for p in find(docs, "NetworkPolicy")
            if p["metadata"]["namespace"] == namespace and p["spec"]["podSelector"] == {}
        ]
        assert [p["spec"].get("ingress") for p in deny] == [None], namespace
    assert allowed_sources(docs, "tideserve-batcher", 8001) == [{}]
    assert peer_apps(allowed_sources(docs, "tideserve-balancer", 8100)) == {
        "tideserve-batcher", "tideserve-worker", "tideserve-scaler",
    }
    assert peer_apps(allowed_sources(docs, "tideserve-worker", 9000)) == {"tideserve-balancer"}
    assert peer_apps(allowed_sources(docs, "tideserve-scaler", 8200)) == {"operator"}
    for app, port in (
        ("tideserve-batcher", 8002), ("tideserve-balancer", 8102),
        ("tideserve-scaler", 8202), ("tideserve-worker", 9002),
    ):
        assert peer_apps(allowed_sources(docs, app, port)) == {"prometheus"}, app
    # No policy opens a port nobody listens on, and every listening port has a policy.
    listening = set()
    for spec in pod_specs(docs).values():
        for container in spec["containers"]:
            listening |= {p["containerPort"] for p in container.get("ports", [])}
    opened = {
        p["port"] for policy in find(docs, "NetworkPolicy")
        for rule in policy["spec"].get("ingress", []) for p in rule["ports"]
    }
    assert opened == listening
