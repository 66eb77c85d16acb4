"""Batch inputs through /dev/shm with real processes: a worker that shares the batcher's
/dev/shm reads them from a segment the batcher owns (copied there on the batcher's copier thread,
as a large batch is); one that opts out gets them inline; the answers are the model's either
way, and the batcher removes its segments when it stops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harness.cluster import Cluster, sync_channel, wait_for
from tests.integration.test_request_path import reference
from tideserve import shared_memory
from tideserve.v1 import inference_pb2 as pb
from tideserve.v1 import inference_pb2_grpc

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not shared_memory.domain(), reason="no writable /dev/shm"),
]

MODEL = "tiny_cnn"
ROWS = 4
REFUSED = "refused shared-memory inputs"


def batcher_segments(cluster: Cluster) -> list[Path]:
    pid = cluster.processes["batcher"].pid
    return sorted(shared_memory.SHM_DIR.glob(f"{shared_memory.PREFIX}{pid}-*"))


def infer(cluster: Cluster, batch: np.ndarray) -> np.ndarray:
    request = pb.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="INPUT__0", datatype="FP32", shape=list(batch.shape))
    request.raw_input_contents.append(batch.tobytes())
    with sync_channel(cluster.batcher) as channel:
        response = inference_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            request, timeout=30
        )
    (tensor,) = response.outputs
    return np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(
        tuple(tensor.shape)
    )


def test_inputs_travel_through_shared_memory_and_inline(
    model_repository: Path, tmp_path: Path
) -> None:
    cluster = Cluster(
        model_repository,
        tmp_path,
        batcher_args=("--shared-memory-min-bytes", "1", "--shared-memory-thread-bytes", "1"),
    ).start(workers=1)
    try:
        (worker,) = cluster.snapshot().workers
        assert worker.shared_memory_domain == shared_memory.domain()
        batch = np.random.default_rng(0).random((ROWS, 1, 28, 28), dtype=np.float32)
        expected = reference(model_repository, MODEL, batch)

        np.testing.assert_allclose(infer(cluster, batch), expected, rtol=1e-5, atol=1e-6)
        assert batcher_segments(cluster), "the batch did not go through shared memory"

        # A second worker that opts out: the model's workers no longer all share /dev/shm, so
        # batches go inline to whichever of the two the balancer picks.
        cluster.add_worker("inline-worker", "--shared-memory", "false")
        cluster.wait_workers(2)
        wait_for(
            lambda: "" in {w.shared_memory_domain for w in cluster.snapshot().workers},
            10,
            "the opted-out worker in the snapshot",
        )

        # Until the batcher's catalog shows the new worker, a batch routed to it is refused and
        # resent inline; answers stay right throughout, and the refusals stop once it catches up.
        def round_without_refusals() -> bool:
            before = cluster.log("batcher").count(REFUSED)
            for _ in range(4):
                np.testing.assert_allclose(infer(cluster, batch), expected, rtol=1e-5, atol=1e-6)
            return cluster.log("batcher").count(REFUSED) == before

        wait_for(round_without_refusals, 20, "batches to go inline without a refusal")
        segments = batcher_segments(cluster)
    finally:
        cluster.stop()
    assert segments
    assert not any(path.exists() for path in segments)
