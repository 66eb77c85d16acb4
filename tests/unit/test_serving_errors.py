"""The one place domain errors become gRPC statuses: each branch of the `ErrorMapping` server
interceptor for each call shape, the reason trailer of the failures that share a code, and the way
back (`error_from_status`) for statuses a downstream service answered with."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from tideserve import errors
from tideserve.metadata import REASON_KEY
from tideserve.serving import INTERNAL_MESSAGE, ErrorMapping, error_from_status, status_code

DOMAIN_ERRORS = [
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.TideserveError, grpc.StatusCode.INTERNAL),
]

# Failures that share a status code, told apart by their reason trailer.
REASONED_ERRORS = [
    (errors.BatchLost, grpc.StatusCode.UNAVAILABLE, "worker-lost"),
    (errors.NoReadyWorker, grpc.StatusCode.UNAVAILABLE, "no-ready-worker"),
    (errors.BalancerUnreachable, grpc.StatusCode.UNAVAILABLE, "balancer-unreachable"),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED, "deadline"),
    (errors.VersionNotServed, grpc.StatusCode.NOT_FOUND, "version-not-served"),
]


class FakeContext:
    """What a grpc.aio ServicerContext does on abort: remember the status and raise."""

    def __init__(self) -> None:
        self.aborted: tuple[grpc.StatusCode, str] | None = None
        self.trailers: tuple[tuple[str, str], ...] = ()

    def set_trailing_metadata(self, trailers: tuple[tuple[str, str], ...]) -> None:
        self.trailers = trailers

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise grpc.aio.AbortError()


class Details:
    method = "/test.Service/Call"


async def intercepted(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    async def continuation(details: object) -> grpc.RpcMethodHandler:
        return handler

    return await ErrorMapping().intercept_service(continuation, Details())


def raising(error: BaseException | None, answers: int = 0) -> Callable[..., Any]:
    """A server-streaming handler: `answers` responses, then `error` (if any) mid-stream."""

    async def stream(request: Any, context: FakeContext) -> AsyncIterator[str]:
        for index in range(answers):
            yield f"answer {index}"
        if error is not None:
            raise error

    return stream


async def unary_unary(error: BaseException | None) -> tuple[FakeContext, list[str]]:
    async def call(request: str, context: FakeContext) -> str:
        if error is not None:
            raise error
        return f"answer to {request}"

    handler = await intercepted(grpc.unary_unary_rpc_method_handler(call))
    context = FakeContext()
    try:
        return context, [await handler.unary_unary("q", context)]
    except grpc.aio.AbortError:
        return context, []


async def stream_unary(error: BaseException | None) -> tuple[FakeContext, list[str]]:
    async def call(requests: AsyncIterator[str], context: FakeContext) -> str:
        read = [r async for r in requests]
        if error is not None:
            raise error
        return f"answer to {read}"

    async def requests() -> AsyncIterator[str]:
        yield "q"

    handler = await intercepted(grpc.stream_unary_rpc_method_handler(call))
    context = FakeContext()
    try:
        return context, [await handler.stream_unary(requests(), context)]
    except grpc.aio.AbortError:
        return context, []


async def unary_stream(error: BaseException | None) -> tuple[FakeContext, list[str]]:
    handler = await intercepted(grpc.unary_stream_rpc_method_handler(raising(error, 2)))
    context, answers = FakeContext(), []
    with contextlib.suppress(grpc.aio.AbortError):
        async for answer in handler.unary_stream("q", context):
            answers.append(answer)
    return context, answers


async def stream_stream(error: BaseException | None) -> tuple[FakeContext, list[str]]:
    async def call(requests: AsyncIterator[str], context: FakeContext) -> AsyncIterator[str]:
        async for request in requests:
            yield f"answer to {request}"
        if error is not None:
            raise error

    async def requests() -> AsyncIterator[str]:
        yield "a"
        yield "b"

    handler = await intercepted(grpc.stream_stream_rpc_method_handler(call))
    context, answers = FakeContext(), []
    with contextlib.suppress(grpc.aio.AbortError):
        async for answer in handler.stream_stream(requests(), context):
            answers.append(answer)
    return context, answers


SHAPES = [unary_unary, stream_unary, unary_stream, stream_stream]
# What each shape answers before failing, or in full without an error.
ANSWERED = {
    unary_unary: ["answer to q"],
    stream_unary: ["answer to ['q']"],
    unary_stream: ["answer 0", "answer 1"],
    stream_stream: ["answer to a", "answer to b"],
}


@pytest.mark.parametrize("shape", SHAPES)
async def test_success_passes_through(shape: Callable[..., Any]) -> None:
    context, answers = await shape(None)

    assert answers == ANSWERED[shape]
    assert context.aborted is None


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("cls", "code"), DOMAIN_ERRORS)
async def test_domain_error_aborts_with_its_code_and_message(
    shape: Callable[..., Any], cls: type[errors.TideserveError], code: grpc.StatusCode
) -> None:
    context, _ = await shape(cls("what went wrong"))

    assert context.aborted == (code, "what went wrong")


async def test_a_stream_keeps_what_it_sent_before_the_error() -> None:
    context, answers = await stream_stream(errors.NoReadyWorker("gone"))

    assert answers == ["answer to a", "answer to b"]
    assert context.aborted == (grpc.StatusCode.UNAVAILABLE, "gone")
    assert context.trailers == ((REASON_KEY, "no-ready-worker"),)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("cls", "code", "reason"), REASONED_ERRORS)
async def test_reasoned_error_sends_its_reason_as_a_trailer(
    shape: Callable[..., Any], cls: type[errors.TideserveError], code: grpc.StatusCode, reason: str
) -> None:
    context, _ = await shape(cls("what went wrong"))

    assert context.aborted == (code, "what went wrong")
    assert context.trailers == ((REASON_KEY, reason),)


async def test_error_without_a_reason_sends_no_trailer() -> None:
    context, _ = await unary_unary(errors.Unavailable("draining"))

    assert context.aborted == (grpc.StatusCode.UNAVAILABLE, "draining")
    assert context.trailers == ()


@pytest.mark.parametrize("shape", SHAPES)
async def test_unexpected_error_becomes_generic_internal(
    shape: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="tideserve.serving"):
        context, _ = await shape(KeyError("secret detail"))

    assert context.aborted == (grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
    assert "secret detail" not in INTERNAL_MESSAGE
    assert "secret detail" in caplog.text
    assert "/test.Service/Call" in caplog.text


@pytest.mark.parametrize("shape", SHAPES)
async def test_cancellation_is_not_swallowed(shape: Callable[..., Any]) -> None:
    with pytest.raises(asyncio.CancelledError):
        await shape(asyncio.CancelledError())


@pytest.mark.parametrize("shape", [unary_unary, stream_unary])
async def test_abort_from_the_handler_itself_is_not_rewritten(shape: Callable[..., Any]) -> None:
    async def call(request: Any, context: FakeContext) -> str:
        await context.abort(grpc.StatusCode.ABORTED, "by hand")
        return ""

    make = (
        grpc.unary_unary_rpc_method_handler
        if shape is unary_unary
        else grpc.stream_unary_rpc_method_handler
    )
    handler = await intercepted(make(call))
    context = FakeContext()
    with pytest.raises(grpc.aio.AbortError):
        await (handler.unary_unary or handler.stream_unary)("q", context)
    assert context.aborted == (grpc.StatusCode.ABORTED, "by hand")


async def test_a_stream_written_with_context_write_is_awaited() -> None:
    written: list[str] = []

    async def call(request: str, context: FakeContext) -> None:
        written.append(request)
        raise errors.NotFound("no such thing")

    handler = await intercepted(grpc.unary_stream_rpc_method_handler(call))
    context = FakeContext()
    with pytest.raises(grpc.aio.AbortError):
        async for _ in handler.unary_stream("q", context):
            pass
    assert written == ["q"]
    assert context.aborted == (grpc.StatusCode.NOT_FOUND, "no such thing")


async def test_a_stream_the_caller_leaves_is_closed_at_once() -> None:
    closed = asyncio.Event()

    async def call(request: str, context: FakeContext) -> AsyncIterator[str]:
        try:
            while True:
                yield "more"
        finally:
            closed.set()

    handler = await intercepted(grpc.unary_stream_rpc_method_handler(call))
    responses = handler.unary_stream("q", FakeContext())
    assert await anext(responses) == "more"
    await responses.aclose()
    assert closed.is_set()


async def test_no_handler_stays_none() -> None:
    async def continuation(details: object) -> None:
        return None

    assert await ErrorMapping().intercept_service(continuation, Details()) is None


@pytest.mark.parametrize(("cls", "code"), DOMAIN_ERRORS)
def test_status_code_of_each_domain_error(
    cls: type[errors.TideserveError], code: grpc.StatusCode
) -> None:
    assert status_code(cls("x")) == code


@pytest.mark.parametrize(("cls", "code"), DOMAIN_ERRORS)
def test_error_from_status_round_trips(
    cls: type[errors.TideserveError], code: grpc.StatusCode
) -> None:
    error = error_from_status(code, "detail")

    assert type(error) is cls
    assert str(error) == "detail"


@pytest.mark.parametrize(("cls", "code", "reason"), REASONED_ERRORS)
def test_error_from_status_with_a_reason_gives_its_class(
    cls: type[errors.TideserveError], code: grpc.StatusCode, reason: str
) -> None:
    error = error_from_status(code, "detail", reason)

    assert type(error) is cls
    assert error.reason == reason
    assert str(error) == "detail"


def test_unknown_reason_falls_back_to_the_plain_class_of_the_code() -> None:
    error = error_from_status(grpc.StatusCode.UNAVAILABLE, "detail", "from-a-newer-version")

    assert type(error) is errors.Unavailable
    assert error.reason == ""


def test_reason_of_another_code_is_not_taken() -> None:
    error = error_from_status(grpc.StatusCode.NOT_FOUND, "detail", "worker-lost")

    assert type(error) is errors.NotFound


def test_error_from_status_without_details_uses_the_code_name() -> None:
    assert str(error_from_status(grpc.StatusCode.NOT_FOUND, None)) == "NOT_FOUND"


def test_unmapped_status_becomes_internal_domain_error() -> None:
    error = error_from_status(grpc.StatusCode.DATA_LOSS, "lost")

    assert type(error) is errors.TideserveError
    assert status_code(error) == grpc.StatusCode.INTERNAL


@pytest.mark.parametrize(("cls", "code"), DOMAIN_ERRORS)
def test_error_carried_in_a_message_comes_back_as_the_same_class(
    cls: type[errors.TideserveError], code: grpc.StatusCode
) -> None:
    # A worker's failure inside a BatchResult (code name and message) maps as a status does,
    # a deadline included, whose only class has a reason.
    error = errors.error_for_code(code.name, "detail")

    assert type(error) is cls
    assert str(error) == "detail"


async def test_each_method_is_wrapped_once_and_still_maps_every_call() -> None:
    asked = 0

    async def call(request: str, context: FakeContext) -> str:
        raise errors.NotFound(request)

    async def continuation(details: object) -> grpc.RpcMethodHandler:
        nonlocal asked
        asked += 1
        return grpc.unary_unary_rpc_method_handler(call)

    mapping = ErrorMapping()
    for request in ("first", "second"):
        handler = await mapping.intercept_service(continuation, Details())
        context = FakeContext()
        with pytest.raises(grpc.aio.AbortError):
            await handler.unary_unary(request, context)
        assert context.aborted == (grpc.StatusCode.NOT_FOUND, request)
    assert asked == 1
