"""The Grafana dashboard and Prometheus config kept in deploy/ match what the services export,
and compose.yaml (with its observability profile) parses under docker-compose."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
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
    assert set(done.stdout.split()) == {"balancer", "batcher", "scaler", "prometheus", "grafana"}
    rendered = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "compose.yaml"), "config"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    ).stdout
    # Prometheus and Grafana only under the profile: a plain `up` needs no image but tideserve's.
    assert rendered.count("- observability") == 2
