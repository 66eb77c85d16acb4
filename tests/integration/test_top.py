"""`tideserve top --once` against a real balancer prints every registered worker."""

from __future__ import annotations

import subprocess
import sys

import pytest

from harness.cluster import ROOT, Cluster

pytestmark = pytest.mark.integration


def test_top_once_prints_the_workers(cluster: Cluster) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tideserve_tools.cli", "top", "--once"]
        + ["--balancer", cluster.balancer, "--scaler", ""]
        + ["--token-file", cluster.token_file("operator")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    for worker in cluster.snapshot().workers:
        assert worker.worker_id in done.stdout
    assert "routing" in done.stdout
    assert "ready" in done.stdout
