"""The pieces of `tideserve up` around the supervisor: the host-fitted replica bound, stale worker
records of killed launchers, and how an adoptable worker reads its parent-death signal
(tideserve.procs)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tideserve import procs
from tideserve_tools.launcher import (
    WORKER_MEMORY_BYTES,
    host_max_replicas,
    remove_stale_worker_state,
)

GIB = 1 << 30


@pytest.mark.parametrize(
    ("cpus", "memory", "expected"),
    [
        (2, 16 * GIB, 1),  # one core is the services'
        (1, 16 * GIB, 1),  # never below one
        (16, 64 * GIB, 15),
        (16, 8 * GIB, 8 * GIB // 2 // WORKER_MEMORY_BYTES),  # memory bound
    ],
)
def test_host_max_replicas(cpus: int, memory: int, expected: int) -> None:
    assert host_max_replicas(cpus, memory) == expected


def test_host_max_replicas_reads_this_host() -> None:
    assert 1 <= host_max_replicas() <= max(1, len(os.sched_getaffinity(0)) - 1)


class Signals:
    def __init__(self, monkeypatch: pytest.MonkeyPatch, parent: int) -> None:
        self.parent = parent
        self.sent: list[tuple[int, int]] = []
        monkeypatch.setattr(procs.os, "getppid", lambda: self.parent)
        monkeypatch.setattr(procs.os, "kill", lambda pid, sig: self.sent.append((pid, sig)))


def test_parent_thread_exit_is_not_parent_death(monkeypatch: pytest.MonkeyPatch) -> None:
    signals = Signals(monkeypatch, parent=10)
    procs._ParentLoss(parent=10, adopter=1)(signal.SIGHUP, None)
    assert signals.sent == []


def test_adopted_by_the_supervisor_serves_on_until_it_dies(monkeypatch: pytest.MonkeyPatch) -> None:
    signals = Signals(monkeypatch, parent=1)
    loss = procs._ParentLoss(parent=10, adopter=1)
    loss(signal.SIGHUP, None)
    assert signals.sent == []
    # The supervisor's own threads come and go.
    loss(signal.SIGHUP, None)
    assert signals.sent == []
    signals.parent = 0
    loss(signal.SIGHUP, None)
    assert signals.sent == [(os.getpid(), signal.SIGTERM)]


def test_orphan_without_supervisor_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    signals = Signals(monkeypatch, parent=77)
    procs._ParentLoss(parent=10, adopter=1)(signal.SIGHUP, None)
    assert signals.sent == [(os.getpid(), signal.SIGTERM)]


def test_stale_worker_state_of_dead_launchers_is_removed(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f"workers-{dead.pid}").mkdir()
    (tmp_path / f"workers-{dead.pid}" / "worker-a.json").write_text("{}")
    (tmp_path / f"workers-{os.getpid()}").mkdir()
    remove_stale_worker_state(tmp_path)
    remove_stale_worker_state(tmp_path / "absent")
    assert [p.name for p in tmp_path.iterdir()] == [f"workers-{os.getpid()}"]
