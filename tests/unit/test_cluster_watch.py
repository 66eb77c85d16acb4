"""watch_cluster with fake balancer channels: every balancer is followed, each stream reopened
after it breaks or ends with a back-off that grows and resets once a snapshot arrives, and a
callback's bug ends the watch instead of silently following fewer balancers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from tideserve.cluster_watch import Backoff, watch_cluster
from tideserve.v1 import cluster_pb2

Stream = list[cluster_pb2.ClusterSnapshot | grpc.aio.AioRpcError]


def snapshot(rows: int) -> cluster_pb2.ClusterSnapshot:
    return cluster_pb2.ClusterSnapshot(dispatched_rows=rows)


def unavailable() -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "gone"
    )


class FakeChannel:
    """Answers WatchCluster with the next of `streams` (snapshots, then maybe an error); once
    they are used up, with a stream that never sends."""

    def __init__(self, streams: list[Stream]) -> None:
        self.streams = list(streams)
        self.requests: list[tuple[Any, Any]] = []

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        assert method == "/tideserve.v1.Balancer/WatchCluster"
        return self.watch

    def unary_unary(self, *args: Any, **kwargs: Any) -> None:
        return None

    def stream_stream(self, *args: Any, **kwargs: Any) -> None:
        return None

    def watch(self, request: Any, metadata: Any = None) -> AsyncIterator[Any]:
        self.requests.append((request, metadata))
        return self._answer(self.streams.pop(0) if self.streams else None)

    async def _answer(self, stream: Stream | None) -> AsyncIterator[Any]:
        if stream is None:
            await asyncio.Event().wait()
            return
        for item in stream:
            if isinstance(item, grpc.aio.AioRpcError):
                raise item
            yield item


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, object]] = []
        self.pauses: list[float] = []

    async def snapshot(self, address: str, snap: cluster_pb2.ClusterSnapshot) -> None:
        self.events.append(("snapshot", address, snap.dispatched_rows))

    async def lost(self, address: str, failure: str) -> None:
        self.events.append(("lost", address, failure))

    async def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        await asyncio.sleep(0)


async def run_until(recorder: Recorder, count: int, **channels: FakeChannel) -> None:
    watch = asyncio.create_task(
        watch_cluster(
            {f"{name}:1": channel for name, channel in channels.items()},
            recorder.snapshot,
            recorder.lost,
            metadata=(("authorization", "Bearer t"),),
            interval_s=0.25,
            backoff=Backoff(initial_s=0.1, max_s=0.4),
            sleep=recorder.sleep,
        )
    )
    for _ in range(1000):
        if len(recorder.events) >= count:
            break
        await asyncio.sleep(0)
    watch.cancel()
    with pytest.raises(asyncio.CancelledError):
        await watch


async def test_every_balancer_is_followed() -> None:
    recorder = Recorder()
    a, b = FakeChannel([[snapshot(1)]]), FakeChannel([[snapshot(2)]])
    await run_until(recorder, 4, a=a, b=b)

    assert ("snapshot", "a:1", 1) in recorder.events
    assert ("snapshot", "b:1", 2) in recorder.events
    request, metadata = a.requests[0]
    assert request.interval_seconds == 0.25
    assert metadata == (("authorization", "Bearer t"),)


async def test_a_broken_stream_is_reported_and_reopened_with_growing_back_off() -> None:
    recorder = Recorder()
    channel = FakeChannel([[unavailable()], [unavailable()], [unavailable()], [snapshot(7)]])
    await run_until(recorder, 4, a=channel)

    assert recorder.events[:4] == [
        ("lost", "a:1", "UNAVAILABLE: gone"),
        ("lost", "a:1", "UNAVAILABLE: gone"),
        ("lost", "a:1", "UNAVAILABLE: gone"),
        ("snapshot", "a:1", 7),
    ]
    assert recorder.pauses[:3] == [0.1, 0.2, 0.4]


async def test_back_off_resets_after_a_snapshot_and_an_ended_stream_counts_as_lost() -> None:
    recorder = Recorder()
    channel = FakeChannel([[unavailable()], [unavailable()], [snapshot(1)], [snapshot(2)]])
    await run_until(recorder, 6, a=channel)

    assert recorder.events[2:6] == [
        ("snapshot", "a:1", 1),
        ("lost", "a:1", "the cluster stream ended"),
        ("snapshot", "a:1", 2),
        ("lost", "a:1", "the cluster stream ended"),
    ]
    assert recorder.pauses[:4] == [0.1, 0.2, 0.1, 0.1]


async def test_a_callback_bug_ends_the_watch() -> None:
    async def broken(address: str, snap: cluster_pb2.ClusterSnapshot) -> None:
        raise KeyError("bug")

    async def lost(address: str, failure: str) -> None:
        pass

    with pytest.raises(ExceptionGroup) as ended:
        await asyncio.wait_for(
            watch_cluster({"a:1": FakeChannel([[snapshot(1)]])}, broken, lost), 10
        )
    assert ended.group_contains(KeyError)


def test_back_off_must_grow_from_a_positive_pause() -> None:
    with pytest.raises(ValueError, match="back-off"):
        Backoff(initial_s=0.0)
    with pytest.raises(ValueError, match="back-off"):
        Backoff(initial_s=2.0, max_s=1.0)
