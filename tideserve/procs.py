"""Child processes that cannot outlive their parent: if the launcher or scaler is killed, even
with SIGKILL, the kernel sends its children SIGTERM (Linux PR_SET_PDEATHSIG), so no orphan
worker keeps a port or a GPU.

The parent passes its pid in the environment (`child_env`); the child's entry point arms the
signal first thing (`exit_with_parent`). Arming it in the child itself, rather than in a
preexec_fn between fork and exec, matters: running Python code after fork in a process whose
gRPC threads hold locks can deadlock or crash the child before it ever starts.

`tideserve up` supervises its services and restarts a crashed scaler; the scaler's workers must
then keep serving instead of dying with it. The launcher is therefore a child subreaper
(`become_subreaper`): orphans anywhere below it are reparented to it, not to init. It passes its
pid as the *adopter* (ADOPTER_ENV), and a child that opts in (`exit_with_parent(adoptable=True)`,
the worker) survives its parent's death while the adopter is its new parent; the restarted scaler
then takes it over, watching it through a pidfd (`ProcessWatch`) since only a parent may wait
for a pid. When the adopter dies too, the kernel signals again and the orphan stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import logging
import os
import random
import select
import signal
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from types import FrameType

logger = logging.getLogger(__name__)

PARENT_ENV = "TIDESERVE_PARENT_PID"
ADOPTER_ENV = "TIDESERVE_ADOPTER_PID"
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
# The parent-death signal of an adoptable child: SIGHUP, "the process above you went away",
# which it handles by checking who its parent is now (SIGTERM would already mean "stop").
_ADOPTABLE_SIGNAL = signal.SIGHUP
# Ports handed to children start here; the kernel's ephemeral range (bind to port 0, outgoing
# connections) begins above, at 32768 by default.
_FIXED_PORTS_FROM = 10000


def child_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a child that must stop when this process dies."""
    return {**(os.environ if env is None else env), PARENT_ENV: str(os.getpid())}


def exit_with_parent(*, adoptable: bool = False) -> None:
    """Called first by every service's entry point: when started by a tideserve parent, ask the
    kernel for SIGTERM when that parent dies; exit at once if it has died already.

    `adoptable`: when an adopter is named in the environment, outlive the parent as long as the
    adopter is the new parent (it is a subreaper above us); stop when it is not, or when it dies.
    """
    parent = os.environ.pop(PARENT_ENV, None)
    if parent is None or not sys.platform.startswith("linux"):
        return
    adopter_env = os.environ.pop(ADOPTER_ENV, None) if adoptable else None
    adopter = int(adopter_env) if adopter_env else None
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    if adopter is None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    else:
        signal.signal(_ADOPTABLE_SIGNAL, _ParentLoss(int(parent), adopter))
        libc.prctl(_PR_SET_PDEATHSIG, _ADOPTABLE_SIGNAL)
    if os.getppid() not in (int(parent), adopter):
        # The parent went away before the signal was armed: nobody is left to stop us.
        raise SystemExit(0)


class _ParentLoss:
    """The parent-death signal handler of an adoptable child. The kernel sends it when the
    parent *thread* exits (then the child moves to another thread of the same parent) and when
    the parent process exits (then it moves to the nearest subreaper), reparenting before it
    signals; so getppid() tells the cases apart."""

    def __init__(self, parent: int, adopter: int) -> None:
        self.parent = parent
        self.adopter = adopter

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        parent = os.getppid()
        if parent == self.parent:
            return
        if parent == self.adopter:
            logger.warning("parent exited; adopted by the supervisor, serving on")
            self.parent = parent
            return
        logger.warning("parent exited and no supervisor adopted this process; stopping")
        os.kill(os.getpid(), signal.SIGTERM)


def become_subreaper() -> None:
    """Make orphans of this process's descendants its children (PR_SET_CHILD_SUBREAPER), so it
    can adopt and, on exit, stop them. Only on Linux; elsewhere orphans go to init as before."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1)


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from the state field on (the name before it may hold spaces)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def start_ticks(pid: int) -> int | None:
    """When the process started (clock ticks after boot); with the pid, it names one process
    even after the pid is reused. None when there is no such live process."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def descendants(pid: int) -> list[int]:
    """Every live process below `pid`, by parent links in /proc (zombies left out)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and fields[0] not in ("Z", "X"):
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    frontier = [pid]
    while frontier:
        frontier = [child for parent in frontier for child in children.get(parent, [])]
        found += frontier
    return found


class ProcessWatch:
    """A process that need not be our child, through a pidfd: unlike its pid, the pidfd never
    names another process after this one exits, and it turns readable when the process exits,
    so waiting needs neither polling nor waitpid (which only the parent may call).
    Raises ProcessLookupError when the process is already gone."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.fd = os.pidfd_open(pid)

    def exited(self) -> bool:
        return bool(select.select([self.fd], [], [], 0)[0])

    def send_signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self.fd, signum)

    async def wait(self, timeout_s: float) -> bool:
        """Until the process exits (True) or `timeout_s` passes (False)."""
        if self.exited():
            return True
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        loop.add_reader(self.fd, lambda: done.done() or done.set_result(None))
        try:
            await asyncio.wait_for(done, timeout_s)
        except TimeoutError:
            return False
        finally:
            loop.remove_reader(self.fd)
        return True

    def close(self) -> None:
        os.close(self.fd)


def _ephemeral_ports_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _port_walk() -> itertools.cycle[int]:
    """Every port below the ephemeral range, from a random start: one process never hands out a
    port twice, and two processes picking ports at once rarely meet."""
    end = max(_ephemeral_ports_start(), _FIXED_PORTS_FROM + 1000)
    first = random.randrange(_FIXED_PORTS_FROM, end)
    return itertools.cycle([*range(first, end), *range(_FIXED_PORTS_FROM, first)])


_candidate_ports = _port_walk()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host`, free now, for a child process to listen on.

    Not from the kernel's ephemeral range, as binding to port 0 would give: between this check
    and the child's own bind, any outgoing connection may take an ephemeral port, and a test
    suite opening thousands of connections did (a balancer never started, in CI)."""
    for port in itertools.islice(_candidate_ports, 1000):
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise OSError(f"no free TCP port on {host} between {_FIXED_PORTS_FROM} and the ephemeral range")
