"""Worker server wiring: the Worker gRPC service, health, reflection, and the heartbeat streams
that register this worker with every configured balancer."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc

from services.worker.auth import ExecuteGuard
from services.worker.core import WorkerCore
from services.worker.execution import CudaHostPinning
from services.worker.lifecycle import ModelLifecycle
from services.worker.metrics import WorkerMetrics, collect
from services.worker.repository import RepositoryEntry, scan
from services.worker.runner import (
    EmulatedDeviceRunner,
    ModelRunner,
    Runner,
    configure_threads,
    resolve_device,
)
from services.worker.settings import WorkerSettings
from tideserve import metrics, serving, shared_memory
from tideserve.credentials import read_token_file
from tideserve.errors import TideserveError
from tideserve.profiles import ServiceTimeProfile
from tideserve.v1 import cluster_pb2, cluster_pb2_grpc

logger = logging.getLogger(__name__)

SERVICE_NAME = cluster_pb2.DESCRIPTOR.services_by_name["Worker"].full_name
MAX_RECONNECT_BACKOFF_S = 2.0


class WorkerServicer(cluster_pb2_grpc.WorkerServicer):
    def __init__(self, core: WorkerCore, metrics: WorkerMetrics) -> None:
        self.core = core
        self.metrics = metrics

    async def Execute(
        self, request: cluster_pb2.Batch, context: grpc.aio.ServicerContext
    ) -> cluster_pb2.BatchResult:
        logger.debug(
            "executing batch", extra={"batch_id": request.batch_id, "model": request.model_name}
        )
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        try:
            result = await self.core.execute(request, deadline)
        except TideserveError as error:
            self.metrics.batch_failed(request.model_name, error.code)
            raise
        except Exception:
            self.metrics.batch_failed(request.model_name, "INTERNAL")
            raise
        self.metrics.batch_done(request.model_name, result.queue_seconds, result.compute_seconds)
        return result


class HeartbeatClient:
    """Keeps one heartbeat stream open to one balancer: registration first (what the worker
    serves at that moment), then a load report every period, and a ModelUpdate whenever its
    models change. Reconnects with exponential back-off when the stream drops. Loads and unloads
    the balancer commands are answered on this stream with the command's control_id."""

    def __init__(
        self,
        core: WorkerCore,
        lifecycle: ModelLifecycle[Runner],
        balancer: str,
        registration: Callable[[], cluster_pb2.WorkerRegistration],
        interval_s: float,
        released: asyncio.Event,
        tls: serving.TlsSettings = serving.PLAINTEXT,
        token: str = "",
    ) -> None:
        self.tls = tls
        self.metadata = serving.bearer(token)
        self.core = core
        self.lifecycle = lifecycle
        self.balancer = balancer
        self.registration = registration
        self.interval_s = interval_s
        self.released = released
        self.updates: asyncio.Queue[cluster_pb2.ModelUpdate] = asyncio.Queue()
        lifecycle.subscribe(self.updates.put_nowait)
        # Strong references to the running loads and unloads.
        self._controls: set[asyncio.Task] = set()

    async def _reports(self) -> AsyncIterator[cluster_pb2.WorkerReport]:
        # Updates queued before this stream opened are in the registration already.
        while not self.updates.empty():
            self.updates.get_nowait()
        yield cluster_pb2.WorkerReport(registration=self.registration())
        while True:
            try:
                update = await asyncio.wait_for(self.updates.get(), self.interval_s)
            except TimeoutError:
                yield cluster_pb2.WorkerReport(load=self.core.load_report())
            else:
                yield cluster_pb2.WorkerReport(models=update)

    async def run(self) -> None:
        backoff = 0.1
        async with serving.channel(self.balancer, self.tls) as channel:
            stub = cluster_pb2_grpc.BalancerStub(channel)
            while True:
                try:
                    call = stub.Heartbeat(self._reports(), metadata=self.metadata)
                    async for command in call:
                        backoff = 0.1
                        self._handle(command)
                    logger.warning("heartbeat stream closed", extra={"balancer": self.balancer})
                except grpc.aio.AioRpcError as error:
                    logger.warning(
                        "heartbeat stream failed; reconnecting",
                        extra={
                            "balancer": self.balancer,
                            "code": error.code().name,
                            # A refused credential says here which flag to fix.
                            "details": error.details(),
                            "backoff_s": backoff,
                        },
                    )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_RECONNECT_BACKOFF_S)

    def _handle(self, command: cluster_pb2.BalancerCommand) -> None:
        if command.action == cluster_pb2.BalancerCommand.DRAIN:
            logger.info("draining", extra={"balancer": self.balancer, "reason": command.reason})
            self.core.draining = True
        elif command.action == cluster_pb2.BalancerCommand.RELEASE:
            logger.info("released by balancer", extra={"balancer": self.balancer})
            self.released.set()
        elif command.action in (
            cluster_pb2.BalancerCommand.LOAD_MODEL,
            cluster_pb2.BalancerCommand.UNLOAD_MODEL,
        ):
            task = asyncio.get_running_loop().create_task(self._control(command))
            self._controls.add(task)
            task.add_done_callback(self._controls.discard)

    async def _control(self, command: cluster_pb2.BalancerCommand) -> None:
        load = command.action == cluster_pb2.BalancerCommand.LOAD_MODEL
        logger.info(
            "loading model" if load else "unloading model",
            extra={"balancer": self.balancer, "model": command.model_name},
        )
        error: TideserveError | None = None
        try:
            if load:
                await self.lifecycle.load(command.model_name)
            else:
                await self.lifecycle.unload(command.model_name)
        except TideserveError as failure:
            error = failure
        except Exception as failure:
            logger.exception("model control failed", extra={"model": command.model_name})
            error = TideserveError(f"worker failed to change model {command.model_name}: {failure}")
        if command.control_id:
            self.updates.put_nowait(self.lifecycle.update(command.control_id, error))


