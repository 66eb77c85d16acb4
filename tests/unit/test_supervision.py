"""The restart policy of `tideserve up` (tideserve_tools.supervision) with fake processes and a fake
clock; tests/e2e/test_up_supervision.py kills the real services."""

from __future__ import annotations

import itertools
import signal

import pytest

from tideserve_tools.supervision import CrashLoop, RestartPolicy, Supervisor, describe_exit


class FakeProcess:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Spawner:
    def __init__(self) -> None:
        self.pids = itertools.count(100)
        self.started: list[tuple[str, FakeProcess]] = []

    def __call__(self, name: str) -> FakeProcess:
        process = FakeProcess(next(self.pids))
        self.started.append((name, process))
        return process


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def spawner() -> Spawner:
    return Spawner()


def make(spawner: Spawner, clock: FakeClock, **policy: float) -> Supervisor:
    supervisor = Supervisor(
        ("balancer", "batcher", "scaler"), spawner, RestartPolicy(**policy), clock
    )
    supervisor.start()
    return supervisor


def test_start_spawns_each_service_once(spawner: Spawner, clock: FakeClock) -> None:
    supervisor = make(spawner, clock)
    assert [name for name, _ in spawner.started] == ["balancer", "batcher", "scaler"]
    assert supervisor.check() == []
    assert supervisor.next_restart_in() is None


def test_first_crash_restarts_at_once_naming_service_and_signal(
    spawner: Spawner, clock: FakeClock
) -> None:
    supervisor = make(spawner, clock)
    old = supervisor.handle("balancer")
    old.returncode = -signal.SIGKILL  # type: ignore[attr-defined]
    messages = supervisor.check()
    assert messages[0] == "balancer was killed by SIGKILL; restarting it now (crash 1 in 60 s)"
    new = supervisor.handle("balancer")
    assert new is not old
    assert messages[1] == f"balancer restarted (pid {new.pid})"
    assert spawner.started[-1] == ("balancer", new)
    # The others are untouched.
    assert len(spawner.started) == 4


def test_exit_code_is_reported(spawner: Spawner, clock: FakeClock) -> None:
    supervisor = make(spawner, clock)
    supervisor.handle("batcher").returncode = 3  # type: ignore[attr-defined]
    assert supervisor.check()[0].startswith("batcher exited with code 3; restarting it now")


def test_clean_exit_is_restarted_too(spawner: Spawner, clock: FakeClock) -> None:
    # unless-stopped: only the operator stops a service.
    supervisor = make(spawner, clock)
    supervisor.handle("scaler").returncode = 0  # type: ignore[attr-defined]
    supervisor.check()
    assert supervisor.handle("scaler").poll() is None
    assert spawner.started[-1][0] == "scaler"


def test_later_crashes_back_off_doubling_up_to_the_cap(spawner: Spawner, clock: FakeClock) -> None:
    supervisor = make(spawner, clock, backoff_s=1.0, max_delay_s=3.0, crash_limit=10)
    delays = []
    for _ in range(5):
        supervisor.handle("balancer").returncode = 1  # type: ignore[attr-defined]
        messages = supervisor.check()
        waited = supervisor.next_restart_in() or 0.0
        delays.append(waited)
        if waited:
            assert messages == [
                f"balancer exited with code 1; restarting it in {waited:.1f} s "
                f"(crash {len(delays)} in 60 s)"
            ]
            clock.now += waited - 0.01
            assert supervisor.check() == [], "nothing restarts before its delay"
            clock.now += 0.01
            assert supervisor.check() == [f"balancer restarted (pid {spawner.started[-1][1].pid})"]
        assert supervisor.handle("balancer").poll() is None
    assert delays == [0.0, 1.0, 2.0, 3.0, 3.0]


def test_crashes_outside_the_window_are_forgotten(spawner: Spawner, clock: FakeClock) -> None:
    supervisor = make(spawner, clock, backoff_s=1.0, window_s=60.0)
    for _ in range(3):
        supervisor.handle("batcher").returncode = 1  # type: ignore[attr-defined]
        supervisor.check()
        clock.now += 30.0
        supervisor.check()
    # Crashes at t, t+30, t+60: the first has left the window, so this is crash 2 again.
    supervisor.handle("batcher").returncode = 1  # type: ignore[attr-defined]
    assert "(crash 2 in 60 s)" in supervisor.check()[0]


def test_crash_loop_gives_up_with_the_reason(spawner: Spawner, clock: FakeClock) -> None:
    supervisor = make(spawner, clock, backoff_s=0.5)
    for _ in range(4):
        supervisor.handle("balancer").returncode = 1  # type: ignore[attr-defined]
        supervisor.check()
        clock.now += supervisor.next_restart_in() or 0.0
        supervisor.check()
    supervisor.handle("balancer").returncode = 1  # type: ignore[attr-defined]
    with pytest.raises(CrashLoop, match=r"^balancer exited with code 1: 5 crashes in 60 s"):
        supervisor.check()
    # Four restarts happened, the fifth crash was not restarted.
    assert sum(1 for name, _ in spawner.started if name == "balancer") == 5


def test_crashes_are_counted_per_service(spawner: Spawner, clock: FakeClock) -> None:
    supervisor = make(spawner, clock)
    for name in ("balancer", "batcher", "scaler", "balancer"):
        supervisor.handle(name).returncode = -signal.SIGKILL  # type: ignore[attr-defined]
        messages = supervisor.check()
        clock.now += supervisor.next_restart_in() or 0.0
        messages += supervisor.check()
    assert "balancer was killed by SIGKILL; restarting it in 0.5 s (crash 2 in 60 s)" in messages


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="max_delay_s"):
        RestartPolicy(backoff_s=2.0, max_delay_s=1.0)
    with pytest.raises(ValueError, match="crash_limit"):
        RestartPolicy(crash_limit=0)
    with pytest.raises(ValueError, match="nothing to supervise"):
        Supervisor((), Spawner())


def test_describe_exit() -> None:
    assert describe_exit(0) == "exited with code 0"
    assert describe_exit(-signal.SIGTERM) == "was killed by SIGTERM"
    assert describe_exit(-200) == "was killed by signal 200"
