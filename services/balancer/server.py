"""Balancer server wiring. The Balancer service is registered from the generated code, except
Dispatch, registered again with no (de)serializers: the balancer forwards the batch bytes to the
worker untouched and routes on request metadata alone."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import grpc

from services.balancer.auth import BalancerAuth
from services.balancer.core import BalancerCore, WorkerLost, WorkerSession
from services.balancer.metrics import BalancerMetrics, collect, worker_targets
from services.balancer.registry import WorkerTable
from services.balancer.settings import BalancerSettings
from tideserve import metrics, serving
from tideserve.errors import InvalidArgument, TideserveError
from tideserve.metadata import BATCH_ID_KEY, MODEL_KEY, ROWS_KEY
from tideserve.v1 import cluster_pb2 as pb
from tideserve.v1 import cluster_pb2_grpc

logger = logging.getLogger(__name__)

BALANCER = pb.DESCRIPTOR.services_by_name["Balancer"]
SERVICE_NAME = BALANCER.full_name
DISPATCH = BALANCER.methods_by_name["Dispatch"].name
WORKER_EXECUTE = serving.method_path(pb.DESCRIPTOR.services_by_name["Worker"], "Execute")
# How long a ControlModel call without a deadline waits for the workers to load the model.
CONTROL_TIMEOUT_S = 120.0


class GrpcWorkerTransport:
    """One channel per worker, calling Execute with raw bytes in and out and the worker's key
    as the bearer credential."""

    def __init__(self, tls: serving.TlsSettings = serving.PLAINTEXT) -> None:
        self.tls = tls
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._calls: dict[str, grpc.aio.UnaryUnaryMultiCallable] = {}

    async def execute(
        self, address: str, payload: bytes, timeout: float | None, *, key: str
    ) -> bytes:
        call = self._calls.get(address)
        if call is None:
            self._channels[address] = serving.channel(address, self.tls)
            call = self._calls[address] = self._channels[address].unary_unary(WORKER_EXECUTE)
        channel = self._channels[address]
        try:
            return await call(payload, timeout=timeout, metadata=serving.bearer(key))
        except grpc.aio.AioRpcError as error:
            if error.code() in serving.RETRYABLE_CODES:
                raise WorkerLost(f"{error.code().name}: {error.details()}") from error
            if error.code() == grpc.StatusCode.UNAUTHENTICATED:
                # The process at that address does not know the key its worker registered
                # with: not the worker we know (one that restarted there, or another process
                # on its port). The batch may go elsewhere; the client's credentials were fine.
                raise WorkerLost(
                    f"the process at {address} refused the key its worker registered with"
                ) from error
            raise serving.error_from_rpc(error) from error
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._channels.get(address) is not channel and not (task and task.cancelling()):
                # `forget` closed the channel under this call: the worker left, not our caller.
                raise WorkerLost("worker left the cluster with the batch") from None
            raise

    def forget(self, address: str) -> None:
        """Close the worker's channel now, cancelling its calls in flight: they fail as
        WorkerLost at once and are retried elsewhere, instead of waiting out their timeout."""
        self._calls.pop(address, None)
        channel = self._channels.pop(address, None)
        if channel is not None:
            asyncio.get_running_loop().create_task(channel.close())

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self._channels.values()))


def dispatch_rows(value: str) -> int:
    """The batch's row count from its `ROWS_KEY` metadata, a whole number of at least 0."""
    try:
        rows = int(value)
    except ValueError:
        rows = -1
    if rows < 0:
        raise InvalidArgument(f"{ROWS_KEY} metadata must be a whole number of rows, not {value!r}")
    return rows


