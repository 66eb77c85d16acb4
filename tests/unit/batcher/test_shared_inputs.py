"""The batcher hands large batches to workers through shared memory when every worker of the
model shares its /dev/shm, and falls back to inline bytes when a worker refuses them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

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
    ) -> BatcherCore:
        catalog = catalog_with(model_config(max_batch_size=6, delay_us=10_000_000))
        catalog.shared_memory_domains = {MODEL: worker_domains}
        shared = SharedInputs(
            catalog, min_bytes, DOMAIN, pool or shared_memory.SegmentPool(shm_dir)
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
