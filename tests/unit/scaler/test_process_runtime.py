"""ProcessRuntime's adoption of workers recorded in its state directory by an earlier scaler,
with real processes standing in for workers (a restarted scaler never started them, so they are
not its children: it watches them through pidfds)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.scaler.runtime import ProcessRuntime
from tideserve.procs import start_ticks

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen]:
    process = subprocess.Popen(SLEEPER)
    yield process
    process.kill()
    process.wait()


def record(state_dir: Path, worker_id: str, pid: int, ticks: int | None) -> Path:
    path = state_dir / f"{worker_id}.json"
    path.write_text(json.dumps({"pid": pid, "start_ticks": ticks, "started_unix": 1.5}))
    return path


async def test_live_recorded_worker_is_adopted_and_stopped(
    tmp_path: Path, sleeper: subprocess.Popen
) -> None:
    path = record(tmp_path, "worker-a", sleeper.pid, start_ticks(sleeper.pid))
    runtime = ProcessRuntime([], state_dir=tmp_path)
    (worker,) = await runtime.list()
    assert (worker.worker_id, worker.runtime_id, worker.started_unix) == (
        "worker-a",
        str(sleeper.pid),
        1.5,
    )
    assert await runtime.reap() == []
    await runtime.stop(worker, grace_s=10.0)
    assert sleeper.wait(10) == -15  # SIGTERM
    assert not path.exists()
    assert await runtime.list() == []


async def test_adopted_worker_that_dies_is_reaped(
    tmp_path: Path, sleeper: subprocess.Popen
) -> None:
    path = record(tmp_path, "worker-a", sleeper.pid, start_ticks(sleeper.pid))
    runtime = ProcessRuntime([], state_dir=tmp_path)
    (worker,) = await runtime.list()
    sleeper.kill()
    sleeper.wait()
    assert await runtime.reap() == [worker]
    assert not path.exists()


async def test_records_of_dead_or_reused_pids_are_dropped(
    tmp_path: Path, sleeper: subprocess.Popen
) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    record(tmp_path, "worker-gone", dead.pid, 12345)
    # The pid is alive but started at another time: another process reusing the pid.
    record(tmp_path, "worker-reused", sleeper.pid, (start_ticks(sleeper.pid) or 0) - 1)
    garbled = tmp_path / "worker-garbled.json"
    garbled.write_text("{")
    runtime = ProcessRuntime([], state_dir=tmp_path)
    assert await runtime.list() == []
    assert [p.name for p in tmp_path.iterdir()] == []
    assert sleeper.poll() is None, "a process that is not ours is left alone"


async def test_without_state_dir_nothing_is_adopted(
    tmp_path: Path, sleeper: subprocess.Popen
) -> None:
    record(tmp_path, "worker-a", sleeper.pid, start_ticks(sleeper.pid))
    assert await ProcessRuntime([]).list() == []
