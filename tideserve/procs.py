"""Child processes that cannot outlive their parent: if the launcher or scaler is killed, even
with SIGKILL, the kernel sends its children SIGTERM (Linux PR_SET_PDEATHSIG), so no orphan
worker keeps a port or a GPU."""

from __future__ import annotations

import ctypes
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """preexec_fn for subprocess: ask the kernel to SIGTERM this child when its parent dies."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
