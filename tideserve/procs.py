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
import os
import signal
import sys
from collections.abc import Mapping

PARENT_ENV = "TIDESERVE_PARENT_PID"
_PR_SET_PDEATHSIG = 1


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
