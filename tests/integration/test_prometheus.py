"""A real Prometheus server (the Debian package) scrapes a real local stack on loopback: every
service's /metrics, and the workers it discovers through the balancer's /sd/workers."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from harness.cluster import Cluster, free_port, wait_for, wait_healthy
from services.worker.models import DEFAULT_MODEL
from tideserve_tools.loadgen import closed_loop

pytestmark = pytest.mark.integration

PROMETHEUS = shutil.which("prometheus")


class Stack(NamedTuple):
    cluster: Cluster
    scaler_metrics_port: int


def prometheus_config(cluster: Cluster, scaler_metrics_port: int) -> str:
    """Static targets for the three services; the workers come from HTTP discovery only."""

    def static(job: str, port: int) -> str:
        return f"  - job_name: {job}\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"

    return (
        "global:\n"
        "  scrape_interval: 1s\n"
        "  scrape_timeout: 1s\n"
        "scrape_configs:\n"
        + static("batcher", cluster.batcher_metrics_port)
        + static("balancer", cluster.balancer_metrics_port)
        + static("scaler", scaler_metrics_port)
        + "  - job_name: workers\n"
        "    http_sd_configs:\n"
        f"      - url: http://127.0.0.1:{cluster.balancer_metrics_port}/sd/workers\n"
        "        refresh_interval: 1s\n"
    )


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def stack(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Balancer and batcher, and a scaler that starts the one worker (so its starts count too)."""
    cluster = Cluster(model_repository, tmp_path_factory.mktemp("logs")).start(workers=0)
    scaler_metrics_port, scaler_port = free_port(), free_port()
    cluster.spawn(
        "scaler",
        "services.scaler",
        "--port",
        str(scaler_port),
        "--metrics-port",
        str(scaler_metrics_port),
        "--balancers",
        cluster.balancer,
        *cluster.scaler_flags(),
        "--runtime",
        "process",
        "--model-repository",
        str(model_repository),
        "--policy",
        "hpa",
        "--min-replicas",
        "1",
        "--max-replicas",
        "1",
        "--worker-threads",
        "1",
    )
    try:
        wait_healthy(f"127.0.0.1:{scaler_port}")
        cluster.wait_workers(1, timeout_s=90)
        yield Stack(cluster, scaler_metrics_port)
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def prometheus(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if PROMETHEUS is None:
        pytest.skip("no prometheus binary: scripts/test.sh installs the Debian package")
    home = tmp_path_factory.mktemp("prometheus")
    config = home / "prometheus.yml"
    config.write_text(prometheus_config(*stack))
    port = free_port()
    log = (home / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={home / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _ready(url), 30, "prometheus ready", interval_s=0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def query(url: str, promql: str) -> list[dict[str, Any]]:
    answer = get_json(f"{url}/api/v1/query?query={urllib.parse.quote(promql)}")
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def test_prometheus_scrapes_every_service_and_discovers_the_workers(
    stack: Stack, prometheus: str
) -> None:
    cluster = stack.cluster
    load = asyncio.run(closed_loop(cluster.batcher, DEFAULT_MODEL, concurrency=16, seconds=3.0))
    assert load.ok > 0
    assert not load.errors

    def series(promql: str) -> list[dict[str, Any]]:
        return wait_for(lambda: query(prometheus, promql), 30, promql, interval_s=0.5)

    served = series(f'tideserve_batcher_requests_total{{model="{DEFAULT_MODEL}",code="OK"}} > 0')
    assert float(served[0]["value"][1]) >= load.ok * 0.5
    assert series("tideserve_batcher_batch_size_rows_count > 0")
    assert series('tideserve_balancer_dispatches_total{code="OK"} > 0')
    assert series('tideserve_balancer_workers{phase="ready"} == 1')
    assert series('tideserve_scaler_replicas{state="ready"} == 1')
    assert series("tideserve_scaler_worker_starts_total >= 1")

    workers = series('tideserve_worker_batches_total{job="workers",code="OK"} > 0')
    registered = {w.worker_id for w in cluster.snapshot().workers}
    assert {w["metric"]["worker_id"] for w in workers} == registered

    targets = get_json(f"{prometheus}/api/v1/targets")["data"]["activeTargets"]
    discovered = [t for t in targets if t["labels"]["job"] == "workers"]
    assert {t["labels"]["worker_id"] for t in discovered} == registered
    assert all(t["health"] == "up" for t in targets), targets
