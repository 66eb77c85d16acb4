"""The batcher's readiness tells the truth, and its errors name the part that failed, on real
processes: health and the health probe follow the batcher's stream to its balancer (killed,
stopped, restarted); ModelReady follows that and the workers serving the model, ServerReady
both (some model can be served); requests sent while the balancer is down wait for it, or fail
naming it; a worker that dies with the batch and a model without a ready worker each get their
own reason."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from harness.cluster import Cluster, free_port, sync_channel, wait_for
from services.batcher.server import SERVICE_NAME
from tideserve import healthprobe
from tideserve.metadata import REASON_KEY
from tideserve.v1 import inference_pb2 as pb
from tideserve.v1 import inference_pb2_grpc

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

MODEL = "tiny_cnn"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# Generous bounds, only so a broken build fails instead of hanging; measured times are printed.
FLIP_BOUND_S = 5.0


def infer_request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="INPUT__0", datatype="FP32", shape=[1, 1, 28, 28])
    request.raw_input_contents.append(np.full((1, 1, 28, 28), 0.5, "<f4").tobytes())
    return request


class Probe:
    """The batcher's health (whole server and inference service), ServerReady and ModelReady."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.channel = sync_channel(address)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.inference = inference_pb2_grpc.GRPCInferenceServiceStub(self.channel)

    def status(self, service: str = "") -> int:
        request = health_pb2.HealthCheckRequest(service=service)
        return self.health.Check(request, timeout=2).status

    def server_ready(self) -> bool:
        return self.inference.ServerReady(pb.ServerReadyRequest(), timeout=2).ready

    def model_ready(self) -> bool:
        return self.inference.ModelReady(pb.ModelReadyRequest(name=MODEL), timeout=2).ready

    def all_serving(self) -> bool:
        return self.status() == SERVING and self.status(SERVICE_NAME) == SERVING

    def none_serving(self) -> bool:
        return self.status() == NOT_SERVING and self.status(SERVICE_NAME) == NOT_SERVING

    def infer(self, timeout: float | None = 60.0) -> pb.ModelInferResponse:
        return self.inference.ModelInfer(infer_request(), timeout=timeout)

    def close(self) -> None:
        self.channel.close()


def seconds_until(predicate, bound_s: float, what: str) -> float:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    wait_for(predicate, bound_s, what, interval_s=0.01)
    return time.monotonic() - started


def restart_balancer(cluster: Cluster) -> None:
    cluster.spawn(
        "balancer",
        "services.balancer",
        "--port",
        str(cluster.balancer_port),
        "--metrics-port",
        str(free_port()),
        *cluster.balancer_flags(),
        *cluster.balancer_args,
    )
    cluster.wait_serving("balancer", cluster.balancer)


def reason(error: grpc.RpcError) -> str:
    return dict(error.trailing_metadata() or ()).get(REASON_KEY, "")  # type: ignore[attr-defined]


@pytest.fixture
def cluster(model_repository: Path, tmp_path: Path) -> Iterator[Cluster]:
    # A long grace period: a stopped balancer would keep its streams open that long unless it
    # ends them itself, so the SIGTERM case below shows that it does.
    running = Cluster(model_repository, tmp_path, balancer_args=("--grace-s", "30"))
    running.start(workers=1)
    yield running
    running.stop()


def test_readiness_follows_the_balancer_killed_stopped_and_restarted(cluster: Cluster) -> None:
    probe = Probe(cluster.batcher)
    try:
        assert probe.all_serving()
        assert probe.server_ready()
        assert probe.model_ready()
        assert healthprobe.main([cluster.batcher]) == 0

        os.kill(cluster.processes["balancer"].pid, signal.SIGKILL)
        killed = seconds_until(probe.none_serving, FLIP_BOUND_S, "NOT_SERVING after SIGKILL")
        assert not probe.server_ready()
        assert not probe.model_ready(), "no balancer: the workers it knew cannot be reached"
        assert healthprobe.main([cluster.batcher]) == 1
        assert healthprobe.main([cluster.batcher, "--service", SERVICE_NAME]) == 1
        assert healthprobe.main([cluster.batcher, "--live"]) == 0, "alive, holding requests"
        assert healthprobe.main([cluster.balancer, "--live"]) == 1

        cluster.processes["balancer"].wait()
        restart_balancer(cluster)
        back = seconds_until(probe.all_serving, 30, "SERVING once the balancer is back")
        wait_for(probe.model_ready, 30, "the worker registered with the new balancer")
        assert probe.server_ready()
        assert healthprobe.main([cluster.batcher]) == 0

        cluster.processes["balancer"].send_signal(signal.SIGTERM)
        stopped = seconds_until(probe.none_serving, 10, "NOT_SERVING after SIGTERM (grace 30 s)")
        assert not probe.server_ready()
        print(
            f"batcher NOT_SERVING {killed:.2f} s after the balancer's SIGKILL, "
            f"{stopped:.2f} s after its SIGTERM; SERVING {back:.2f} s after its restart"
        )
    finally:
        probe.close()


def test_a_frozen_balancer_is_noticed_by_keepalive(cluster: Cluster) -> None:
    """SIGSTOP keeps the balancer's connections open: only the channel's keepalive pings, left
    unanswered, can tell the batcher its stream is dead."""
    probe = Probe(cluster.batcher)
    pid = cluster.processes["balancer"].pid
    try:
        os.kill(pid, signal.SIGSTOP)
        frozen = seconds_until(probe.none_serving, 20, "NOT_SERVING with the balancer frozen")
        os.kill(pid, signal.SIGCONT)
        thawed = seconds_until(probe.all_serving, 30, "SERVING with the balancer thawed")
    finally:
        os.kill(pid, signal.SIGCONT)
        probe.close()
    print(
        f"batcher NOT_SERVING {frozen:.2f} s after the balancer froze, SERVING {thawed:.2f} s "
        "after it thawed"
    )


