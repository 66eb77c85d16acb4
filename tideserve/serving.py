"""Server and channel plumbing shared by every service: options, health, reflection, error
mapping and graceful shutdown. Services build their servicers and hand them to these helpers."""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tideserve.errors import TideserveError
from tideserve.grpc_options import CHANNEL_OPTIONS, SERVER_OPTIONS

logger = logging.getLogger(__name__)

T = TypeVar("T")


def new_server() -> grpc.aio.Server:
    return grpc.aio.server(options=SERVER_OPTIONS)


def insecure_channel(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)


async def add_health_and_reflection(
    server: grpc.aio.Server, service_names: Iterable[str], *, serving: bool = True
) -> health.aio.HealthServicer:
    """Register grpc.health.v1 and server reflection for `service_names` (plus the overall "").

    Health starts SERVING unless `serving` is False (a worker stays NOT_SERVING until its models
    are loaded).
    """
    names = list(service_names)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for name in ["", *names]:
        await health_servicer.set(name, status)
    return health_servicer


async def set_serving(health_servicer: health.aio.HealthServicer, names: Iterable[str]) -> None:
    for name in ["", *names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)


def status_code(error: TideserveError) -> grpc.StatusCode:
    return grpc.StatusCode[error.code]


def rpc_errors(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Map domain errors raised by a unary aio handler to gRPC statuses; anything else becomes
    INTERNAL with a generic message (the detail goes to the log, not to the client)."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> T:
        try:
            return await method(self, request, context)
        except TideserveError as error:
            await context.abort(status_code(error), str(error))
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception:
            logger.exception("unhandled error in %s", method.__qualname__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server log")
        raise AssertionError("unreachable: context.abort raises")

    return wrapper


async def serve_until_signal(
    server: grpc.aio.Server,
    health_servicer: health.aio.HealthServicer,
    *,
    grace_seconds: float,
    on_stop: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Run a started server until SIGINT/SIGTERM, then shut down gracefully: report NOT_SERVING,
    let in-flight calls finish for `grace_seconds`, then run `on_stop` (close channels, release
    devices or runtimes)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logger.info("shutting down", extra={"grace_seconds": grace_seconds})
    await health_servicer.enter_graceful_shutdown()
    await server.stop(grace_seconds)
    if on_stop is not None:
        await on_stop()


# Codes a caller may retry elsewhere: the peer did not (or could not) answer.
RETRYABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
    }
)


def error_from_status(code: grpc.StatusCode, details: str | None) -> TideserveError:
    """The domain error for a status a downstream service answered with, so it can be passed on."""
    for cls in _error_classes():
        if cls.code == code.name:
            return cls(details or code.name)
    return TideserveError(details or code.name)


def _error_classes() -> list[type[TideserveError]]:
    pending, found = [TideserveError], []
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found