class BalancerServicer:
    def __init__(
        self, core: BalancerCore, snapshot_interval_s: float, metrics: BalancerMetrics
    ) -> None:
        self.core = core
        self.snapshot_interval_s = snapshot_interval_s
        self.metrics = metrics
        # Set on shutdown: cluster watches end at once, so a batcher watching this balancer
        # stops reporting ready now rather than when the grace period cuts the stream.
        self.stopping = asyncio.Event()

    async def Heartbeat(
        self, requests: AsyncIterator[pb.WorkerReport], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.BalancerCommand]:
        reports = requests.__aiter__()
        try:
            first = await reports.__anext__()
        except StopAsyncIteration:
            return
        if not first.HasField("registration"):
            raise InvalidArgument("the first heartbeat message must be a registration")
        session = await self.core.connect(first.registration)
        reader = asyncio.create_task(self._read_reports(reports, session))
        try:
            while True:
                command = asyncio.create_task(session.commands.get())
                done, _ = await asyncio.wait({command, reader}, return_when=asyncio.FIRST_COMPLETED)
                if command not in done:
                    command.cancel()
                    break
                if command.result() is None:
                    break
                yield command.result()
        finally:
            reader.cancel()
            await self.core.disconnect(session, "heartbeat stream closed")

    async def _read_reports(
        self, reports: AsyncIterator[pb.WorkerReport], session: WorkerSession
    ) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
            async for report in reports:
                if report.HasField("load"):
                    self.core.report(session, report.load)
                elif report.HasField("models"):
                    await self.core.model_update(session, report.models)

    async def Dispatch(self, payload: bytes, context: grpc.aio.ServicerContext) -> bytes:
        metadata = dict(context.invocation_metadata() or ())
        model = metadata.get(MODEL_KEY)
        if not model:
            raise InvalidArgument(f"missing {MODEL_KEY} metadata")
        rows = dispatch_rows(metadata.get(ROWS_KEY, "1"))
        logger.debug(
            "dispatching batch",
            extra={"batch_id": metadata.get(BATCH_ID_KEY, ""), "model": model, "rows": rows},
        )
        remaining = context.time_remaining()
        started = self.core.clock()
        deadline = None if remaining is None else started + remaining
        try:
            result = await self.core.dispatch(model, rows, payload, deadline)
        except TideserveError as error:
            self.metrics.dispatch_done(model, error.code, self.core.clock() - started)
            raise
        self.metrics.dispatch_done(model, "OK", self.core.clock() - started)
        return result

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=self.core.models())

    async def WatchCluster(
        self, request: pb.WatchClusterRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ClusterSnapshot]:
        interval = request.interval_seconds or self.snapshot_interval_s
        while not self.stopping.is_set():
            yield self.core.snapshot()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), interval)

    async def ReportFrontend(
        self, request: pb.FrontendReport, context: grpc.aio.ServicerContext
    ) -> pb.FrontendReportAck:
        self.core.frontend_report(request)
        return pb.FrontendReportAck()

    async def DrainWorker(
        self, request: pb.DrainWorkerRequest, context: grpc.aio.ServicerContext
    ) -> pb.DrainWorkerResponse:
        remaining = context.time_remaining()
        wait_s = (remaining if remaining is not None else 30.0) if request.wait else None
        return await self.core.drain(request.worker_id, wait_s)

    async def SetRoutingPolicy(
        self, request: pb.SetRoutingPolicyRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetRoutingPolicyResponse:
        try:
            self.core.set_policy(request.name)
        except ValueError as error:
            raise InvalidArgument(str(error)) from error
        return pb.SetRoutingPolicyResponse(name=self.core.policy.name)

    async def ControlModel(
        self, request: pb.ControlModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.ControlModelResponse:
        if not request.model_name:
            raise InvalidArgument("ControlModel needs a model_name")
        if request.action not in (pb.ControlModelRequest.LOAD, pb.ControlModelRequest.UNLOAD):
            raise InvalidArgument("ControlModel needs action LOAD or UNLOAD")
        remaining = context.time_remaining()
        timeout_s = remaining if remaining is not None else CONTROL_TIMEOUT_S
        return await self.core.control_model(
            request.model_name, request.action == pb.ControlModelRequest.LOAD, timeout_s
        )

    async def SetCanaryWeights(
        self, request: pb.SetCanaryWeightsRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetCanaryWeightsResponse:
        if not request.model_name:
            raise InvalidArgument("SetCanaryWeights needs a model_name")
        weights = self.core.set_canary_weights(request.model_name, dict(request.weights))
        return pb.SetCanaryWeightsResponse(weights=weights)


def add_balancer_to_server(servicer: BalancerServicer, server: grpc.aio.Server) -> None:
    """Register the Balancer service: Dispatch with bytes in and bytes out, then every method as
    generated (generic handlers only: serving.GenericHandlersOnly). The server asks its generic
    handlers in the order they were added and the first to know a path serves it, so Dispatch
    is the raw one (a test checks the payload arrives as bytes)."""
    raw = grpc.unary_unary_rpc_method_handler(servicer.Dispatch)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE_NAME, {DISPATCH: raw}),)
    )
    cluster_pb2_grpc.add_BalancerServicer_to_server(servicer, serving.GenericHandlersOnly(server))