def test_requests_sent_while_the_balancer_is_down_succeed_once_it_is_back(
    cluster: Cluster,
) -> None:
    probe = Probe(cluster.batcher)
    try:
        os.kill(cluster.processes["balancer"].pid, signal.SIGKILL)
        cluster.processes["balancer"].wait()
        wait_for(probe.none_serving, FLIP_BOUND_S, "NOT_SERVING")
        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(probe.infer, None) for _ in range(8)]
            time.sleep(1.0)
            assert not any(f.done() for f in futures), "held while no balancer is reachable"
            restart_balancer(cluster)
            responses = [f.result(timeout=30) for f in futures]
        assert all(r.outputs[0].name == "OUTPUT__0" for r in responses)
    finally:
        probe.close()


@pytest.fixture
def short_hold(model_repository: Path, tmp_path: Path) -> Iterator[Cluster]:
    running = Cluster(model_repository, tmp_path, batcher_args=("--balancer-hold-s", "1"))
    running.start(workers=1)
    yield running
    running.stop()


def test_requests_fail_naming_the_balancer_after_the_hold(short_hold: Cluster) -> None:
    cluster = short_hold
    probe = Probe(cluster.batcher)
    try:
        os.kill(cluster.processes["balancer"].pid, signal.SIGKILL)
        cluster.processes["balancer"].wait()
        wait_for(probe.none_serving, FLIP_BOUND_S, "NOT_SERVING")

        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as held:
            probe.infer(timeout=None)
        waited = time.monotonic() - started
        with pytest.raises(grpc.RpcError) as late:
            probe.infer(timeout=0.5)
    finally:
        probe.close()

    assert held.value.code() == grpc.StatusCode.UNAVAILABLE
    assert reason(held.value) == "balancer-unreachable"
    assert f"balancer {cluster.balancer} unreachable" in held.value.details()
    assert "no balancer is reachable" in held.value.details()
    assert waited >= 1.0, "held for balancer_hold_s first"
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    print(f"a request without a deadline failed after {waited:.2f} s: {held.value.details()}")


@pytest.fixture
def slow_worker(model_repository: Path, tmp_path: Path) -> Iterator[Cluster]:
    """One worker that takes 5 s per batch, so a batch is surely on it when it is killed."""
    profile = tmp_path / "slow.json"
    profile.write_text(json.dumps({"model": MODEL, "batch_sizes": [1, 64], "seconds": [5, 5]}))
    running = Cluster(model_repository, tmp_path, worker_args=("--service-profile", str(profile)))
    running.start(workers=1)
    yield running
    running.stop()


def test_worker_lost_and_no_ready_worker_have_their_own_reasons(slow_worker: Cluster) -> None:
    cluster = slow_worker
    probe = Probe(cluster.batcher)
    try:
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(probe.infer, 60.0)
            wait_for(
                lambda: any(w.outstanding_batches for w in cluster.snapshot().workers),
                30,
                "a batch on the worker",
            )
            worker = cluster.snapshot().workers[0]
            os.kill(cluster.processes["worker-0"].pid, signal.SIGKILL)
            with pytest.raises(grpc.RpcError) as lost:
                pending.result(timeout=30)
        cluster.processes["worker-0"].wait()

        wait_for(lambda: not probe.model_ready(), FLIP_BOUND_S, "ModelReady false")
        assert probe.all_serving(), "the balancer is fine; only the model has no worker"
        assert not probe.server_ready(), "no model can be served"
        with pytest.raises(grpc.RpcError) as none:
            probe.infer(60.0)

        cluster.add_worker("worker-1")
        wait_for(probe.model_ready, 60, "ModelReady true with a new worker")
    finally:
        probe.close()

    assert lost.value.code() == grpc.StatusCode.UNAVAILABLE
    assert reason(lost.value) == "worker-lost"
    assert f"worker worker-0 at {worker.address} died with the batch" in lost.value.details()
    assert none.value.code() == grpc.StatusCode.UNAVAILABLE
    assert reason(none.value) == "no-ready-worker"
    assert f"no ready worker serves model '{MODEL}'" in none.value.details()
    assert "no balancer" not in lost.value.details(), "the balancer was fine"


def test_a_batch_on_a_balancer_killed_under_it_is_sent_again_once_one_is_back(
    slow_worker: Cluster,
) -> None:
    cluster = slow_worker
    probe = Probe(cluster.batcher)
    try:
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(probe.infer, None)
            wait_for(
                lambda: any(w.outstanding_batches for w in cluster.snapshot().workers),
                30,
                "a batch on the worker",
            )
            os.kill(cluster.processes["balancer"].pid, signal.SIGKILL)
            cluster.processes["balancer"].wait()
            wait_for(probe.none_serving, FLIP_BOUND_S, "NOT_SERVING")
            restart_balancer(cluster)
            response = pending.result(timeout=60)
    finally:
        probe.close()

    assert response.outputs[0].name == "OUTPUT__0"


def test_typed_contents_in_the_wrong_field_are_refused_naming_it(slow_worker: Cluster) -> None:
    request = pb.ModelInferRequest(model_name=MODEL)
    tensor = request.inputs.add(name="INPUT__0", datatype="FP32", shape=[1, 1, 28, 28])
    tensor.contents.int_contents.extend([1] * 784)
    probe = Probe(slow_worker.batcher)
    try:
        with pytest.raises(grpc.RpcError) as refused:
            probe.inference.ModelInfer(request, timeout=10)
        assert probe.server_ready(), "the batcher keeps serving"
    finally:
        probe.close()

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == (
        "input 'INPUT__0' is FP32: put its values in fp32_contents (got int_contents)"
    )
