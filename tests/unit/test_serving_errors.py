"""The one place domain errors become gRPC statuses: each branch of `rpc_errors`, the reason
trailer of the failures that share a code, and the way back (`error_from_status`) for statuses a
downstream service answered with."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest

from tideserve import errors
from tideserve.metadata import REASON_KEY
from tideserve.serving import error_from_status, rpc_errors, status_code

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


class Servicer:
    def __init__(self, error: BaseException | None) -> None:
        self.error = error

    @rpc_errors
    async def Call(self, request: str, context: FakeContext) -> str:  # noqa: N802 - gRPC naming
        if self.error is not None:
            raise self.error
        return f"answer to {request}"


async def call(error: BaseException | None) -> tuple[FakeContext, str | None]:
    context = FakeContext()
    try:
        result = await Servicer(error).Call("q", context)
    except grpc.aio.AbortError:
        return context, None
    return context, result


async def test_success_passes_through() -> None:
    context, result = await call(None)

    assert result == "answer to q"
    assert context.aborted is None


@pytest.mark.parametrize(("cls", "code"), DOMAIN_ERRORS)
async def test_domain_error_aborts_with_its_code_and_message(
    cls: type[errors.TideserveError], code: grpc.StatusCode
) -> None:
    context, result = await call(cls("what went wrong"))

    assert result is None
    assert context.aborted == (code, "what went wrong")


@pytest.mark.parametrize(("cls", "code", "reason"), REASONED_ERRORS)
async def test_reasoned_error_sends_its_reason_as_a_trailer(
    cls: type[errors.TideserveError], code: grpc.StatusCode, reason: str
) -> None:
    context, _ = await call(cls("what went wrong"))

    assert context.aborted == (code, "what went wrong")
    assert context.trailers == ((REASON_KEY, reason),)


async def test_error_without_a_reason_sends_no_trailer() -> None:
    context, _ = await call(errors.Unavailable("draining"))

    assert context.aborted == (grpc.StatusCode.UNAVAILABLE, "draining")
    assert context.trailers == ()


async def test_unexpected_error_becomes_generic_internal(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="tideserve.serving"):
        context, _ = await call(KeyError("secret detail"))

    assert context.aborted is not None
    code, details = context.aborted
    assert code == grpc.StatusCode.INTERNAL
    assert "secret detail" not in details
    assert "secret detail" in caplog.text


async def test_cancellation_is_not_swallowed() -> None:
    context = FakeContext()

    with pytest.raises(asyncio.CancelledError):
        await Servicer(asyncio.CancelledError()).Call("q", context)
    assert context.aborted is None


async def test_abort_from_the_handler_itself_is_not_rewritten() -> None:
    context = FakeContext()

    with pytest.raises(grpc.aio.AbortError):
        await Servicer(grpc.aio.AbortError()).Call("q", context)
    assert context.aborted is None


def test_decorator_keeps_the_method_name() -> None:
    assert Servicer.Call.__name__ == "Call"


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
