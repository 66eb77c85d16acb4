"""Error reasons over a real grpc.aio server on loopback: handlers raise, the server's
`ErrorMapping` interceptor sends each domain error's status, message and reason trailer (from
unary and streaming handlers alike), and `error_from_rpc` on the calling side gives back the same
domain error, so callers act on the reason rather than on the message text."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from tideserve import errors, serving
from tideserve.metadata import REASON_KEY

pytestmark = pytest.mark.integration

RAISED: list[type[errors.TideserveError]] = [
    errors.BatchLost,
    errors.NoReadyWorker,
    errors.BalancerUnreachable,
    errors.DeadlineExceeded,
    errors.Unavailable,
    errors.InvalidArgument,
]


def named(request: bytes) -> errors.TideserveError:
    """The error class named by the request bytes."""
    by_name = {cls.__name__: cls for cls in RAISED}
    return by_name[request.decode()](f"{request.decode()} happened")


async def fail(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    raise named(request)


async def fail_mid_stream(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
) -> AsyncIterator[bytes]:
    async for request in requests:
        yield b"read " + request
        raise named(request)


async def crash(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    raise RuntimeError("a secret detail")


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    server = serving.new_server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Errors",
                {
                    "Fail": grpc.unary_unary_rpc_method_handler(fail),
                    "Stream": grpc.stream_stream_rpc_method_handler(fail_mid_stream),
                    "Crash": grpc.unary_unary_rpc_method_handler(crash),
                },
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with serving.channel(f"127.0.0.1:{port}") as opened:
            yield opened
    finally:
        await server.stop(None)


def assert_comes_back_as(error: grpc.aio.AioRpcError, cls: type[errors.TideserveError]) -> None:
    assert error.code() == grpc.StatusCode[cls.code]
    assert error.details() == f"{cls.__name__} happened"
    trailers = dict(error.trailing_metadata() or ())
    assert trailers.get(REASON_KEY, "") == cls.reason
    back = serving.error_from_rpc(error)
    assert type(back) is cls
    assert back.reason == cls.reason
    assert str(back) == f"{cls.__name__} happened"


@pytest.mark.parametrize("cls", RAISED)
async def test_a_domain_error_crosses_the_wire_and_comes_back_as_itself(
    channel: grpc.aio.Channel, cls: type[errors.TideserveError]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await channel.unary_unary("/test.Errors/Fail")(cls.__name__.encode(), timeout=10)

    assert_comes_back_as(failed.value, cls)


@pytest.mark.parametrize("cls", RAISED)
async def test_an_error_raised_mid_stream_ends_the_stream_with_its_status(
    channel: grpc.aio.Channel, cls: type[errors.TideserveError]
) -> None:
    call = channel.stream_stream("/test.Errors/Stream")(timeout=10)
    await call.write(cls.__name__.encode())
    assert await call.read() == b"read " + cls.__name__.encode()
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await call.read()

    assert_comes_back_as(failed.value, cls)


async def test_an_unexpected_error_is_internal_and_keeps_its_detail_in_the_log(
    channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await channel.unary_unary("/test.Errors/Crash")(b"", timeout=10)

    assert failed.value.code() == grpc.StatusCode.INTERNAL
    assert failed.value.details() == serving.INTERNAL_MESSAGE
    assert "a secret detail" in caplog.text
    assert type(serving.error_from_rpc(failed.value)) is errors.TideserveError
