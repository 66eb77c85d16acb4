"""The batcher hands large batches to workers through shared memory when every worker of the
model shares its /dev/shm, and falls back to inline bytes when a worker refuses them. A large
batch is copied into its segment on a copier thread, and its segment waits for that copy even
when the batch is cancelled."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from services.batcher.client_memory import ClientRegions
from services.batcher.core import BatcherCore, SharedInputs
from tests.unit.batcher.test_batcher_core import (
    MODEL,
    WIDTH,
    EchoDispatcher,
    catalog_with,
    gather,
    infer_request,
    model_config,
    output,
    rows_of,
    settle,
)
from tideserve import shared_memory
from tideserve.errors import FailedPrecondition
from tideserve.v1 import cluster_pb2
from tideserve.v1 import inference_pb2 as pb

DOMAIN = "boot:1"


class SharedEchoDispatcher(EchoDispatcher):
    """Reads shared inputs as a worker would, then echoes like EchoDispatcher. With
    `refuse_shared`, a batch referencing shared memory is refused as by a worker that does not
    see our /dev/shm."""

    def __init__(self, shm_dir: Path) -> None:
        super().__init__()
        self.reader = shared_memory.SegmentReader(shm_dir)
        self.refuse_shared = False
        self.sent: list[cluster_pb2.Batch] = []
        # The bytes each shared input held when the batch was dispatched.
        self.shared_bytes: list[bytes] = []

    async def dispatch(
        self, model: str, rows: int, payload: bytes, timeout: float | None, batch_id: str = ""
    ) -> bytes:
        self.sent.append(cluster_pb2.Batch.FromString(payload))
        batch = cluster_pb2.Batch.FromString(payload)
        for tensor in batch.inputs:
            if tensor.HasField("shared"):
                if self.refuse_shared:
                    raise FailedPrecondition("segment not visible here")
                tensor.raw = bytes(self.reader.view(tensor.shared))
                self.shared_bytes.append(tensor.raw)
                tensor.ClearField("shared")
        return await super().dispatch(model, rows, batch.SerializeToString(), timeout, batch_id)


@pytest.fixture
def shm_dir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def dispatcher(shm_dir: Path) -> SharedEchoDispatcher:
    return SharedEchoDispatcher(shm_dir)


@pytest.fixture
def core_for(shm_dir: Path, dispatcher: SharedEchoDispatcher) -> Iterator:
    made: list[BatcherCore] = []

    def start(
        worker_domains: frozenset[str],
        min_bytes: int = 1,
        pool: shared_memory.SegmentPool | None = None,
        thread_bytes: int = 0,
        copiers: ThreadPoolExecutor | None = None,
    ) -> BatcherCore:
        catalog = catalog_with(model_config(max_batch_size=6, delay_us=10_000_000))
        catalog.shared_memory_domains = {MODEL: worker_domains}
        shared = SharedInputs(
            catalog,
            min_bytes,
            DOMAIN,
            pool or shared_memory.SegmentPool(shm_dir),
            thread_bytes,
            copiers,
        )
        made.append(BatcherCore(catalog, dispatcher, shared=shared))
        return made[-1]

    yield start
    for core in made:
        core.close()


async def submit_three(core: BatcherCore) -> list[object]:
    sizes = [1, 3, 2]
    responses = await gather(
        [core.submit(infer_request(i, rows), deadline=None) for i, rows in enumerate(sizes)]
    )
    for index, (rows, response) in enumerate(zip(sizes, responses, strict=True)):
        assert isinstance(response, pb.ModelInferResponse)
        np.testing.assert_array_equal(output(response, "y"), rows_of(index, rows))
        np.testing.assert_array_equal(output(response, "z"), rows_of(index, rows) + 100)
    return responses


async def test_batch_goes_through_shared_memory_when_every_worker_shares_it(
    core_for, dispatcher: SharedEchoDispatcher, shm_dir: Path
) -> None:
    core = core_for(frozenset({DOMAIN}))

    await submit_three(core)

    (sent,) = dispatcher.sent
    (tensor,) = sent.inputs
    assert tensor.HasField("shared")
    assert tensor.raw == b""
    assert tensor.shared.size == 6 * WIDTH * 4
    assert list(tensor.shape) == [6, WIDTH]
    # The segment is back in the pool for the next batch, not a new file per batch.
    await submit_three(core)
    assert len(list(shm_dir.iterdir())) == 1


@pytest.mark.parametrize(
    ("worker_domains", "min_bytes"),
    [
        (frozenset({DOMAIN, ""}), 1),  # one worker without shared memory
        (frozenset({"boot:2"}), 1),  # workers on another host or in another IPC namespace
        (frozenset({DOMAIN}), 10_000),  # a batch too small to gain
    ],
)
async def test_batch_stays_inline_otherwise(
    core_for, dispatcher: SharedEchoDispatcher, worker_domains: frozenset[str], min_bytes: int
) -> None:
    core = core_for(worker_domains, min_bytes)

    await submit_three(core)

    (sent,) = dispatcher.sent
    assert not sent.inputs[0].HasField("shared")
    assert len(sent.inputs[0].raw) == 6 * WIDTH * 4


async def test_worker_refusing_shared_memory_gets_the_batch_inline(
    core_for, dispatcher: SharedEchoDispatcher
) -> None:
    core = core_for(frozenset({DOMAIN}))
    dispatcher.refuse_shared = True

    await submit_three(core)
    await settle()

    first, second = dispatcher.sent
    assert first.inputs[0].HasField("shared")
    assert not second.inputs[0].HasField("shared")
    assert len(second.inputs[0].raw) == 6 * WIDTH * 4


class FullPool(shared_memory.SegmentPool):
    """A /dev/shm with no room left: creating a segment fails as posix_fallocate does."""

    def _create(self, nbytes: int) -> shared_memory.Segment:
        raise OSError(28, "No space left on device")


async def test_full_dev_shm_sends_the_batch_inline(
    core_for, shm_dir: Path, dispatcher: SharedEchoDispatcher
) -> None:
    await submit_three(core_for(frozenset({DOMAIN}), pool=FullPool(shm_dir)))

    (sent,) = dispatcher.sent
    assert not sent.inputs[0].HasField("shared")
    assert list(shm_dir.iterdir()) == []


class Copiers(ThreadPoolExecutor):
    """The copier thread, telling which threads ran copies; while `gate` is cleared, a copy
    waits before it begins to write (a copy still under way)."""

    def __init__(self) -> None:
        super().__init__(1)
        self.threads: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self.finished = threading.Event()

    def submit(self, fn: Callable, /, *args: object, **kwargs: object) -> Future:
        def copy() -> object:
            self.threads.append(threading.get_ident())
            self.started.set()
            self.gate.wait(timeout=10)
            try:
                return fn(*args, **kwargs)
            finally:
                self.finished.set()

        return super().submit(copy)


class WatchedPool(shared_memory.SegmentPool):
    """Records, at each release, whether the copy into the segment had finished."""

    def __init__(self, shm_dir: Path, copiers: Copiers) -> None:
        super().__init__(shm_dir)
        self.copiers = copiers
        self.released: list[bool] = []

    def release(self, segment: shared_memory.Segment) -> None:
        self.released.append(self.copiers.finished.is_set())
        super().release(segment)


BATCH_BYTES = 6 * WIDTH * 4


@pytest.mark.parametrize(
    ("thread_bytes", "on_thread"),
    [
        (BATCH_BYTES, True),  # a batch as large as the threshold
        (BATCH_BYTES + 1, False),  # a smaller one: the hand-off would cost more than the copy
        (0, False),  # copies on a thread turned off
    ],
)
async def test_a_large_batch_is_copied_on_a_thread_into_the_same_bytes(
    core_for, dispatcher: SharedEchoDispatcher, thread_bytes: int, on_thread: bool
) -> None:
    copiers = Copiers()
    core = core_for(frozenset({DOMAIN}), thread_bytes=thread_bytes, copiers=copiers)

    await submit_three(core)

    assert bool(copiers.threads) is on_thread
    assert threading.get_ident() not in copiers.threads
    (sent,) = dispatcher.sent
    (copied,) = dispatcher.shared_bytes
    expected = b"".join(rows_of(i, rows).tobytes() for i, rows in enumerate([1, 3, 2]))
    assert copied == expected
    assert sent.inputs[0].shared.size == BATCH_BYTES


async def test_a_batch_cancelled_mid_copy_keeps_its_segment_until_the_copy_ends(
    core_for, dispatcher: SharedEchoDispatcher, shm_dir: Path
) -> None:
    copiers = Copiers()
    copiers.gate.clear()
    pool = WatchedPool(shm_dir, copiers)
    core = core_for(frozenset({DOMAIN}), pool=pool, thread_bytes=1, copiers=copiers)
    for index, rows in enumerate([1, 3, 2]):
        core.submit(infer_request(index, rows), deadline=None)
    assert await asyncio.to_thread(copiers.started.wait, 5)
    (scheduler,) = core.schedulers.values()
    (batch,) = scheduler._batches

    batch.cancel()
    await settle()
    batch.cancel()  # a second cancellation does not cut the wait short either
    await settle()

    assert pool.released == [], "the thread may still write into the segment"
    assert not batch.done()
    copiers.gate.set()
    await asyncio.wait_for(asyncio.wait([batch]), 5)
    assert batch.cancelled()
    assert pool.released == [True], "released once the copy had finished"
    assert dispatcher.sent == []


async def test_a_region_cut_short_fails_its_request_alone_when_copied_on_a_thread(
    core_for, dispatcher: SharedEchoDispatcher, shm_dir: Path
) -> None:
    copiers = Copiers()
    core = core_for(frozenset({DOMAIN}), thread_bytes=1, copiers=copiers)
    regions = ClientRegions(shm_dir)
    cut = infer_request(1, rows=3)
    size = len(cut.raw_input_contents[0])
    (shm_dir / "client").write_bytes(cut.raw_input_contents[0])
    regions.register("r", "/client", 0, size)
    held = regions.slice("r", 0, size)
    os.truncate(shm_dir / "client", 4)

    first, failed, last = await gather(
        [
            core.submit(infer_request(0, 1), deadline=None),
            core.submit(cut, deadline=None, raw_inputs=[held]),
            core.submit(infer_request(2, 2), deadline=None),
        ]
    )
    regions.close()

    assert copiers.threads, "copied on the thread"
    assert isinstance(failed, FailedPrecondition)
    assert "truncated" in str(failed)
    np.testing.assert_array_equal(output(first, "y"), rows_of(0, 1))
    np.testing.assert_array_equal(output(last, "y"), rows_of(2, 2))
    (copied,) = dispatcher.shared_bytes
    sent = np.frombuffer(copied, dtype="<f4").reshape(6, WIDTH)
    np.testing.assert_array_equal(sent[1:4], np.zeros((3, WIDTH)), "its rows travel as zeros")


def test_a_negative_thread_threshold_is_refused(shm_dir: Path) -> None:
    with pytest.raises(ValueError, match="thread_bytes must be >= 0"):
        SharedInputs(catalog_with(model_config()), 1, DOMAIN, None, -1)
