"""Who may call a worker's Execute: only the balancers it registered with.

A worker computes whatever batch reaches its Execute, so a process that could call it directly
would bypass the balancer's authentication and routing and use (or stall) the worker's compute.
The worker makes a random key at start and sends it in its registration over the heartbeat
stream, which the balancer accepts only from the worker role; each balancer then presents the
key on every Execute. The key never leaves the worker and its balancers, and it names no role:
holding the worker token (or any other) is not enough, since each worker process has its own.
The same check applies under mutual TLS, so one rule holds however the plane is secured.

Plain logic with no gRPC in it; `tideserve.serving.RoleGuard` applies it to the Worker service,
so health and reflection stay open to probes and tools.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Iterable, Mapping

from tideserve.credentials import presented_token, read_secret
from tideserve.errors import Unauthenticated


class ExecuteGuard:
    """Admits a call to the Worker service only with `key` as its bearer token."""

    def __init__(self, key: str) -> None:
        if not key:
            raise ValueError("ExecuteGuard needs a non-empty key")
        self.key = key
        self._expected = key.encode()

    @classmethod
    def from_settings(cls, key_file: str) -> ExecuteGuard:
        """A fresh random key per start; the one in `key_file` (an owner-only file) instead,
        for a tool that must call this worker itself, as bench/balancer.py times the hop."""
        if key_file:
            return cls(read_secret(key_file, "execute_key_file"))
        return cls(secrets.token_urlsafe(32))

    def check(self, method: str, metadata: Mapping[str, str], identities: Iterable[str]) -> None:
        """Raise Unauthenticated unless the call presents this worker's key. A certificate's
        identity is not asked for: any role's certificate would be no narrower than its token."""
        if not hmac.compare_digest(presented_token(metadata), self._expected):
            raise Unauthenticated(
                f"Worker/{method} serves only the balancers this worker registered with, which "
                "send the key from its registration; send batches through a balancer's Dispatch"
            )