async def _poll_repository(lifecycle: ModelLifecycle[Runner], period_s: float) -> None:
    while True:
        await asyncio.sleep(period_s)
        await lifecycle.poll()


async def build_server(settings: WorkerSettings) -> tuple[serving.Service, int]:
    """The worker, built and bound but not started, and its port. Starting it loads the models
    (health NOT_SERVING until they are), then registers with every balancer; a worker started
    with `exit_on_release` asks to stop once a balancer released it and its batches are done."""
    configure_threads(settings.threads)
    device = resolve_device(settings.device)
    entries = scan(Path(settings.model_repository), settings.models)
    tls = serving.TlsSettings.of(settings)
    token = read_token_file(settings.balancer_token_file)
    guard = ExecuteGuard.from_settings(settings.execute_key_file)
    server = serving.new_server([serving.RoleGuard(SERVICE_NAME, guard)])
    port = serving.bind(server, f"{settings.host}:{settings.port}", tls)
    address = f"{settings.host}:{port}"
    health = await serving.add_health_and_reflection(server, [SERVICE_NAME], serving=False)
    service_profile = (
        ServiceTimeProfile.load(settings.service_profile) if settings.service_profile else None
    )
    emulated = settings.slowdown > 1.0 or service_profile is not None
    runners: dict[str, dict[str, Runner]] = {}
    pinning = CudaHostPinning() if device.type == "cuda" and settings.pin_shared_memory else None
    reader = shared_memory.SegmentReader(pinning=pinning) if settings.shared_memory else None
    shared_inputs = reader if reader is not None and reader.domain else None
    core = WorkerCore(settings.worker_id, runners, shared_inputs)
    registry = metrics.new_registry()
    worker_metrics = WorkerMetrics(registry)
    registry.register(metrics.LoopCollector(asyncio.get_running_loop(), lambda: collect(core)))
    metrics_server = metrics.start_metrics_server(settings.host, settings.metrics_port, registry)
    cluster_pb2_grpc.add_WorkerServicer_to_server(
        WorkerServicer(core, worker_metrics), serving.GenericHandlersOnly(server)
    )

    def build(entry: RepositoryEntry) -> Runner:
        runner = ModelRunner(entry.config, entry.version, entry.model_path, device)
        runner.warm_up()
        if emulated:
            return EmulatedDeviceRunner(runner, settings.slowdown, service_profile)
        return runner

    lifecycle = ModelLifecycle(Path(settings.model_repository), runners, build, settings.models)
    released = asyncio.Event()
    tasks: list[asyncio.Task] = []

    def registration() -> cluster_pb2.WorkerRegistration:
        current = core.registration(address, str(device))
        current.metrics_address = metrics_server.address
        current.execute_key = guard.key
        current.model_statuses.extend(lifecycle.statuses())
        return current

    async def exit_when_released() -> None:
        await released.wait()
        logger.info("drained and released; exiting")
        await core.wait_idle()
        service.stop_requested.set()

    async def started() -> None:
        for entry in entries:
            versions = runners.setdefault(entry.config.name, {})
            versions[entry.version] = await asyncio.to_thread(build, entry)
        await serving.set_serving(health, [SERVICE_NAME])
        logger.info(
            "worker ready",
            extra={
                "worker_id": settings.worker_id,
                "address": address,
                "metrics": metrics_server.address,
                "device": str(device),
                "models": sorted(runners),
            },
        )
        tasks.extend(
            asyncio.create_task(
                HeartbeatClient(
                    core,
                    lifecycle,
                    b,
                    registration,
                    settings.heartbeat_interval_s,
                    released,
                    tls,
                    token,
                ).run()
            )
            for b in settings.balancers
        )
        if settings.repository_poll_s > 0:
            tasks.append(
                asyncio.create_task(_poll_repository(lifecycle, settings.repository_poll_s))
            )
        if settings.exit_on_release:
            tasks.append(asyncio.create_task(exit_when_released()))

    async def stop() -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for versions in runners.values():
            for runner in versions.values():
                runner.close()
        metrics_server.close()

    service = serving.Service(
        server, health, grace_s=settings.grace_s, after_start=started, on_stop=stop
    )
    return service, port


async def serve(settings: WorkerSettings) -> None:
    service, _ = await build_server(settings)
    await service.run()
