"""Benchmarks measure the server in a window shared by all client processes: requests that
complete during the clients' start-up and warm-up, or after the window, are not counted; and a
run of repeats reports its median run with the spread beside it."""

from __future__ import annotations

import asyncio
import time

import pytest

from harness.repeats import summarize
from tideserve import serving
from tideserve.v1 import inference_pb2 as pb
from tideserve.v1 import inference_pb2_grpc
from tideserve_tools.loadgen import Window, closed_loop

SERVICE_S = 0.01


class PacedModel(inference_pb2_grpc.GRPCInferenceServiceServicer):
    """Answers each inference after SERVICE_S, recording when it answered."""

    def __init__(self) -> None:
        self.answered: list[float] = []

    async def ModelMetadata(self, request, context):  # noqa: N802
        metadata = pb.ModelMetadataResponse(name=request.name)
        metadata.inputs.add(name="INPUT__0", datatype="FP32", shape=[-1, 4])
        return metadata

    async def ModelInfer(self, request, context):  # noqa: N802
        await asyncio.sleep(SERVICE_S)
        self.answered.append(time.time())
        return pb.ModelInferResponse(model_name=request.model_name)


@pytest.fixture
async def paced_server():
    server = serving.new_server()
    model = PacedModel()
    inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(model, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}", model
    await server.stop(None)


async def test_only_requests_completing_inside_the_window_count(paced_server) -> None:
    address, model = paced_server
    start = time.time() + 0.4
    window = Window(start, start + 0.6)

    result = await closed_loop(address, "m", concurrency=4, seconds=0, window=window)

    inside = [t for t in model.answered if window.start <= t <= window.end]
    before = [t for t in model.answered if t < window.start]
    assert before, "the clients warmed up before the window"
    # The server's and the client's view of a completion differ by one loopback hop at most.
    assert abs(result.ok - len(inside)) <= 4
    assert result.ok < len(model.answered)
    assert result.seconds == pytest.approx(0.6)
    assert result.sent == result.ok
    assert not result.errors


async def test_without_a_window_every_request_counts(paced_server) -> None:
    address, model = paced_server

    result = await closed_loop(address, "m", concurrency=4, seconds=0.3)

    assert result.ok == len(model.answered) > 0


def test_summarize_reports_the_median_repeat_with_its_spread() -> None:
    def run(rate: float, p99: float, bound: bool = False) -> dict:
        return {
            "samples_per_s": rate,
            "rows_per_request": 64,
            "p99_ms": p99,
            "client_bound": bound,
        }

    summary = summarize([run(6400.0, 9.0), run(5120.0, 12.0, bound=True), run(7040.0, 8.0)])

    assert summary["samples_per_s"] == 6400.0
    assert summary["p99_ms"] == 9.0
    assert (summary["samples_per_s_min"], summary["samples_per_s_max"]) == (5120.0, 7040.0)
    assert summary["throughput"] == 100.0
    assert summary["client_bound"] is True
