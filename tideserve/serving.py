"""Server and channel plumbing shared by every service: options, health, reflection, error
mapping and graceful shutdown. Services build their servicers and hand them to these helpers."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import signal
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Protocol

import grpc
import uvloop
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tideserve.credentials import SecretRefused, check_private
from tideserve.errors import TideserveError, error_for_code
from tideserve.grpc_options import CHANNEL_OPTIONS, MAX_CONCURRENT_RPCS, SERVER_OPTIONS
from tideserve.metadata import REASON_KEY

logger = logging.getLogger(__name__)


def run_service(main: Coroutine[Any, Any, None]) -> None:
    """Run a service's main coroutine on uvloop's event loop. Each RPC of a grpc.aio server or
    channel is several event-loop callbacks; uvloop runs the loop in C, and on the 2-core
    machine the whole stack served 10-20% more requests per second with it (docs/performance).

    A secret refused at start (a key or token file others can read) ends the process with the
    refusal alone on stderr, which says which file and how to fix it: there is nothing a
    traceback would add."""
    try:
        uvloop.run(main)
    except SecretRefused as refusal:
        raise SystemExit(f"refusing to start: {refusal}") from None


class TlsConfigured(Protocol):
    """Any settings object carrying the shared TLS fields (`tideserve.settings.TlsFields`)."""

    tls_cert: str
    tls_key: str
    tls_ca: str


@dataclass(frozen=True)
class TlsSettings:
    """Certificate files (PEM) for one process's server and its client channels.

    `cert`+`key`: the process's identity, presented as the server certificate and, on client
    channels, as the client certificate (so one pair per process serves mutual TLS both ways).
    `ca`: the bundle peers are verified against. When it is set, servers *require* a client
    certificate signed by it (mutual TLS) and clients verify servers with it; when it is empty,
    servers take any client and clients verify servers against the system roots.
    No cert and no ca: plaintext, the default for a loopback-only cluster.
    """

    cert: str = ""
    key: str = ""
    ca: str = ""

    def __post_init__(self) -> None:
        if bool(self.cert) != bool(self.key):
            raise ValueError("tls_cert and tls_key must be set together")

    @classmethod
    def of(cls, settings: TlsConfigured) -> TlsSettings:
        return cls(settings.tls_cert, settings.tls_key, settings.tls_ca)

    @property
    def secure_client(self) -> bool:
        """Whether client channels use TLS: with a CA to verify servers, or an identity to show."""
        return bool(self.ca or self.cert)

    @property
    def mutual(self) -> bool:
        return bool(self.ca)


PLAINTEXT = TlsSettings()


def _read(path: str, setting: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ValueError(f"{setting} {path!r} cannot be read: {error.strerror}") from None


def _read_key(path: str) -> bytes:
    """A private key, refused (with the chmod that fixes it) when group or others can read it:
    a key others can read is as good as published, and using it silently hides that."""
    check_private(path, "tls_key")
    return _read(path, "tls_key")


def server_credentials(tls: TlsSettings) -> grpc.ServerCredentials:
    if not tls.cert:
        raise ValueError("a TLS server needs tls_cert and tls_key")
    return grpc.ssl_server_credentials(
        [(_read_key(tls.key), _read(tls.cert, "tls_cert"))],
        root_certificates=_read(tls.ca, "tls_ca") if tls.ca else None,
        require_client_auth=tls.mutual,
    )


def channel_credentials(tls: TlsSettings) -> grpc.ChannelCredentials:
    """Credentials for sync or aio secure channels (tests and tools use the sync API)."""
    return grpc.ssl_channel_credentials(
        root_certificates=_read(tls.ca, "tls_ca") if tls.ca else None,
        private_key=_read_key(tls.key) if tls.cert else None,
        certificate_chain=_read(tls.cert, "tls_cert") if tls.cert else None,
    )


def new_server(
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> grpc.aio.Server:
    """A grpc.aio server with the shared options. `ErrorMapping` comes first, so it wraps every
    handler and every other interceptor: whatever they raise is answered the same way."""
    return grpc.aio.server(
        options=SERVER_OPTIONS,
        interceptors=[ErrorMapping(), *interceptors],
        maximum_concurrent_rpcs=MAX_CONCURRENT_RPCS,
    )


class GenericHandlersOnly:
    """A server as the generated `add_*Servicer_to_server` functions see it: it takes their
    generic handler and drops their copy of the same methods as registered methods. grpc.aio
    keeps one task per registered method asking the core for that method's next call, and on
    every call waits on all of them (asyncio.wait over the set), so each call's cost grows with
    the number of methods a server registers (the batcher serves 20). Generic handlers share
    one such task and are found by path in a dict."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self.server = server

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self.server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(
        self, service_name: str, handlers: Mapping[str, grpc.RpcMethodHandler]
    ) -> None:
        """Dropped: the generic handler added beside them serves the same methods."""


