"""Each service's metrics move as work flows through its logic: driven on fakes, read back from
the registry the service's /metrics endpoint renders."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from services.balancer.core import BalancerCore
from services.balancer.metrics import BalancerMetrics, worker_targets
from services.balancer.metrics import collect as balancer_collect
from services.balancer.registry import WorkerTable
from services.batcher.core import BatcherCore
from services.batcher.metrics import BatcherMetrics
from services.batcher.metrics import collect as batcher_collect
from services.scaler.controller import ScalerController
from services.scaler.guards import GuardConfig
from services.scaler.metrics import collect as scaler_collect
from services.scaler.runtime import ManagedWorker
from services.worker.metrics import WorkerMetrics
from services.worker.metrics import collect as worker_collect
from services.worker.server import WorkerServicer
from tests.unit.batcher.test_batcher_core import MODEL, EchoDispatcher, catalog_with, infer_request
from tests.unit.batcher.test_batcher_core import model_config as batcher_model_config
from tideserve import metrics
from tideserve.errors import NotFound
from tideserve.v1 import cluster_pb2


def registry_with(read: Any) -> CollectorRegistry:
    registry = metrics.new_registry()
    registry.register(metrics.LoopCollector(asyncio.get_running_loop(), read))
    return registry


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_batcher_counts_requests_and_batches_and_reads_queue_depth() -> None:
    dispatcher = EchoDispatcher()
    registry = metrics.new_registry()
    batcher_metrics = BatcherMetrics(
        registry, lambda model: model == MODEL, versions=lambda model: ("1", "2")
    )
    core = BatcherCore(
        catalog_with(batcher_model_config(max_batch_size=8)),
        dispatcher,
        inflight_per_instance=1,
        metrics=batcher_metrics,
    )
    registry.register(
        metrics.LoopCollector(asyncio.get_running_loop(), lambda: batcher_collect(core))
    )
    dispatcher.gate.clear()
    futures = [core.submit(infer_request(0), None)]
    await settle()
    futures += [core.submit(infer_request(i), None) for i in range(1, 5)]
    await settle()
    # The first request left alone (a free slot); four wait behind it.
    assert value(registry, "tideserve_batcher_queue_depth_requests", model=MODEL) == 4
    assert value(registry, "tideserve_batcher_inflight_batches", model=MODEL) == 1
    dispatcher.gate.set()
    await asyncio.gather(*futures)
    await settle()
    for _ in futures:
        batcher_metrics.request_done(MODEL, "OK", 0.002, "1")
    batcher_metrics.request_done(MODEL, "OK", 0.004, "2")
    batcher_metrics.request_done(MODEL, "NOT_FOUND", None, "99")
    batcher_metrics.request_done("no-such-model", "NOT_FOUND", None, "1")
    batcher_metrics.request_done("x" * 1000, "INVALID_ARGUMENT", None)

    def requests(model: str, version: str, code: str) -> float:
        return value(
            registry, "tideserve_batcher_requests_total", model=model, version=version, code=code
        )

    assert requests(MODEL, "1", "OK") == 5
    assert requests(MODEL, "2", "OK") == 1
    assert requests(MODEL, "", "NOT_FOUND") == 1, "a version not served gets no series"
    assert requests("(unknown)", "", "NOT_FOUND") == 1
    assert requests("(unknown)", "", "INVALID_ARGUMENT") == 1, (
        "a model the batcher does not serve gets no series of its own, whatever the code"
    )
    duration = "tideserve_batcher_request_duration_seconds"
    assert value(registry, f"{duration}_count", model=MODEL, version="1") == 5
    assert value(registry, f"{duration}_sum", model=MODEL, version="2") == pytest.approx(0.004)
    assert value(registry, "tideserve_batcher_batch_size_rows_count", model=MODEL) == 2
    assert value(registry, "tideserve_batcher_batch_size_rows_sum", model=MODEL) == 5
    assert value(registry, "tideserve_batcher_queue_depth_requests", model=MODEL) == 0
    assert value(registry, "tideserve_batcher_ready_workers", model=MODEL) == 1
    core.close()


class GatedTransport:
    def __init__(self) -> None:
        self.gate = asyncio.Event()

    async def execute(
        self, address: str, payload: bytes, timeout: float | None, *, key: str
    ) -> bytes:
        await self.gate.wait()
        return b"result"

    def forget(self, address: str) -> None:
        pass


def worker_registration(worker_id: str) -> cluster_pb2.WorkerRegistration:
    registration = cluster_pb2.WorkerRegistration(
        worker_id=worker_id,
        address=f"127.0.0.1:{worker_id[-1]}000",
        device="cpu",
        metrics_address=f"127.0.0.1:{worker_id[-1]}001",
    )
    registration.models.add(versions=["1"]).config.name = MODEL
    return registration


async def test_balancer_reads_worker_load_and_serves_discovery() -> None:
    transport = GatedTransport()
    core = BalancerCore(WorkerTable(), transport, policy="least_load")
    registry = registry_with(lambda: balancer_collect(core))
    balancer_metrics = BalancerMetrics(registry)
    await core.connect(worker_registration("w1"))
    await core.connect(worker_registration("w2"))
    assert value(registry, "tideserve_balancer_workers", phase="ready") == 2

    pending = asyncio.create_task(core.dispatch(MODEL, 3, b"batch", None))
    await settle()
    outstanding = sum(
        value(registry, "tideserve_balancer_worker_outstanding_batches", worker_id=w)
        for w in ("w1", "w2")
    )
    assert outstanding == 1
    transport.gate.set()
    await pending
    balancer_metrics.dispatch_done(MODEL, "OK", 0.01)
    assert value(registry, "tideserve_balancer_batches_dispatched_total") == 1
    assert value(registry, "tideserve_balancer_rows_dispatched_total") == 3
    assert value(registry, "tideserve_balancer_dispatches_total", model=MODEL, code="OK") == 1

    await core.drain("w2", None)
    assert value(registry, "tideserve_balancer_workers", phase="draining") == 1
    targets = worker_targets(core.snapshot())
    assert {t["targets"][0]: t["labels"]["worker_id"] for t in targets} == {
        "127.0.0.1:1001": "w1",
        "127.0.0.1:2001": "w2",
    }


class FakeWorkerCore:
    def __init__(self) -> None:
        self.queued = 0
        self.inflight = 0
        self.busy_seconds = 0.0
        self.draining = False

    async def execute(
        self, batch: cluster_pb2.Batch, deadline: float | None
    ) -> cluster_pb2.BatchResult:
        if batch.model_name != MODEL:
            raise NotFound(f"no model {batch.model_name}")
        self.busy_seconds += 0.003
        return cluster_pb2.BatchResult(queue_seconds=0.001, compute_seconds=0.003)


class FakeContext:
    def time_remaining(self) -> float | None:
        return None


async def test_worker_counts_batches_and_times_them() -> None:
    core = FakeWorkerCore()
    registry = registry_with(lambda: worker_collect(core))  # type: ignore[arg-type]
    servicer = WorkerServicer(core, WorkerMetrics(registry))  # type: ignore[arg-type]
    for index in range(3):
        await servicer.Execute(
            cluster_pb2.Batch(batch_id=f"b{index}", model_name=MODEL), FakeContext()
        )
    with pytest.raises(NotFound):
        await servicer.Execute(cluster_pb2.Batch(model_name="other"), FakeContext())

    assert value(registry, "tideserve_worker_batches_total", model=MODEL, code="OK") == 3
    assert value(registry, "tideserve_worker_batches_total", model="other", code="NOT_FOUND") == 1
    assert value(registry, "tideserve_worker_compute_seconds_count", model=MODEL) == 3
    assert value(registry, "tideserve_worker_compute_seconds_sum", model=MODEL) == pytest.approx(
        0.009
    )
    assert value(registry, "tideserve_worker_busy_seconds_total") == pytest.approx(0.009)


class InstantRuntime:
    name = "fake"

    def __init__(self) -> None:
        self.ids = itertools.count()

    async def start(self, worker_id: str) -> ManagedWorker:
        return ManagedWorker(worker_id, str(next(self.ids)), started_unix=0.0)

    async def stop(self, worker: ManagedWorker, grace_s: float) -> None:
        pass

    async def list(self) -> list[ManagedWorker]:
        return []

    async def reap(self) -> list[ManagedWorker]:
        return []

    async def close(self) -> None:
        pass


class InstantDrainer:
    async def drain(self, worker_id: str, wait_s: float) -> bool:
        return True


async def test_scaler_reports_replicas_decisions_and_starts() -> None:
    controller = ScalerController(
        InstantRuntime(),
        InstantDrainer(),
        GuardConfig(min_replicas=1, max_replicas=4, up_cooldown_s=0, down_cooldown_s=0),
        policy="static",
        policy_parameters={"replicas": 3},
    )
    registry = registry_with(lambda: scaler_collect(controller, "fake"))
    assert value(registry, "tideserve_scaler_worker_starts_total", runtime="fake") == 0
    await controller.tick()
    await settle()

    assert value(registry, "tideserve_scaler_worker_starts_total", runtime="fake") == 3
    assert value(registry, "tideserve_scaler_replicas", state="starting") == 3
    assert value(registry, "tideserve_scaler_desired_replicas") == 3
    assert value(registry, "tideserve_scaler_decisions_total", policy="static", direction="up") == 1
    assert (
        value(
            registry,
            "tideserve_scaler_policy_info",
            policy="static",
            paused="false",
            pinned="false",
            fallback="false",
        )
        == 1
    )
    assert (
        value(registry, "tideserve_scaler_policy_input", policy="static", input="current_replicas")
        == 3
    )

    controller.set_policy("static", {"replicas": 1})
    await controller.tick()
    await settle()
    assert value(registry, "tideserve_scaler_worker_stops_total", runtime="fake") == 2
    assert (
        value(registry, "tideserve_scaler_decisions_total", policy="static", direction="down") == 1
    )
