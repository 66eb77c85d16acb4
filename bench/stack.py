"""The real local stack for scaling benchmarks and tests: balancer, batcher and a scaler with the
process runtime (which starts the workers), each a `python -m services.<name>` process on free
loopback ports, plus an open-loop load generator that follows a rate schedule.

Unlike `tideserve_tools.launcher.Suite`, the scaler here takes any settings (policy, profile, SLO,
cooldowns), which these experiments vary."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tideserve import serving
from tideserve.credentials import create_credentials, read_secret, token_path
from tideserve.procs import child_env, free_port
from tideserve.v1 import cluster_pb2, cluster_pb2_grpc, inference_pb2_grpc
from tideserve_tools.loadgen import sample_request

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class LocalStack:
    """Balancer + batcher + scaler on 127.0.0.1; `scaler_args` are scaler flags."""

    model_repository: Path
    log_dir: Path
    scaler_args: Sequence[str] = ()
    ports: dict[str, int] = field(default_factory=lambda: {
        name: free_port() for name in ("balancer", "batcher", "scaler")})
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"

    def token_file(self, role: str) -> str:
        """`role`'s balancer token, made fresh by `start` as `tideserve up` makes them."""
        return str(token_path(self.log_dir / "credentials", role))

    def operator_auth(self) -> tuple[tuple[str, str], ...]:
        """Call metadata for this stack's balancer, as an operator."""
        return serving.bearer(read_secret(self.token_file("operator")))

    def _spawn(self, name: str, *args: str) -> None:
        log = (self.log_dir / f"{name}.log").open("ab")
        # Metrics ports are picked free too, so two stacks never collide.
        env = {**os.environ, "PYTHONPATH": str(ROOT),
               f"TIDESERVE_{name.upper()}_METRICS_PORT": str(free_port())}
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", f"services.{name}", "--port", str(self.ports[name]), *args],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=child_env(env),
        )
        log.close()

    def start(self) -> LocalStack:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        credentials = create_credentials(self.log_dir / "credentials")
        balancer = self.address("balancer")
        self._spawn("balancer", "--credentials-dir", str(self.log_dir / "credentials"))
        self._spawn("batcher", "--balancers", balancer,
                    "--balancer-token-file", str(credentials["batcher"]))
        self._spawn("scaler", "--balancers", balancer, "--runtime", "process",
                    "--model-repository", str(self.model_repository),
                    "--balancer-token-file", str(credentials["scaler"]),
                    "--worker-token-file", str(credentials["worker"]), *self.scaler_args)
        for name in ("balancer", "batcher", "scaler"):
            self._wait_serving(name)
        return self

    def _wait_serving(self, name: str, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        with grpc.insecure_channel(self.address(name)) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if self.processes[name].poll() is not None:
                    raise RuntimeError(f"{name} exited; see {self.log_dir / name}.log")
                with contextlib.suppress(grpc.RpcError):
                    response = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if response.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name} not SERVING after {timeout_s} s")
                time.sleep(0.1)

    def status(self) -> cluster_pb2.ScalerStatus:
        with grpc.insecure_channel(self.address("scaler")) as channel:
            stub = cluster_pb2_grpc.ScalerAdminStub(channel)
            return stub.GetStatus(cluster_pb2.GetStatusRequest(), timeout=5)

    def wait_ready_workers(self, count: int, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.status().ready_replicas < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"fewer than {count} ready workers after {timeout_s} s")
            time.sleep(0.2)

    def stop(self) -> None:
        """Batcher first (no new requests), then the scaler (drains its workers), balancer."""
        for name in ("batcher", "scaler", "balancer"):
            process = self.processes.get(name)
            if process is None or process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@dataclass
class OpenLoopResult:
    """Per request: send time (s from start), latency (s, inf if it failed), error code."""

    sent_at: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    started_unix: float = 0.0  # wall-clock time of send time 0

    def within(self, slo_s: float) -> float:
        lat = np.asarray(self.latency)
        return float(np.mean(lat <= slo_s)) if lat.size else 1.0

    @property
    def failed(self) -> int:
        return sum(self.errors.values())


def arrival_times(rates: Sequence[float], *, cv: float = 1.0, seed: int = 0) -> list[float]:
    """Send times (s from the start) for `rates[k]` requests/s during second k: inter-arrival
    times drawn from a Gamma with the given CV (CV 1 is Poisson), restarted at each second."""
    rng = np.random.default_rng(seed)
    shape = 1.0 / cv**2
    times: list[float] = []
    for second, rate in enumerate(rates):
        t = float(second)
        while rate > 0:
            t += rng.gamma(shape, 1.0 / (rate * shape))
            if t >= second + 1:
                break
            times.append(t)
    return times


def per_second(times: Sequence[float], seconds: int) -> list[int]:
    """How many of `times` fall in each of the first `seconds` seconds."""
    counts, _ = np.histogram(times, bins=seconds, range=(0, seconds))
    return [int(c) for c in counts]


async def open_loop(
    address: str, model: str, rates: Sequence[float], *, cv: float = 1.0, seed: int = 0,
    timeout_s: float = 10.0, max_in_flight: int = 2000, times: Sequence[float] | None = None,
) -> OpenLoopResult:
    """Send requests at `arrival_times(rates, cv=cv, seed=seed)` (or at the given `times`),
    whatever the responses do: open loop, so a slow cluster sees the load a real client
    population would send. Requests beyond `max_in_flight` outstanding are counted as failed
    (RESOURCE_EXHAUSTED) rather than sent, bounding the generator."""
    if times is None:
        times = arrival_times(rates, cv=cv, seed=seed)
    result = OpenLoopResult()
    async with serving.channel(address) as channel:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = await sample_request(stub, model)
        in_flight: set[asyncio.Task] = set()

        async def one(index: int) -> None:
            started = time.perf_counter()
            try:
                await stub.ModelInfer(request, timeout=timeout_s)
                result.latency[index] = time.perf_counter() - started
            except grpc.aio.AioRpcError as error:
                result.errors[error.code().name] = result.errors.get(error.code().name, 0) + 1

        began = time.perf_counter()
        result.started_unix = time.time()
        for t in times:
            delay = began + t - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            result.sent_at.append(t)
            result.latency.append(float("inf"))
            if len(in_flight) >= max_in_flight:
                result.errors["RESOURCE_EXHAUSTED"] = result.errors.get("RESOURCE_EXHAUSTED", 0) + 1
                continue
            task = asyncio.create_task(one(len(result.latency) - 1))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        await asyncio.gather(*in_flight)
    return result