def bind(server: grpc.aio.Server, address: str, tls: TlsSettings = PLAINTEXT) -> int:
    """Listen on `address` with TLS when `tls` has a certificate, else in plaintext (a server
    with a certificate never also listens in plaintext). Returns the bound port; exits with a
    message naming the address when it cannot listen there (gRPC's own says only "failed")."""
    try:
        if tls.cert:
            return server.add_secure_port(address, server_credentials(tls))
        return server.add_insecure_port(address)
    except RuntimeError as error:
        raise SystemExit(
            f"cannot listen on {address}: another process holds the port, or the host is not "
            "an address of this machine; pick another with --port / --host"
        ) from error


def method_path(service: ServiceDescriptor, method: str) -> str:
    """The call path of `service`'s `method` ("/package.Service/Method"), from the generated
    descriptor: a method renamed or removed in the proto fails where this is called (at import,
    for module constants), not at the first call."""
    return f"/{service.full_name}/{service.methods_by_name[method].name}"


def channel(address: str, tls: TlsSettings = PLAINTEXT) -> grpc.aio.Channel:
    """A client channel to another tideserve service, secure when `tls` says so."""
    if tls.secure_client:
        return grpc.aio.secure_channel(address, channel_credentials(tls), options=CHANNEL_OPTIONS)
    return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)


def peer_identities(context: grpc.aio.ServicerContext) -> frozenset[str]:
    """Common and subject-alternative names of the peer's certificate. gRPC fills these only for
    a certificate it verified against the server's CA (mutual TLS), so they can be trusted."""
    auth = context.auth_context() or {}
    names = [*auth.get("x509_common_name", ()), *auth.get("x509_subject_alternative_name", ())]
    return frozenset(n.decode() if isinstance(n, bytes) else str(n) for n in names)


