"""`tideserve up` as a user runs it: the whole suite, the demo, and a clean stop."""

from __future__ import annotations

import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.cluster import ROOT, free_port

pytestmark = pytest.mark.integration


def up_command(tmp_path: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tideserve_tools.cli",
        "up",
        "--model-repository",
        str(tmp_path / "repo"),
        "--log-dir",
        str(tmp_path / "logs"),
        "--batcher-port",
        str(free_port()),
        "--balancer-port",
        str(free_port()),
        "--scaler-port",
        str(free_port()),
        "--batcher-metrics-port",
        str(free_port()),
        "--balancer-metrics-port",
        str(free_port()),
        "--scaler-metrics-port",
        str(free_port()),
        *extra,
    ]


def descendants(pid: int) -> set[int]:
    """Every live process whose parent chain reaches `pid`."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        children = {child for child, parent in parents.items() if parent in frontier}
        frontier = children - found
        found |= children
    return found


def alive(pids: set[int]) -> set[int]:
    return {
        p
        for p in pids
        if Path(f"/proc/{p}").exists()
        and "Z" not in (Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[:1])
    }


def test_up_creates_default_model_runs_demo_and_exits(tmp_path: Path) -> None:
    done = subprocess.run(
        up_command(tmp_path, "--demo", "--exit-after-demo", "--demo-seconds", "3"),
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "created model repository" in out
    assert (tmp_path / "repo" / "tiny_cnn" / "config.pbtxt").exists()
    ok = int(re.search(r"requests ok (\d+), errors 0", out).group(1))
    assert ok > 0
    assert float(re.search(r"throughput\s+([\d,.]+)", out).group(1).replace(",", "")) > 0
    assert re.search(r"latency ms\s+p50 [\d.]+\s+p90 [\d.]+\s+p99 [\d.]+", out)
    assert "stopped." in out
    # Protected by default: the run's tokens beside its logs, owner-only, the operator's printed.
    credentials = tmp_path / "credentials"
    assert f"balancer operator token              {credentials / 'operator.token'}" in out
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o700
    for role in ("worker", "batcher", "scaler", "operator"):
        assert stat.S_IMODE((credentials / f"{role}.token").stat().st_mode) == 0o600


def test_up_stops_everything_on_sigint_leaving_no_orphan(tmp_path: Path) -> None:
    process = subprocess.Popen(
        up_command(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT
    )
    lines = []
    try:
        for line in process.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if "Ctrl-C stops everything" in line:
                break
        else:
            pytest.fail("tideserve up never became ready:\n" + "".join(lines))
        children = descendants(process.pid)
        # balancer, batcher, scaler and the scaler's worker
        assert len(children) >= 4, children
        process.send_signal(signal.SIGINT)
        assert process.wait(60) == 0
        deadline = time.monotonic() + 10
        while alive(children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(children), f"orphans left: {alive(children)}"
    finally:
        if process.poll() is None:
            process.kill()
