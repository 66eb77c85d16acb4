"""Child processes that cannot outlive their parent: if the launcher or scaler is killed, even
with SIGKILL, the kernel sends its children SIGTERM (Linux PR_SET_PDEATHSIG), so no orphan
worker keeps a port or a GPU.

The parent passes its pid in the environment (`child_env`); the child's entry point arms the
signal first thing (`exit_with_parent`). Arming it in the child itself, rather than in a
preexec_fn between fork and exec, matters: running Python code after fork in a process whose
gRPC threads hold locks can deadlock or crash the child before it ever starts.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import random
import signal
import socket
import sys
from collections.abc import Mapping
from pathlib import Path

PARENT_ENV = "TIDESERVE_PARENT_PID"
_PR_SET_PDEATHSIG = 1
# Ports handed to children start here; the kernel's ephemeral range (bind to port 0, outgoing
# connections) begins above, at 32768 by default.
_FIXED_PORTS_FROM = 10000


def child_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a child that must stop when this process dies."""
    return {**(os.environ if env is None else env), PARENT_ENV: str(os.getpid())}


def exit_with_parent() -> None:
    """Called first by every service's entry point: when started by a tideserve parent, ask the
    kernel for SIGTERM when that parent dies; exit at once if it has died already."""
    parent = os.environ.pop(PARENT_ENV, None)
    if parent is None or not sys.platform.startswith("linux"):
        return
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(parent):
        # The parent went away before the signal was armed: nobody is left to stop us.
        raise SystemExit(0)


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
