"""The open loop over one shared ModelStreamInfer stream (loadgen.SharedStream) against a real
in-process grpc.aio server: requests overlap on the stream and each is matched to its answer by
id whatever order the answers come in; a failed answer, an answer for no request and a stream
that fails are each counted as such; and an open loop with a grace period stops waiting for
requests that are never answered."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from tideserve import serving
from tideserve.v1 import inference_pb2 as pb
from tideserve.v1 import inference_pb2_grpc
from tideserve_tools.loadgen import (
    OK,
    LoadResult,
    RequestFailed,
    SharedStream,
    drive_open_loop,
)

# The stream model answers requests in pairs, the second of a pair first.
PAIR = 2


class PairwiseStream(inference_pb2_grpc.GRPCInferenceServiceServicer):
    """Answers a stream's requests two at a time in reverse order, so a driver that matched by
    order would give each request its neighbour's answer. A request whose first input is named
    "fail" gets an error message, as does one named "odd" with an odd id; one named "stray" gets
    an answer under an id nobody sent; one named "abort" ends the stream with UNAVAILABLE."""

    async def ModelStreamInfer(self, request_iterator, context):  # noqa: N802
        held: list[pb.ModelInferRequest] = []
        async for request in request_iterator:
            name = request.inputs[0].name if request.inputs else ""
            if name == "abort":
                await context.abort(grpc.StatusCode.UNAVAILABLE, "stream gone")
            held.append(request)
            if len(held) < PAIR:
                continue
            for waiting in reversed(held):
                kind = waiting.inputs[0].name if waiting.inputs else ""
                answer = pb.ModelStreamInferResponse(
                    infer_response=pb.ModelInferResponse(
                        id="no-such-request" if kind == "stray" else waiting.id
                    ),
                    error_message="failed"
                    if kind == "fail" or (kind == "odd" and int(waiting.id) % 2)
                    else "",
                )
                yield answer
            held.clear()


@pytest.fixture
async def stub() -> AsyncIterator[inference_pb2_grpc.GRPCInferenceServiceStub]:
    server = serving.new_server()
    inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(PairwiseStream(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with serving.channel(f"127.0.0.1:{port}") as channel:
        yield inference_pb2_grpc.GRPCInferenceServiceStub(channel)
    await server.stop(None)


def request(kind: str = "x") -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="m")
    message.inputs.add(name=kind, datatype="FP32", shape=[1, 1])
    return message


async def test_overlapping_requests_are_matched_to_their_answers_by_id(stub) -> None:
    result = LoadResult()
    async with SharedStream(stub, request()) as shared:
        # Four arrivals at once: each pair is answered only once both are on the stream.
        await asyncio.wait_for(drive_open_loop(shared.send, [0.0] * 4, result), timeout=10)
    assert result.codes() == {OK: 4}
    assert shared.unmatched == 0

    # The first of a pair fails and is answered second: matched by order, the first request
    # would get the second's success and the second the first's failure.
    async with SharedStream(stub, request("odd")) as shared:
        outcomes = await asyncio.wait_for(
            asyncio.gather(shared.send(), shared.send(), return_exceptions=True), timeout=10
        )
    assert isinstance(outcomes[0], RequestFailed)
    assert outcomes[1] is None


async def test_a_failed_answer_and_a_stray_one_are_counted_as_such(stub) -> None:
    async with SharedStream(stub, request("fail")) as failing:
        outcomes = await asyncio.wait_for(
            asyncio.gather(failing.send(), failing.send(), return_exceptions=True), timeout=10
        )
    assert [o.code for o in outcomes if isinstance(o, RequestFailed)] == ["STREAM_ERROR"] * 2

    result = LoadResult()
    async with SharedStream(stub, request("stray")) as stray:
        await asyncio.wait_for(
            drive_open_loop(stray.send, [0.0, 0.0], result, grace_s=0.2), timeout=10
        )
    assert stray.unmatched == 2
    assert result.unfinished == 2, "requests whose answer never came are not waited for"
    assert result.sent == 0


async def test_a_failed_stream_fails_its_waiting_and_later_requests(stub) -> None:
    result = LoadResult()
    async with SharedStream(stub, request("abort")) as shared:
        await asyncio.wait_for(drive_open_loop(shared.send, [0.0, 0.05], result), timeout=10)
    assert result.codes() == {"UNAVAILABLE": 2}


async def test_an_open_loop_with_a_grace_period_ends_without_its_unanswered_requests() -> None:
    never = asyncio.Event()

    async def send() -> None:
        await never.wait()

    result = LoadResult()
    await asyncio.wait_for(drive_open_loop(send, [0.0, 0.01, 0.02], result, grace_s=0.1), 5)
    assert result.unfinished == 3
    assert result.sent == 0
