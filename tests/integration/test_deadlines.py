"""Deadlines travel with requests: one that expires while queued is never computed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import pytest

from harness.cluster import Cluster
from tests.accounting import record
from tideserve.v1 import inference_pb2 as pb
from tideserve.v1 import inference_pb2_grpc

pytestmark = pytest.mark.integration


def request(request_id: str) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="tiny_cnn", id=request_id)
    message.inputs.add(name="INPUT__0", datatype="FP32", shape=[1, 1, 28, 28])
    message.raw_input_contents.append(np.zeros([1, 1, 28, 28], np.float32).tobytes())
    return message


def test_request_expiring_in_the_queue_never_reaches_a_worker(
    model_repository: Path, tmp_path: Path
) -> None:
    # One slow worker (each batch takes a second or more, well over the 0.1 s deadlines below):
    # two batches fill the batcher's two dispatch slots, so a third request waits in the
    # batcher's queue. Not slower: the worker runs the two batches one after the other, and on
    # a loaded machine 3000x the model's time took the second past its own 30 s timeout.
    # The balancer's per-batch timeout floor is raised so that these deliberately slow batches
    # are not taken for a hung worker.
    cluster = Cluster(
        model_repository, tmp_path, worker_args=("--slowdown", "500"),
        balancer_args=("--batch-timeout-floor-s", "20"),
    )
    cluster.start(workers=1)
    try:
        rows_before = cluster.snapshot().dispatched_rows

        async def run() -> tuple[list, grpc.StatusCode, list]:
            async with grpc.aio.insecure_channel(cluster.batcher) as channel:
                stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
                slow = [
                    asyncio.ensure_future(stub.ModelInfer(request(f"s{i}"), timeout=60))
                    for i in range(2)
                ]
                await asyncio.sleep(0.05)
                # Over a stream, with Triton's per-request `timeout` (microseconds) ...
                stream_request = request("stream-expiring")
                stream_request.parameters["timeout"].uint64_param = 100_000
                stream = stub.ModelStreamInfer(iter([stream_request]), timeout=30)
                # ... and unary, with a gRPC deadline.
                try:
                    await stub.ModelInfer(request("expiring"), timeout=0.1)
                    expired_code = grpc.StatusCode.OK
                except grpc.aio.AioRpcError as error:
                    expired_code = error.code()
                stream_answers = [r async for r in stream]
                return await asyncio.gather(*slow), expired_code, stream_answers

        answers, expired_code, stream_answers = asyncio.run(run())
        # Sent: the two slow requests, the unary one and the one on the stream.
        stream_errors = sum(bool(answer.error_message) for answer in stream_answers)
        record("request expiring in the batcher queue (unary deadline, stream timeout)",
               cases=2, sent=4, answered=len(answers) + 1 + len(stream_answers),
               errors={expired_code.name: 1, "STREAM_ERROR": stream_errors})
        assert [a.id for a in answers] == ["s0", "s1"]
        assert expired_code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert len(stream_answers) == 1
        assert "timed out in the queue" in stream_answers[0].error_message
        # Only the two slow requests' rows ever went to a worker.
        assert cluster.snapshot().dispatched_rows - rows_before == 2
    finally:
        cluster.stop()
