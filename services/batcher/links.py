"""Which balancers this batcher holds a live cluster stream (WatchCluster) to. A batcher without
one cannot serve anything, whatever it last heard: its readiness, its health status and whether
its queues send batches all follow this, and nothing else. No gRPC here: the server wiring
reports each stream's ups and downs, and the scheduler and readiness read the result."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence


class BalancerLinks:
    """Live streams by balancer address, the last failure seen for each, and since when none has
    been live. Listeners (`subscribe`) are called on every change of `live`."""

    def __init__(
        self, addresses: Sequence[str], clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not addresses:
            raise ValueError("at least one balancer address is needed")
        self.addresses = tuple(addresses)
        self.clock = clock
        self._live: set[str] = set()
        self._failures: dict[str, str] = {}
        self._listeners: list[Callable[[], None]] = []
        # Futures of `reconnected` callers, woken by the next stream that comes up.
        self._waiters: list[asyncio.Future[None]] = []
        # A batcher starts with no stream: it has heard from nobody yet.
        self.down_since: float | None = clock()

    @property
    def live(self) -> bool:
        return bool(self._live)

    def is_up(self, address: str) -> bool:
        return address in self._live

    def up(self, address: str) -> bool:
        """A stream to `address` delivered a snapshot. True if this made the batcher live."""
        if address in self._live:
            return False
        was_live = self.live
        self._live.add(address)
        self._failures.pop(address, None)
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()
        if was_live:
            return False
        self.down_since = None
        self._notify()
        return True

    def down(self, address: str, failure: str) -> bool:
        """The stream to `address` broke (or could not be opened) with `failure`. True if this
        left the batcher with no live balancer."""
        self._failures[address] = failure
        if address not in self._live:
            return False
        self._live.discard(address)
        if self.live:
            return False
        self.down_since = self.clock()
        self._notify()
        return True

    def failed(self, address: str, failure: str) -> None:
        """A call to `address` failed in transport. Liveness stays the stream's to decide (the
        stream breaks too when the balancer is gone); the failure is kept for messages."""
        self._failures[address] = failure

    async def reconnected(self, timeout: float | None) -> bool:
        """Wait until some balancer's stream comes up (anew: a stream live now does not count,
        since the caller just saw calls over it fail). False after `timeout` seconds."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            return False
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
        return True

    def unreachable(self) -> str:
        """Why nothing can be sent, naming each balancer tried and its last failure."""
        tried = ", ".join(
            f"balancer {address} unreachable ({self._failures.get(address, 'no stream yet')})"
            for address in self.addresses
        )
        return f"{tried}; no balancer is reachable"

    def subscribe(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _notify(self) -> None:
        for listener in list(self._listeners):
            listener()
