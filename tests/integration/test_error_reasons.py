"""Error reasons over a real grpc.aio server on loopback: `rpc_errors` sends each domain error's
status, message and reason trailer, and `error_from_rpc` on the calling side gives back the same
domain error, so callers act on the reason rather than on the message text."""

from __future__ import annotations

import grpc
import pytest

from tideserve import errors, serving
from tideserve.metadata import REASON_KEY

pytestmark = pytest.mark.integration

METHOD = "/test.Errors/Fail"
RAISED: list[type[errors.TideserveError]] = [
    errors.BatchLost,
    errors.NoReadyWorker,
    errors.BalancerUnreachable,
    errors.DeadlineExceeded,
    errors.Unavailable,
    errors.InvalidArgument,
]


class Failing:
    """Raises the error class named by the request bytes."""

    @serving.rpc_errors
    async def Fail(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:  # noqa: N802
        by_name = {cls.__name__: cls for cls in RAISED}
        raise by_name[request.decode()](f"{request.decode()} happened")


@pytest.mark.parametrize("cls", RAISED)
async def test_a_domain_error_crosses_the_wire_and_comes_back_as_itself(
    cls: type[errors.TideserveError],
) -> None:
    server = serving.new_server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Errors", {"Fail": grpc.unary_unary_rpc_method_handler(Failing().Fail)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with serving.channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await channel.unary_unary(METHOD)(cls.__name__.encode(), timeout=10)
    finally:
        await server.stop(None)

    error = failed.value
    assert error.code() == grpc.StatusCode[cls.code]
    assert error.details() == f"{cls.__name__} happened"
    trailers = dict(error.trailing_metadata() or ())
    assert trailers.get(REASON_KEY, "") == cls.reason
    back = serving.error_from_rpc(error)
    assert type(back) is cls
    assert back.reason == cls.reason
    assert str(back) == f"{cls.__name__} happened"
