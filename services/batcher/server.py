"""Batcher server wiring: GRPCInferenceService for clients, and the balancer connections that
feed the model catalog and take the batches."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc

import tideserve
from services.batcher.catalog import ModelCatalog, unloaded_models
from services.batcher.client_memory import ClientRegions, outputs_to_regions, region_inputs
from services.batcher.core import BALANCER_HOLD_S, BatcherCore, SharedInputs
from services.batcher.links import BalancerLinks
from services.batcher.metrics import BatcherMetrics, collect
from services.batcher.requests import check_model_name, quoted
from services.batcher.settings import BatcherSettings
from services.batcher.statistics import InferenceStatistics
from tideserve import metrics, serving, shared_memory
from tideserve.cluster_watch import Backoff, watch_cluster
from tideserve.credentials import read_token_file
from tideserve.errors import (
    BalancerUnreachable,
    DeadlineExceeded,
    InvalidArgument,
    TideserveError,
    Unimplemented,
)
from tideserve.metadata import BATCH_ID_KEY, MODEL_KEY, ROWS_KEY
from tideserve.procs import child_env
from tideserve.v1 import cluster_pb2, cluster_pb2_grpc, inference_pb2_grpc
from tideserve.v1 import inference_pb2 as pb

logger = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
BALANCER_DISPATCH = serving.method_path(
    cluster_pb2.DESCRIPTOR.services_by_name["Balancer"], "Dispatch"
)
# How long a starting batcher waits for its first model catalog before it takes requests.
CATALOG_WAIT_S = 5.0
# How long a load or unload without a deadline may take, the workers' loads included.
MODEL_CONTROL_TIMEOUT_S = 120.0
# How often the balancers send a cluster snapshot: the catalog and readiness are this fresh.
CLUSTER_INTERVAL_S = 0.25
# A balancer back after a restart is followed again within a second: requests held meanwhile
# (up to balancer_hold_s) go out once its stream is live.
WATCH_BACKOFF = Backoff(initial_s=0.2, max_s=1.0)


class BalancerPool:
    """Dispatches batches over one or more balancers: round robin, moving on to the next balancer
    when one is unreachable, so no single balancer is a point of failure. When none is, the batch
    waits (up to its timeout, or `hold_s` without one) for a balancer's stream to come back, then
    is sent again: inference is idempotent, and a balancer restart need not lose it."""

    def __init__(
        self,
        addresses: tuple[str, ...],
        links: BalancerLinks,
        tls: serving.TlsSettings = serving.PLAINTEXT,
        hold_s: float = BALANCER_HOLD_S,
        token: str = "",
    ) -> None:
        self.auth = serving.bearer(token)
        self.channels = [serving.channel(a, tls) for a in addresses]
        self.addresses = addresses
        self.links = links
        self.hold_s = hold_s
        self._calls = [c.unary_unary(BALANCER_DISPATCH) for c in self.channels]
        self._next = itertools.count()

    async def dispatch(
        self, model: str, rows: int, payload: bytes, timeout: float | None, batch_id: str = ""
    ) -> bytes:
        metadata = ((MODEL_KEY, model), (ROWS_KEY, str(rows)), (BATCH_ID_KEY, batch_id), *self.auth)
        clock = asyncio.get_running_loop().time
        until = clock() + (self.hold_s if timeout is None else timeout)
        start = next(self._next)
        while True:
            for offset in range(len(self._calls)):
                index = (start + offset) % len(self._calls)
                remaining = None if timeout is None else until - clock()
                try:
                    return await self._calls[index](payload, timeout=remaining, metadata=metadata)
                except grpc.aio.AioRpcError as error:
                    failure = serving.error_from_rpc(error)
                    # A reason means the balancer answered (no worker, worker lost, deadline):
                    # another balancer would answer the same. A bare UNAVAILABLE is the call
                    # failing on the way to the balancer: try the next one.
                    if failure.reason or error.code() != grpc.StatusCode.UNAVAILABLE:
                        raise failure from error
                    self.links.failed(
                        self.addresses[index], f"{error.code().name}: {error.details()}"
                    )
            left = until - clock()
            if left <= 0 or not await self.links.reconnected(left):
                break
        if timeout is not None:
            raise DeadlineExceeded(
                f"deadline passed while the batch waited for a balancer: {self.links.unreachable()}"
            )
        raise BalancerUnreachable(
            f"{self.links.unreachable()} (held the batch {self.hold_s:g} s for one to return)"
        )

    async def control_model(
        self, name: str, action: cluster_pb2.ControlModelRequest.Action.ValueType, timeout: float
    ) -> cluster_pb2.ControlModelResponse:
        """Ask every reachable balancer to have its workers load or unload `name`: each one
        remembers it for workers that register later. Any one reaching the workers would do
        (workers heartbeat to all); the others' commands find the work done. Raises the first
        error a balancer answered with, or BalancerUnreachable when none answered. Returns the
        model's states on the workers, as the last balancer saw them."""
        request = cluster_pb2.ControlModelRequest(model_name=name, action=action)
        answered: cluster_pb2.ControlModelResponse | None = None
        for address, channel in zip(self.addresses, self.channels, strict=True):
            stub = cluster_pb2_grpc.BalancerStub(channel)
            try:
                answer = await stub.ControlModel(request, timeout=timeout, metadata=self.auth)
            except grpc.aio.AioRpcError as error:
                failure = serving.error_from_rpc(error)
                if failure.reason or error.code() != grpc.StatusCode.UNAVAILABLE:
                    raise failure from error
                self.links.failed(address, f"{error.code().name}: {error.details()}")
                continue
            answered = answer
        if answered is None:
            raise BalancerUnreachable(self.links.unreachable())
        return answered

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.channels))


