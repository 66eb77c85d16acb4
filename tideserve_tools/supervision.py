"""Keeping the suite's services running, as compose's `restart: unless-stopped` does: a service
process that exits while the suite is up is started again, and the console says which one and
how it ended.

The first restart is immediate (one crash is most often a kill or an OOM, and every second down
is a second of failed requests); each further crash within the window waits twice as long as the
one before, up to a cap, so a service that cannot start does not spin. A service that crashes
`crash_limit` times within `window_s` will not come up by retrying: the supervisor gives up with
`CrashLoop`, and the launcher stops everything and exits non-zero with that reason.

`Supervisor` starts nothing itself and waits for nothing: it is handed a `spawn` function and a
clock, and `check()` is called whenever a child may have exited or a restart falls due, so the
policy is tested with fake processes and a fake clock (tests/unit/test_supervision.py).
"""

from __future__ import annotations

import logging
import signal
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

logger = logging.getLogger(__name__)


class ProcessHandle(Protocol):
    pid: int

    def poll(self) -> int | None:
        """None while running; else the exit code, negative for the signal that killed it."""
        ...


class CrashLoop(Exception):
    """A service crashed too often to keep restarting it; the message says which and how."""


@dataclass(frozen=True)
class RestartPolicy:
    # The second restart within the window waits this long, each later one twice the one before.
    backoff_s: float = 0.5
    max_delay_s: float = 8.0
    # This many crashes of one service within window_s: give up.
    crash_limit: int = 5
    window_s: float = 60.0

    def __post_init__(self) -> None:
        if self.backoff_s < 0 or self.max_delay_s < self.backoff_s:
            raise ValueError("need 0 <= backoff_s <= max_delay_s")
        if self.crash_limit < 1 or self.window_s <= 0:
            raise ValueError("need crash_limit >= 1 and window_s > 0")

    def delay(self, crashes: int) -> float:
        """Seconds before restarting a service that has crashed `crashes` times in the window
        (this crash included): 0 for the first, then backoff_s, doubling, capped."""
        if crashes <= 1:
            return 0.0
        return min(self.max_delay_s, self.backoff_s * 2 ** (crashes - 2))


def describe_exit(code: int) -> str:
    """'was killed by SIGKILL' or 'exited with code 1', for the console."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


@dataclass
class _Service:
    name: str
    handle: ProcessHandle
    crashes: deque[float] = field(default_factory=deque)
    # When a restart is due (clock time); None while the process runs.
    restart_at: float | None = None


class Supervisor:
    """Restart policy over a set of named service processes. `spawn(name)` starts one;
    `check()` notices exits, schedules and performs restarts, and returns what to tell the
    operator."""

    def __init__(
        self,
        names: Sequence[str],
        spawn: Callable[[str], ProcessHandle],
        policy: RestartPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not names:
            raise ValueError("nothing to supervise")
        self.names = tuple(names)
        self.spawn = spawn
        self.policy = policy or RestartPolicy()
        self.clock = clock
        self._services: dict[str, _Service] = {}

    def start(self) -> None:
        for name in self.names:
            self._services[name] = _Service(name, self.spawn(name))

    def handle(self, name: str) -> ProcessHandle:
        """The service's current process (the latest one started)."""
        return self._services[name].handle

    def check(self) -> list[str]:
        """Handle every exit and every restart due by now; the console lines for them.
        Raises CrashLoop when a service reaches the crash limit."""
        now = self.clock()
        messages = []
        for service in self._services.values():
            if service.restart_at is None:
                code = service.handle.poll()
                if code is None:
                    continue
                messages.append(self._crashed(service, code, now))
            if service.restart_at is not None and now >= service.restart_at:
                service.handle = self.spawn(service.name)
                service.restart_at = None
                messages.append(f"{service.name} restarted (pid {service.handle.pid})")
        for message in messages:
            logger.info(message)
        return messages

    def next_restart_in(self) -> float | None:
        """Seconds until the next scheduled restart; None when none is scheduled."""
        due = [s.restart_at for s in self._services.values() if s.restart_at is not None]
        if not due:
            return None
        return max(0.0, min(due) - self.clock())

    def _crashed(self, service: _Service, code: int, now: float) -> str:
        service.crashes.append(now)
        while service.crashes[0] <= now - self.policy.window_s:
            service.crashes.popleft()
        count = len(service.crashes)
        how = describe_exit(code)
        if count >= self.policy.crash_limit:
            raise CrashLoop(
                f"{service.name} {how}: {count} crashes in {self.policy.window_s:.0f} s, giving up"
            )
        delay = self.policy.delay(count)
        service.restart_at = now + delay
        when = "now" if delay == 0 else f"in {delay:.1f} s"
        window = f"{self.policy.window_s:.0f} s"
        return f"{service.name} {how}; restarting it {when} (crash {count} in {window})"