class RoleCheck(Protocol):
    def check(self, method: str, metadata: Mapping[str, str], identities: Iterable[str]) -> object:
        """Raise a TideserveError (UNAUTHENTICATED, PERMISSION_DENIED) unless a call of `method`
        with these request headers, from a peer whose verified certificate names `identities`,
        may proceed."""
        ...


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying `token` as a bearer credential; none for an empty token."""
    return (("authorization", f"Bearer {token}"),) if token else ()


class RoleGuard(grpc.aio.ServerInterceptor):
    """Runs `guard.check` before every method of `service`, of any of the four call shapes; its
    error (answered by `ErrorMapping`) ends the call before the handler runs, so a refused call
    changes nothing. Other services on the server (health, reflection) stay open. The check runs
    inside the handler because only the servicer context carries the peer's verified
    certificate."""

    def __init__(self, service: str, guard: RoleCheck) -> None:
        self.prefix = f"/{service}/"
        self.guard = guard

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        path: str = handler_call_details.method  # type: ignore[attr-defined]
        if handler is None or not path.startswith(self.prefix):
            return handler
        method = path[len(self.prefix) :]
        guard = self.guard

        def admit(context: grpc.aio.ServicerContext) -> None:
            metadata = {
                key: value
                for key, value in context.invocation_metadata() or ()
                if isinstance(value, str)
            }
            try:
                guard.check(method, metadata, peer_identities(context))
            except TideserveError as error:
                logger.warning(
                    "call refused",
                    extra={"method": method, "code": error.code, "peer": context.peer()},
                )
                raise

        def checked(behavior: Behavior) -> Behavior:
            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                admit(context)
                return await behavior(request, context)

            return unary

        def checked_stream(behavior: Behavior) -> Behavior:
            async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
                admit(context)
                async with contextlib.aclosing(_responses(behavior(request, context))) as answers:
                    async for response in answers:
                        yield response

            return stream

        return _rewrapped(handler, checked, checked_stream)


# A handler's behaviour: (request or request iterator, context) -> response, or an async
# iterator of responses for the server-streaming shapes.
Behavior = Callable[[Any, grpc.aio.ServicerContext], Any]


def _rewrapped(
    handler: grpc.RpcMethodHandler,
    wrap_unary: Callable[[Behavior], Behavior],
    wrap_stream: Callable[[Behavior], Behavior],
) -> grpc.RpcMethodHandler:
    """`handler` with its behaviour wrapped: by `wrap_unary` for the shapes answering once
    (unary-unary, stream-unary), by `wrap_stream` for those answering with a stream."""
    args = (handler.request_deserializer, handler.response_serializer)
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(wrap_unary(handler.unary_unary), *args)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(wrap_unary(handler.stream_unary), *args)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(wrap_stream(handler.unary_stream), *args)
    return grpc.stream_stream_rpc_method_handler(wrap_stream(handler.stream_stream), *args)


async def _responses(result: Any) -> AsyncIterator[Any]:
    """The responses of a streaming handler's `result`: an async generator, or a coroutine that
    wrote them itself with `context.write`. Each wrapper closes what it relays (`aclosing`) when
    its caller stops, so the handler's `finally` runs then, not when it is collected."""
    if inspect.isawaitable(result):
        await result
        return
    async with contextlib.aclosing(result) as responses:
        async for response in responses:
            yield response


# What a client is told of a failure the code did not expect; the detail goes to the log only.
INTERNAL_MESSAGE = "internal error; see the server log"


class ErrorMapping(grpc.aio.ServerInterceptor):
    """The one place a handler's exception becomes the call's status: a domain error gives its
    code, message and reason (as the `REASON_KEY` trailer, for failures sharing a code); anything
    else is INTERNAL with a generic message, its detail logged. For all four call shapes,
    streaming ones included (an error raised while the handler yields or reads). Handlers raise;
    none aborts by hand.

    The wrapped handler of each method is made once and kept: gRPC asks on every call, and the
    handlers behind this interceptor (the services' and `RoleGuard`'s) depend on the method path
    alone, so the inference path pays one dictionary lookup per call, not a new handler."""

    def __init__(self) -> None:
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        known = self._handlers.get(method)
        if known is not None:
            return known
        handler = await continuation(handler_call_details)
        if handler is None:
            return None

        def mapped(behavior: Behavior) -> Behavior:
            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    return await behavior(request, context)
                except grpc.aio.AbortError:
                    raise
                except Exception as error:
                    await _answer_error(context, error, method)

            return unary

        def mapped_stream(behavior: Behavior) -> Behavior:
            async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    async with contextlib.aclosing(
                        _responses(behavior(request, context))
                    ) as answers:
                        async for response in answers:
                            yield response
                except grpc.aio.AbortError:
                    raise
                except Exception as error:
                    await _answer_error(context, error, method)

            return stream

        wrapped = self._handlers[method] = _rewrapped(handler, mapped, mapped_stream)
        return wrapped


async def _answer_error(
    context: grpc.aio.ServicerContext, error: Exception, method: str
) -> NoReturn:
    """End the call with `error` mapped as `ErrorMapping` describes. Raises, as `context.abort`
    does."""
    if isinstance(error, TideserveError):
        if error.reason:
            context.set_trailing_metadata(((REASON_KEY, error.reason),))
        await context.abort(status_code(error), str(error))
    logger.error("unhandled error in %s", method, exc_info=error)
    await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
    raise AssertionError("unreachable: context.abort raises")


