"""`tideserve report --record` against a real local stack under a little load: the RUN.json it
writes sees the load, the worker and the batches, plots, and reads back as a traffic trace."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.cluster import ROOT, Cluster
from services.worker.models import DEFAULT_MODEL
from tideserve.runs import load_run
from tideserve_learning.sim import trace_files
from tideserve_tools.loadgen import closed_loop
from tideserve_tools.report import PLOTS

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def one_worker(model_repository: Path, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[Cluster]:
    running = Cluster(model_repository, tmp_path_factory.mktemp("logs")).start(workers=1)
    yield running
    running.stop()


async def _record_under_load(cluster: Cluster, out: Path) -> tuple[int, str, str]:
    """The CLI records for 2 s in a subprocess while this loop drives 3 s of closed-loop load, so
    the load covers the whole recording."""
    recorder = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tideserve_tools.cli", "report", "--record", cluster.balancer,
        "--seconds", "2", "--interval", "0.25", "--slo-ms", "100", "--out", str(out),
        "--token-file", cluster.token_file("operator"),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    load = await closed_loop(cluster.batcher, DEFAULT_MODEL, concurrency=4, seconds=3.0)
    stdout, stderr = await asyncio.wait_for(recorder.communicate(), timeout=30)
    assert load.ok > 0, load.errors
    return recorder.returncode or 0, stdout.decode(), stderr.decode()


def test_recording_a_live_stack_sees_its_load(one_worker: Cluster, tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    returncode, stdout, stderr = asyncio.run(_record_under_load(one_worker, out))
    assert returncode == 0, stderr
    assert stdout.strip() == str(out)

    run = load_run(out)
    assert len(run.samples) >= 4
    assert run.samples[-1].t >= 2.0
    assert any(s.arrival_rate > 0 for s in run.samples)
    assert all(s.replicas_ready == 1 for s in run.samples)
    assert any(s.latency_p99_ms for s in run.samples)
    assert all(s.slo_ms == 100.0 for s in run.samples)
    assert sum(run.batch_size_counts.values()) > 0
    assert run.meta["balancer"] == one_worker.balancer
    # The recording is a trace `tideserve policy eval --trace` and `policy train --traces` read.
    trace = trace_files.load(out)
    assert len(trace.rates) >= 2
    assert trace.scale is not None
    assert trace.scale > 0

    plotted = subprocess.run(
        [sys.executable, "-m", "tideserve_tools.cli", "report", str(out), "--out", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )
    assert plotted.returncode == 0, plotted.stderr
    assert plotted.stdout.split() == [str(tmp_path / name) for name in PLOTS]