class InferenceServicer(inference_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self,
        core: BatcherCore,
        metrics: BatcherMetrics,
        regions: ClientRegions,
        stream_inflight: int,
        statistics: InferenceStatistics,
        pool: BalancerPool,
        catalog_changed: asyncio.Condition,
        model_control: bool,
    ) -> None:
        self.core = core
        self.statistics = statistics
        self.pool = pool
        # Notified at each cluster snapshot: a load answers once the catalog shows the model.
        self.catalog_changed = catalog_changed
        self.model_control = model_control
        self.stream_inflight = stream_inflight
        self.catalog = core.catalog
        self.metrics = metrics
        self.regions = regions
        # The Triton protocol extensions served, as ServerMetadata names them.
        self.extensions = ["model_configuration", "model_repository", "statistics"]
        if regions.enabled:
            self.extensions.append("system_shared_memory")

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        """Ready: a balancer is reachable (as health says) and some model has a ready worker,
        so an inference can be served now."""
        return pb.ServerReadyResponse(
            ready=any(self.core.model_ready(m) for m in self.catalog.entries)
        )

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        ready = self.core.model_ready(request.name) and (
            not request.version or request.version in self.catalog.served_versions(request.name)
        )
        return pb.ModelReadyResponse(ready=ready)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name="tideserve", version=tideserve.__version__, extensions=self.extensions
        )

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        return self.catalog.get(request.name, request.version).metadata

    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelConfigResponse:
        return pb.ModelConfigResponse(config=self.catalog.get(request.name, request.version).config)

    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelStatisticsResponse:
        return self.statistics.report(request.name, request.version)

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        """Every model version a worker serves or knows of (unloaded, failed to load, being
        loaded), with its state and reason as Triton reports them."""
        response = pb.RepositoryIndexResponse()
        for name, version, state, reason in self.catalog.repository_index(self.core.ready()):
            if not request.ready or state == "READY":
                response.models.add(name=name, version=version, state=state, reason=reason)
        return response

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelLoadResponse:
        """Load the model's latest version from every worker's repository; answers once it
        is served (a version already serving goes on serving until then, and if the load fails),
        or with INVALID_ARGUMENT when this batcher cannot batch it as its config asks.
        """
        name = request.model_name
        self._check_model_control(name, request.parameters)
        answer = await self._control(context, name, cluster_pb2.ControlModelRequest.LOAD)
        loaded = {s.version for s in answer.statuses if s.state == "READY"}
        answered = self.catalog.generation
        await self._shown(
            context,
            name,
            lambda: (
                self.catalog.generation > answered
                and (
                    name in self.catalog.refused
                    or (
                        self.core.model_ready(name)
                        and loaded <= set(self.catalog.served_versions(name))
                    )
                )
            ),
        )
        if name in self.catalog.refused:
            # The workers loaded it, but this batcher cannot batch it as configured.
            raise InvalidArgument(self.catalog.refused[name].reason)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelUnloadResponse:
        """Stop serving the model on every worker; batches already sent finish first."""
        name = request.model_name
        self._check_model_control(name, {})
        await self._control(context, name, cluster_pb2.ControlModelRequest.UNLOAD)
        await self._shown(context, name, lambda: name not in self.catalog.entries)
        return pb.RepositoryModelUnloadResponse()

    def _check_model_control(self, name: str, parameters: object) -> None:
        if not self.model_control:
            raise Unimplemented(
                "model control is turned off on this batcher (--model-control false); "
                "operators load and unload models through the balancer's ControlModel"
            )
        check_model_name(name)
        if parameters:
            raise InvalidArgument(
                f"load parameters {sorted(parameters)} are not supported: a model is loaded "
                "from the workers' repository as it is there (put its config.pbtxt and version "
                "directory there, then load it)"
            )

    async def _control(
        self,
        context: grpc.aio.ServicerContext,
        name: str,
        action: cluster_pb2.ControlModelRequest.Action.ValueType,
    ) -> cluster_pb2.ControlModelResponse:
        remaining = context.time_remaining()
        timeout = MODEL_CONTROL_TIMEOUT_S if remaining is None else remaining
        return await self.pool.control_model(name, action, timeout)

    async def _shown(
        self, context: grpc.aio.ServicerContext, name: str, done: Callable[[], bool]
    ) -> None:
        """Wait until the catalog shows the change (`done`): a client may infer right after."""
        remaining = context.time_remaining()
        timeout = CATALOG_WAIT_S if remaining is None else remaining
        try:
            async with self.catalog_changed:
                await asyncio.wait_for(self.catalog_changed.wait_for(done), timeout)
        except TimeoutError:
            raise DeadlineExceeded(
                f"the workers changed model {name!r}, but no cluster snapshot has shown it yet"
            ) from None

    async def SystemSharedMemoryRegister(
        self, request: pb.SystemSharedMemoryRegisterRequest, context: grpc.aio.ServicerContext
    ) -> pb.SystemSharedMemoryRegisterResponse:
        self.regions.register(request.name, request.key, request.offset, request.byte_size)
        logger.info(
            "shared-memory region registered",
            extra={
                "region": quoted(request.name),
                "key": quoted(request.key),
                "bytes": request.byte_size,
            },
        )
        return pb.SystemSharedMemoryRegisterResponse()

    async def SystemSharedMemoryUnregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest, context: grpc.aio.ServicerContext
    ) -> pb.SystemSharedMemoryUnregisterResponse:
        self.regions.unregister(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    async def SystemSharedMemoryStatus(
        self, request: pb.SystemSharedMemoryStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.SystemSharedMemoryStatusResponse:
        response = pb.SystemSharedMemoryStatusResponse()
        for region in self.regions.status(request.name):
            status = response.regions[region.name]
            status.name, status.key = region.name, region.key
            status.offset, status.byte_size = region.offset, region.byte_size
        return response

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        started = self.core.clock()
        remaining = context.time_remaining()
        deadline = None if remaining is None else started + remaining
        try:
            raw = region_inputs(request, self.regions)
            response = await self.core.submit(request, deadline, raw)
            outputs_to_regions(request, response, self.regions)
        except TideserveError as error:
            self.core.record(None)
            self.metrics.request_done(request.model_name, error.code, None, request.model_version)
            raise
        latency = self.core.clock() - started
        self.core.record(latency)
        self.metrics.request_done(request.model_name, "OK", latency, response.model_version)
        return response

    async def ModelStreamInfer(
        self, requests: AsyncIterator[pb.ModelInferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Responses leave in request order; a failed request yields `error_message` and the
        stream stays open. At most `stream_inflight` requests are unanswered (or answered and
        not yet taken by gRPC) at a time: the next is read only when one leaves."""
        pending: asyncio.Queue[tuple[float, pb.ModelInferRequest, asyncio.Future] | None] = (
            asyncio.Queue()
        )
        slots = asyncio.Semaphore(self.stream_inflight)
        loop = asyncio.get_running_loop()

        async def read() -> None:
            try:
                incoming = aiter(requests)
                while True:
                    await slots.acquire()
                    try:
                        request = await anext(incoming)
                    except StopAsyncIteration:
                        return
                    started = self.core.clock()
                    try:
                        raw = region_inputs(request, self.regions)
                        future = self.core.submit(request, None, raw)
                    except TideserveError as error:
                        future = loop.create_future()
                        future.set_exception(error)
                    pending.put_nowait((started, request, future))
            finally:
                pending.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (item := await pending.get()) is not None:
                yield await self._stream_answer(*item)
                slots.release()
            # The requests ended: cleanly (the client closed its side), or because one could not
            # be read, which the client must hear about rather than see a quiet end.
            (outcome,) = await asyncio.gather(reader, return_exceptions=True)
            if isinstance(outcome, Exception) and not isinstance(outcome, grpc.aio.AbortError):
                raise InvalidArgument(f"could not read a request on the stream: {outcome}")
        finally:
            reader.cancel()
            # A cancelled stream's queued requests are not computed (the scheduler skips done
            # futures) and their memory goes now.
            while not pending.empty():
                if (item := pending.get_nowait()) is not None:
                    item[2].cancel()

    async def _stream_answer(
        self, started: float, request: pb.ModelInferRequest, future: asyncio.Future
    ) -> pb.ModelStreamInferResponse:
        model = request.model_name
        try:
            response = await future
            outputs_to_regions(request, response, self.regions)
        except TideserveError as error:
            self.core.record(None)
            self.metrics.request_done(model, error.code, None, request.model_version)
            return pb.ModelStreamInferResponse(error_message=str(error))
        latency = self.core.clock() - started
        self.core.record(latency)
        self.metrics.request_done(model, "OK", latency, response.model_version)
        return pb.ModelStreamInferResponse(infer_response=response)


class ClusterFeed:
    """Keeps the catalog in step with the balancers' cluster snapshots, and `links` with which
    streams are live: up at each snapshot, down the moment a stream breaks or ends (a killed
    balancer resets the connection; a silent one fails the channel's keepalive). The streams run
    over the channels batches go over, so a live stream means batches can be sent now, not after
    that channel's own reconnect back-off. `on_change` runs when the batcher becomes live or
    stops being so; `changed` is notified at every snapshot."""

    def __init__(
        self,
        catalog: ModelCatalog,
        links: BalancerLinks,
        changed: asyncio.Condition,
        on_change: Callable[[], Awaitable[None]],
    ) -> None:
        self.catalog = catalog
        self.links = links
        self.changed = changed
        self.on_change = on_change

    async def snapshot(self, address: str, snapshot: cluster_pb2.ClusterSnapshot) -> None:
        updated = self.catalog.update(list(snapshot.models), unloaded_models(snapshot))
        self.catalog.update_workers(snapshot)
        async with self.changed:
            self.changed.notify_all()
        if updated:
            logger.info("models updated", extra={"models": updated, "balancer": address})
        if self.links.up(address):
            logger.info("balancer reachable; serving", extra={"balancer": address})
            await self.on_change()

    async def lost(self, address: str, failure: str) -> None:
        was_up = self.links.is_up(address)
        if self.links.down(address, failure):
            logger.warning(
                "no balancer reachable; not serving, holding requests",
                extra={"balancer": address, "error": failure},
            )
            await self.on_change()
        else:
            # Retries while the balancer stays away are many; only the loss is news.
            logger.log(
                logging.WARNING if was_up else logging.DEBUG,
                "cluster watch failed; retrying",
                extra={"balancer": address, "error": failure},
            )


async def _first_catalog(
    catalog: ModelCatalog, changed: asyncio.Condition, timeout_s: float
) -> None:
    """Wait until a balancer has sent the catalog (`changed` is notified at each snapshot), or
    `timeout_s` (a balancer may be down; then requests are answered UNAVAILABLE until one is
    reachable)."""
    try:
        async with changed:
            await asyncio.wait_for(changed.wait_for(lambda: catalog.synced), timeout_s)
    except TimeoutError:
        logger.warning("no balancer answered yet; serving anyway", extra={"waited_s": timeout_s})


async def _report_loop(core: BatcherCore, settings: BatcherSettings, pool: BalancerPool) -> None:
    stubs = [cluster_pb2_grpc.BalancerStub(c) for c in pool.channels]
    while True:
        await asyncio.sleep(settings.report_interval_s)
        report = core.frontend_report(settings.batcher_id)
        for stub in stubs:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await stub.ReportFrontend(report, timeout=1.0, metadata=pool.auth)


async def build_server(settings: BatcherSettings) -> tuple[serving.Service, int]:
    """The batcher, built and bound but not started, and its port. Starting it opens the
    balancers' cluster streams and waits (up to `CATALOG_WAIT_S`) for the first catalog."""
    tls = serving.TlsSettings.of(settings)
    links = BalancerLinks(settings.balancers)
    pool = BalancerPool(
        settings.balancers,
        links,
        tls,
        settings.balancer_hold_s,
        token=read_token_file(settings.balancer_token_file),
    )
    catalog = ModelCatalog()
    regions = ClientRegions(enabled=settings.client_shared_memory)
    domain = shared_memory.domain()
    shared = (
        SharedInputs(
            catalog,
            settings.shared_memory_min_bytes,
            domain,
            thread_bytes=settings.shared_memory_thread_bytes,
        )
        if settings.shared_memory_min_bytes and domain
        else None
    )
    registry = metrics.new_registry()
    statistics = InferenceStatistics(catalog)
    batcher_metrics = BatcherMetrics(
        registry, lambda model: model in catalog.entries, statistics, catalog.served_versions
    )
    core = BatcherCore(
        catalog,
        pool,
        inflight_per_instance=settings.inflight_per_instance,
        metrics=batcher_metrics,
        max_queue_rows_default=settings.max_queue_rows_default,
        shared=shared,
        links=links,
        hold_s=settings.balancer_hold_s,
    )
    registry.register(metrics.LoopCollector(asyncio.get_running_loop(), lambda: collect(core)))
    metrics_server = metrics.start_metrics_server(settings.host, settings.metrics_port, registry)
    catalog_changed = asyncio.Condition()
    server = serving.new_server()
    inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        InferenceServicer(
            core,
            batcher_metrics,
            regions,
            settings.stream_inflight,
            statistics,
            pool,
            catalog_changed,
            settings.model_control,
        ),
        serving.GenericHandlersOnly(server),
    )
    # Health says SERVING only while a balancer's stream is live (BalancerLinks): a batcher with
    # no balancer fails every inference, so probes and load balancers must see it as not ready.
    health = await serving.add_health_and_reflection(server, [SERVICE_NAME], serving=False)
    publishing = asyncio.Lock()

    async def publish_readiness() -> None:
        async with publishing:
            await serving.set_serving(health, [SERVICE_NAME], links.live)

    port = serving.bind(server, f"{settings.host}:{settings.port}", tls)
    tasks: list[asyncio.Task] = []

    async def starting() -> None:
        feed = ClusterFeed(catalog, links, catalog_changed, publish_readiness)
        channels = dict(zip(settings.balancers, pool.channels, strict=True))
        tasks.append(
            asyncio.create_task(
                watch_cluster(
                    channels,
                    feed.snapshot,
                    feed.lost,
                    metadata=pool.auth,
                    interval_s=CLUSTER_INTERVAL_S,
                    backoff=WATCH_BACKOFF,
                )
            )
        )
        tasks.append(asyncio.create_task(_report_loop(core, settings, pool)))
        # Learn what is served before answering: with several processes on one port, a client
        # connection may land on a process that started a moment ago.
        await _first_catalog(catalog, catalog_changed, CATALOG_WAIT_S)

    async def started() -> None:
        logger.info(
            "batcher listening",
            extra={
                "address": f"{settings.host}:{port}",
                "metrics": metrics_server.address,
                "balancers": list(settings.balancers),
            },
        )

    async def stop() -> None:
        for task in tasks:
            task.cancel()
        core.close()
        regions.close()
        await pool.close()
        metrics_server.close()

    service = serving.Service(
        server,
        health,
        grace_s=settings.grace_s,
        before_start=starting,
        after_start=started,
        on_stop=stop,
    )
    return service, port


async def serve(settings: BatcherSettings) -> None:
    service, _ = await build_server(settings)
    await service.run()


def run_processes(settings: BatcherSettings, argv: list[str]) -> int:
    """Run `settings.processes` batcher processes on one port and wait for them; SIGINT/SIGTERM
    are passed on so that each stops gracefully. Returns the worst exit code."""
    children = []
    for index in range(settings.processes):
        metrics_port = settings.metrics_port + index if settings.metrics_port else 0
        children.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "services.batcher",
                    *argv,
                    "--processes",
                    "1",
                    "--metrics-port",
                    str(metrics_port),
                ],
                env=child_env(),
            )
        )

    def forward(signum: int, frame: object) -> None:
        for child in children:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    logger.info(
        "batcher processes started",
        extra={"pids": [c.pid for c in children], "port": settings.port},
    )
    return max(child.wait() for child in children)