async def add_health_and_reflection(
    server: grpc.aio.Server, service_names: Iterable[str], *, serving: bool = True
) -> health.aio.HealthServicer:
    """Register grpc.health.v1 and server reflection for `service_names` (plus the overall "").

    Health starts SERVING unless `serving` is False (a worker stays NOT_SERVING until its models
    are loaded).
    """
    names = list(service_names)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, GenericHandlersOnly(server))
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


async def set_serving(
    health_servicer: health.aio.HealthServicer, names: Iterable[str], serving: bool = True
) -> None:
    """Report the whole server ("") and `names` SERVING, or NOT_SERVING when not `serving`."""
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for name in ["", *names]:
        await health_servicer.set(name, status)


def status_code(error: TideserveError) -> grpc.StatusCode:
    return grpc.StatusCode[error.code]


Hook = Callable[[], Awaitable[None]]


class Service:
    """A built server with what starting and stopping it gracefully take; every service's
    `build_server` returns one, so a test can run the service in-process on port 0 and stop it
    as SIGTERM would.

    `before_start` runs before the server takes calls (the batcher learns its catalog first),
    `after_start` once it does (the worker loads its models while health says NOT_SERVING).
    Shutdown, the same for every service: health NOT_SERVING, `on_draining` (end streams that
    would otherwise run until the grace period cuts them), in-flight calls get `grace_s` to
    finish, then `on_stop` closes what the service holds (channels, tasks, devices, runtimes)."""

    def __init__(
        self,
        server: grpc.aio.Server,
        health_servicer: health.aio.HealthServicer,
        *,
        grace_s: float,
        before_start: Hook | None = None,
        after_start: Hook | None = None,
        on_draining: Callable[[], None] | None = None,
        on_stop: Hook | None = None,
    ) -> None:
        self.server = server
        self.health = health_servicer
        self.grace_s = grace_s
        self.before_start = before_start
        self.after_start = after_start
        self.on_draining = on_draining
        self.on_stop = on_stop
        # Set by SIGINT/SIGTERM (`wait_for_stop`), or by the service itself (a released worker).
        self.stop_requested = asyncio.Event()

    async def start(self) -> None:
        if self.before_start is not None:
            await self.before_start()
        await self.server.start()
        if self.after_start is not None:
            await self.after_start()

    async def wait_for_stop(self) -> None:
        """Return on SIGINT, SIGTERM or `stop_requested`."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop_requested.set)
        await self.stop_requested.wait()

    async def shutdown(self) -> None:
        logger.info("shutting down", extra={"grace_seconds": self.grace_s})
        await self.health.enter_graceful_shutdown()
        if self.on_draining is not None:
            self.on_draining()
        await self.server.stop(self.grace_s)
        if self.on_stop is not None:
            await self.on_stop()

    async def run(self) -> None:
        """Start, serve until told to stop, shut down gracefully: a service's whole life."""
        await self.start()
        await self.wait_for_stop()
        await self.shutdown()


# Codes a caller may retry elsewhere: the peer did not (or could not) answer.
RETRYABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
    }
)


def error_from_status(
    code: grpc.StatusCode, details: str | None, reason: str = ""
) -> TideserveError:
    """The domain error for a status a downstream service answered with, so it can be passed on:
    the class with that code and `reason`, else the plain class of that code (a reason this
    version does not know, or none: a failure of the call itself, not one a service named)."""
    return error_for_code(code.name, details or code.name, reason)


def error_from_rpc(error: grpc.aio.AioRpcError) -> TideserveError:
    """`error_from_status` for a failed aio call, reading the reason from its trailers."""
    return error_from_status(error.code(), error.details(), reason_of(error))


def reason_of(error: grpc.aio.AioRpcError) -> str:
    """The `REASON_KEY` trailer of a failed call; "" when the peer sent none (the call failed
    in transport, or the peer is not a tideserve service)."""
    for key, value in error.trailing_metadata() or ():
        if key == REASON_KEY:
            return value if isinstance(value, str) else value.decode()
    return ""