async def _expire_loop(core: BalancerCore, period_s: float) -> None:
    while True:
        await asyncio.sleep(period_s)
        await core.expire_stale()


async def build_server(settings: BalancerSettings) -> tuple[serving.Service, int]:
    """The balancer, built and bound but not started, and its port."""
    tls = serving.TlsSettings.of(settings)
    try:
        auth = BalancerAuth.from_settings(
            settings.credentials_dir, tls.mutual, settings.allow_unauthenticated
        )
    except ValueError as error:
        raise SystemExit(f"balancer: {error}") from None
    transport = GrpcWorkerTransport(tls)
    table = WorkerTable(
        heartbeat_timeout_s=settings.heartbeat_timeout_s,
        eject_after_failures=settings.eject_after_failures,
        ejection_s=settings.ejection_s,
        max_ejection_s=settings.max_ejection_s,
    )
    core = BalancerCore(
        table,
        transport,
        policy=settings.routing_policy,
        max_attempts=settings.max_attempts,
        batch_timeout_s=settings.batch_timeout_s,
        batch_timeout_multiplier=settings.batch_timeout_multiplier,
        batch_timeout_floor_s=settings.batch_timeout_floor_s,
        no_worker_wait_s=settings.no_worker_wait_s,
    )
    registry = metrics.new_registry()
    balancer_metrics = BalancerMetrics(registry)
    loop = asyncio.get_running_loop()
    registry.register(metrics.LoopCollector(loop, lambda: collect(core)))
    metrics_server = metrics.start_metrics_server(
        settings.host,
        settings.metrics_port,
        registry,
        {"/sd/workers": lambda: metrics.on_loop(loop, lambda: worker_targets(core.snapshot()))},
    )
    server = serving.new_server([serving.RoleGuard(SERVICE_NAME, auth)])
    servicer = BalancerServicer(core, settings.snapshot_interval_s, balancer_metrics)
    add_balancer_to_server(servicer, server)
    port = serving.bind(server, f"{settings.host}:{settings.port}", tls)
    health = await serving.add_health_and_reflection(server, [SERVICE_NAME])
    tasks: list[asyncio.Task] = []

    async def started() -> None:
        tasks.append(asyncio.create_task(_expire_loop(core, settings.heartbeat_timeout_s / 4)))
        logger.info(
            "balancer listening",
            extra={
                "address": f"{settings.host}:{port}",
                "metrics": metrics_server.address,
                "policy": settings.routing_policy,
            },
        )

    async def stop() -> None:
        for task in tasks:
            task.cancel()
        await transport.close()
        metrics_server.close()

    service = serving.Service(
        server,
        health,
        grace_s=settings.grace_s,
        after_start=started,
        on_draining=servicer.stopping.set,
        on_stop=stop,
    )
    return service, port


async def serve(settings: BalancerSettings) -> None:
    service, _ = await build_server(settings)
    await service.run()
