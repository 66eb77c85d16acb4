"""The Grafana dashboard and Prometheus config kept in deploy/ match what the services export,
compose.yaml (with its observability profile) parses under docker-compose, and every service of
compose.yaml and the Swarm stack runs hardened, restarts, and gets its tokens as files."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from services.balancer.core import BalancerCore
from services.balancer.metrics import BalancerMetrics
from services.balancer.metrics import collect as balancer_collect
from services.balancer.registry import WorkerTable
from services.batcher.catalog import ModelCatalog
from services.batcher.core import BatcherCore
from services.batcher.metrics import BatcherMetrics
from services.batcher.metrics import collect as batcher_collect
from services.scaler.controller import ScalerController
from services.scaler.guards import GuardConfig
from services.scaler.metrics import collect as scaler_collect
from services.worker.core import WorkerCore
from services.worker.metrics import WorkerMetrics
from services.worker.metrics import collect as worker_collect
from tests.unit.test_service_metrics import GatedTransport, InstantDrainer, InstantRuntime

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "tideserve.json"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def exported_names() -> set[str]:
    """Every series name the four services can export, labelled families without samples too."""
    registry = CollectorRegistry()
    BatcherMetrics(registry, lambda model: True)
    BalancerMetrics(registry)
    WorkerMetrics(registry)
    families = list(registry.collect())
    families += batcher_collect(BatcherCore(ModelCatalog(), GatedTransport()))  # type: ignore[arg-type]
    families += balancer_collect(BalancerCore(WorkerTable(), GatedTransport()))
    families += worker_collect(WorkerCore("w", {}))
    controller = ScalerController(
        InstantRuntime(), InstantDrainer(), GuardConfig(min_replicas=1, max_replicas=2)
    )
    families += scaler_collect(controller, "fake")
    return {f.name + suffix for f in families for suffix in SUFFIXES[f.type]}


def test_every_metric_the_dashboard_queries_is_exported() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    queried = {name for e in expressions for name in re.findall(r"tideserve_\w+", e)}
    assert len(dashboard["panels"]) >= 5
    assert queried, "the dashboard queries nothing"
    missing = queried - exported_names()
    assert not missing, f"dashboard queries metrics no service exports: {sorted(missing)}"


def test_metric_names_follow_prometheus_conventions() -> None:
    for name in exported_names():
        assert re.fullmatch(r"tideserve_(batcher|balancer|worker|scaler)_[a-z0-9_]+", name), name
        if "duration" in name or "wait" in name or "compute" in name:
            assert re.search(r"_seconds(_bucket|_count|_sum)?$", name), name


def test_prometheus_config_scrapes_every_service_and_discovers_workers() -> None:
    config = (ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text()
    for job, port in (("batcher", 8002), ("balancer", 8102), ("scaler", 8202)):
        assert f"job_name: {job}" in config
        assert f"127.0.0.1:{port}" in config
    assert "url: http://127.0.0.1:8102/sd/workers" in config


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_compose_parses_with_the_observability_profile() -> None:
    done = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "compose.yaml"), "--profile", "observability"]
        + ["config", "--services"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert set(done.stdout.split()) == {
        "credentials",
        "balancer",
        "batcher",
        "scaler",
        "prometheus",
        "grafana",
    }
    rendered = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "compose.yaml"), "config"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    ).stdout
    # Prometheus and Grafana only under the profile: a plain `up` needs no image but tideserve's.
    assert rendered.count("- observability") == 2


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


COMPOSE = load_yaml(ROOT / "compose.yaml")["services"]
STACK = load_yaml(ROOT / "deploy" / "swarm" / "stack.yaml")
TIDESERVE_SERVICES = ("balancer", "batcher", "scaler")
# The token files each tideserve service reads, by the setting that names them.
TOKEN_SETTINGS = {
    "balancer": {"TIDESERVE_BALANCER_CREDENTIALS_DIR"},
    "batcher": {"TIDESERVE_BATCHER_BALANCER_TOKEN_FILE"},
    "scaler": {
        "TIDESERVE_SCALER_BALANCER_TOKEN_FILE",
        "TIDESERVE_SCALER_WORKER_TOKEN_FILE",
        "TIDESERVE_SCALER_ADMIN_TOKEN_FILE",
    },
}


def assert_no_token_in_environment(name: str, environment: dict[str, str]) -> None:
    for key in environment:
        assert not key.endswith(("_TOKEN", "_KEY", "_PASSWORD")), (name, key)
    assert TOKEN_SETTINGS[name] <= environment.keys(), name


def test_compose_services_are_hardened_and_restart() -> None:
    assert set(TIDESERVE_SERVICES) < COMPOSE.keys()
    for name, service in COMPOSE.items():
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        for limit in ("cpus", "mem_limit", "pids_limit"):
            assert service[limit], (name, limit)
        if name == "credentials":
            # A one-shot: it must not be restarted once done.
            assert service["restart"] == "no"
            assert service["network_mode"] == "none"
            assert set(service["cap_add"]) <= {"CHOWN", "DAC_OVERRIDE", "FOWNER"}
            continue
        assert service["restart"] == "unless-stopped", name
        if name in TIDESERVE_SERVICES:
            assert service["user"].split(":")[0] not in ("0", "root"), name
            assert service["read_only"] is True, name
            assert "/tmp" in service["tmpfs"], name
            assert "cap_add" not in service, name
            assert service["healthcheck"]["test"][1:4] == ["python", "-m", "tideserve.healthprobe"]
            assert_no_token_in_environment(name, service["environment"])


def test_compose_writes_the_credentials_before_the_services_start() -> None:
    balancer = COMPOSE["balancer"]
    assert balancer["depends_on"]["credentials"] == {"condition": "service_completed_successfully"}
    for name in ("batcher", "scaler"):
        assert COMPOSE[name]["depends_on"]["balancer"] == {"condition": "service_healthy"}
    script = COMPOSE["credentials"]["command"][-1]
    assert "python -m tideserve.credentials" in script
    assert "chown -R 10001:10001" in script
    # Each service mounts only its own directory, read-only.
    for name in TIDESERVE_SERVICES:
        credential_mounts = [v for v in COMPOSE[name]["volumes"] if "CREDENTIALS_DIR" in v]
        assert len(credential_mounts) == 1, name
        assert f"credentials}}/{name}:" in credential_mounts[0], name
        assert credential_mounts[0].endswith(":ro"), name


def test_stack_services_are_hardened_restart_at_once_and_get_secrets() -> None:
    services = STACK["services"]
    assert set(services) == set(TIDESERVE_SERVICES)
    secrets = STACK["secrets"]
    for name, service in services.items():
        assert service["user"].split(":")[0] not in ("0", "root"), name
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert {"type": "tmpfs", "target": "/tmp"} in service["volumes"], name
        limits = service["deploy"]["resources"]["limits"]
        assert {"cpus", "memory", "pids"} <= limits.keys(), name
        restart = service["deploy"]["restart_policy"]
        assert restart["condition"] == "any", name
        assert restart["delay"] == "0s", name
        assert restart["max_attempts"] > 0, name
        assert service["healthcheck"]["test"][1:4] == ["python", "-m", "tideserve.healthprobe"]
        assert_no_token_in_environment(name, service["environment"])
        for secret in service["secrets"]:
            assert secret["source"] in secrets, (name, secret)
            assert secret["mode"] == 0o400, (name, secret)
            assert secret["uid"] == service["user"].split(":")[0], (name, secret)
    given = {name: {s["target"] for s in service["secrets"]} for name, service in services.items()}
    assert given == {
        "balancer": {"worker.token", "batcher.token", "scaler.token", "operator.token"},
        "batcher": {"batcher.token"},
        "scaler": {"scaler.token", "worker.token", "operator.token"},
    }
