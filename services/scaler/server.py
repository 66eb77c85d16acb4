"""Scaler server wiring: the ScalerAdmin service, the cluster watch that feeds the controller,
the tick loop, and the runtime chosen in settings."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from pathlib import Path

import grpc

from services.scaler.auth import AdminAuth
from services.scaler.controller import ScalerController
from services.scaler.guards import GuardConfig
from services.scaler.metrics import collect
from services.scaler.observe import ClusterView
from services.scaler.planner import ServiceProfile
from services.scaler.runtime import ProcessRuntime, WorkerRuntime
from services.scaler.settings import ScalerSettings
from tideserve import metrics, serving
from tideserve.cluster_watch import watch_cluster
from tideserve.credentials import read_token_file
from tideserve.v1 import cluster_pb2 as pb
from tideserve.v1 import cluster_pb2_grpc

logger = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ScalerAdmin"].full_name


class BalancerDrainer:
    """Drains a worker on every balancer at once: it is drained when none holds a batch on it."""

    def __init__(
        self, channels: list[grpc.aio.Channel], auth: tuple[tuple[str, str], ...] = ()
    ) -> None:
        self.stubs = [cluster_pb2_grpc.BalancerStub(c) for c in channels]
        self.auth = auth

    async def drain(self, worker_id: str, wait_s: float) -> bool:
        request = pb.DrainWorkerRequest(worker_id=worker_id, wait=True)
        results = await asyncio.gather(
            *(
                stub.DrainWorker(request, timeout=wait_s + 1.0, metadata=self.auth)
                for stub in self.stubs
            ),
            return_exceptions=True,
        )
        return all(isinstance(r, pb.DrainWorkerResponse) and r.drained for r in results)


class ScalerAdminServicer(cluster_pb2_grpc.ScalerAdminServicer):
    def __init__(self, controller: ScalerController, runtime_name: str) -> None:
        self.controller = controller
        self.runtime_name = runtime_name

    def _status(self) -> pb.ScalerStatus:
        return self.controller.status(self.runtime_name)

    async def GetStatus(
        self, request: pb.GetStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.ScalerStatus:
        return self._status()

    async def ListWorkers(
        self, request: pb.ListWorkersRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListWorkersResponse:
        return pb.ListWorkersResponse(workers=self.controller.list_workers())

    async def SetPolicy(
        self, request: pb.SetPolicyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ScalerStatus:
        self.controller.set_policy(request.name, dict(request.parameters))
        return self._status()

    async def ScaleTo(
        self, request: pb.ScaleToRequest, context: grpc.aio.ServicerContext
    ) -> pb.ScalerStatus:
        self.controller.scale_to(None if request.release else request.replicas)
        return self._status()

    async def SetBounds(
        self, request: pb.SetBoundsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ScalerStatus:
        self.controller.set_bounds(request.min_replicas, request.max_replicas)
        return self._status()

    async def Pause(
        self, request: pb.PauseRequest, context: grpc.aio.ServicerContext
    ) -> pb.ScalerStatus:
        self.controller.paused = True
        return self._status()

    async def Resume(
        self, request: pb.ResumeRequest, context: grpc.aio.ServicerContext
    ) -> pb.ScalerStatus:
        self.controller.paused = False
        return self._status()

    async def DrainWorker(
        self, request: pb.DrainWorkerRequest, context: grpc.aio.ServicerContext
    ) -> pb.DrainWorkerResponse:
        return await self.controller.drain_worker(request.worker_id)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def build_runtime(settings: ScalerSettings) -> WorkerRuntime:
    if settings.runtime == "docker":
        from services.scaler.docker_runtime import create_docker_runtime

        return create_docker_runtime(settings)
    if settings.runtime == "swarm":
        from services.scaler.swarm_runtime import create_swarm_runtime

        return create_swarm_runtime(settings)
    if settings.runtime == "kubernetes":
        from services.scaler.kubernetes_runtime import create_kubernetes_runtime

        return create_kubernetes_runtime(settings)
    return ProcessRuntime(
        [
            "--model-repository",
            settings.model_repository,
            "--balancers",
            ",".join(settings.balancers),
            "--threads",
            str(settings.worker_threads),
            "--device",
            settings.worker_device,
            "--slowdown",
            str(settings.worker_slowdown),
            "--service-profile",
            settings.worker_service_profile,
            # The path, not the token: the worker reads its own token from the file.
            *(
                ("--balancer-token-file", settings.worker_token_file)
                if settings.worker_token_file
                else ()
            ),
        ],
        state_dir=Path(settings.worker_state_dir) if settings.worker_state_dir else None,
    )


class ClusterFollower:
    """Feeds the controller the cluster as every balancer sees it, merged (`ClusterView`)."""

    def __init__(self, controller: ScalerController) -> None:
        self.controller = controller
        self.view = ClusterView()

    async def snapshot(self, address: str, snapshot: pb.ClusterSnapshot) -> None:
        self.controller.observe(self.view.update(address, snapshot))

    async def lost(self, address: str, failure: str) -> None:
        self.view.lost(address)
        logger.warning(
            "cluster watch failed; retrying", extra={"balancer": address, "error": failure}
        )


async def _tick_loop(controller: ScalerController, period_s: float) -> None:
    while True:
        try:
            await controller.tick()
        except Exception:
            logger.exception("scaler tick failed")
        await asyncio.sleep(period_s)


async def build_server(settings: ScalerSettings) -> tuple[serving.Service, int]:
    """The scaler, built and bound but not started, and its port. Its workers are adopted
    here; the cluster watch and the tick loop run from start to shutdown."""
    auth = AdminAuth.from_settings(settings.admin_token_file, settings.admin_identities)
    if auth.open and not is_loopback(settings.host):
        logger.warning(
            "admin RPCs are open to anyone who can reach this address; set admin_token_file",
            extra={"host": settings.host},
        )
    tls = serving.TlsSettings.of(settings)
    channels = [serving.channel(a, tls) for a in settings.balancers]
    balancer_auth = serving.bearer(read_token_file(settings.balancer_token_file))
    runtime = build_runtime(settings)
    controller = ScalerController(
        runtime,
        BalancerDrainer(channels, balancer_auth),
        GuardConfig(
            min_replicas=settings.min_replicas,
            max_replicas=settings.max_replicas,
            up_cooldown_s=settings.up_cooldown_s,
            down_cooldown_s=settings.down_cooldown_s,
            down_stabilisation_s=settings.down_stabilisation_s,
            max_step_up=settings.max_step_up,
            max_step_down=settings.max_step_down,
        ),
        policy=settings.policy,
        policy_parameters=settings.parsed_policy_parameters(),
        slo_s=settings.slo_ms / 1000,
        policy_file=settings.policy_file,
        profile=ServiceProfile.load(settings.profile) if settings.profile else None,
        drain_timeout_s=settings.drain_timeout_s,
        stop_grace_s=settings.stop_grace_s,
        replica_ceiling=settings.replica_ceiling,
    )
    await controller.adopt()
    registry = metrics.new_registry()
    registry.register(
        metrics.LoopCollector(asyncio.get_running_loop(), lambda: collect(controller, runtime.name))
    )
    metrics_server = metrics.start_metrics_server(settings.host, settings.metrics_port, registry)
    server = serving.new_server(interceptors=[serving.RoleGuard(SERVICE_NAME, auth)])
    cluster_pb2_grpc.add_ScalerAdminServicer_to_server(
        ScalerAdminServicer(controller, runtime.name), serving.GenericHandlersOnly(server)
    )
    health = await serving.add_health_and_reflection(server, [SERVICE_NAME])
    port = serving.bind(server, f"{settings.host}:{settings.port}", tls)
    tasks: list[asyncio.Task] = []

    async def started() -> None:
        follower = ClusterFollower(controller)
        tasks.append(
            asyncio.create_task(
                watch_cluster(
                    dict(zip(settings.balancers, channels, strict=True)),
                    follower.snapshot,
                    follower.lost,
                    metadata=balancer_auth,
                )
            )
        )
        tasks.append(asyncio.create_task(_tick_loop(controller, settings.tick_s)))
        logger.info(
            "scaler listening",
            extra={
                "address": f"{settings.host}:{port}",
                "metrics": metrics_server.address,
                "runtime": runtime.name,
                "policy": settings.policy,
                "min_replicas": settings.min_replicas,
                "max_replicas": settings.max_replicas,
                "replica_ceiling": settings.replica_ceiling,
                "admin_auth": "open" if auth.open else "required",
            },
        )

    async def stop() -> None:
        for task in tasks:
            task.cancel()
        await controller.close(settings.stop_workers_on_exit)
        await asyncio.gather(*(c.close() for c in channels))
        metrics_server.close()

    service = serving.Service(
        server, health, grace_s=settings.grace_s, after_start=started, on_stop=stop
    )
    return service, port


async def serve(settings: ScalerSettings) -> None:
    service, _ = await build_server(settings)
    await service.run()
