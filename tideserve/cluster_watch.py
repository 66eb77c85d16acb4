"""Following the balancers' cluster snapshots (WatchCluster): one stream per configured balancer,
each reopened with exponential back-off when it breaks or ends, for as long as the watch runs.
The batcher keeps its model catalog and its readiness from these streams, the scaler its view of
the cluster; both follow every balancer, so losing one leaves the others' snapshots coming."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import grpc

from tideserve.v1 import cluster_pb2, cluster_pb2_grpc

OnSnapshot = Callable[[str, cluster_pb2.ClusterSnapshot], Awaitable[None]]
OnLost = Callable[[str, str], Awaitable[None]]


@dataclass(frozen=True)
class Backoff:
    """Pause before reopening a stream: `initial_s`, doubled after each failed attempt up to
    `max_s`, back to `initial_s` once a stream delivers a snapshot. The channel's own reconnect
    back-off (tideserve/grpc_options.py) paces the connection attempts underneath; this one
    keeps a balancer that answers and then ends the stream at once from being called in a loop."""

    initial_s: float = 0.2
    max_s: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.initial_s <= self.max_s:
            raise ValueError("back-off needs 0 < initial_s <= max_s")


async def watch_cluster(
    channels: Mapping[str, grpc.aio.Channel],
    on_snapshot: OnSnapshot,
    on_lost: OnLost,
    *,
    metadata: Sequence[tuple[str, str]] = (),
    interval_s: float = 0.0,
    backoff: Backoff = Backoff(),
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Follow every balancer of `channels` (address -> channel) until cancelled.

    `on_snapshot(address, snapshot)` runs for each snapshot, in order per balancer;
    `on_lost(address, failure)` each time that balancer's stream breaks, ends, or cannot be
    opened, before the back-off pause. `interval_s` asks the balancers for a snapshot that often
    (0: their default). An exception from a callback ends the whole watch: it is a bug, and the
    caller must hear of it rather than follow fewer balancers without knowing."""
    async with asyncio.TaskGroup() as group:
        for address, channel in channels.items():
            group.create_task(
                _follow(
                    address, channel, on_snapshot, on_lost, metadata, interval_s, backoff, sleep
                )
            )


async def _follow(
    address: str,
    channel: grpc.aio.Channel,
    on_snapshot: OnSnapshot,
    on_lost: OnLost,
    metadata: Sequence[tuple[str, str]],
    interval_s: float,
    backoff: Backoff,
    sleep: Callable[[float], Awaitable[None]],
) -> None:
    stub = cluster_pb2_grpc.BalancerStub(channel)
    request = cluster_pb2.WatchClusterRequest(interval_seconds=interval_s)
    pause = backoff.initial_s
    while True:
        failure = "the cluster stream ended"
        try:
            async for snapshot in stub.WatchCluster(request, metadata=tuple(metadata)):
                pause = backoff.initial_s
                await on_snapshot(address, snapshot)
        except grpc.aio.AioRpcError as error:
            failure = f"{error.code().name}: {error.details()}"
        await on_lost(address, failure)
        await sleep(pause)
        pause = min(pause * 2, backoff.max_s)
