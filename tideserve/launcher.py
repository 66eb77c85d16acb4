"""`tideserve up`: the whole suite as local processes on loopback — balancer, batcher and scaler
(which starts the workers) — with the default model repository made on first run.

Each service is a separate process, started with PR_SET_PDEATHSIG so none outlives the launcher,
and stopped in order on SIGINT/SIGTERM: batcher first (no new requests), then the scaler (drains
and stops its workers), then the balancer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tideserve import serving
from tideserve.credentials import create_credentials, token_path
from tideserve.procs import child_env
from tideserve.v1 import inference_pb2, inference_pb2_grpc

logger = logging.getLogger(__name__)

STOP_ORDER = ("batcher", "scaler", "balancer")


@dataclass(frozen=True)
class SuiteConfig:
    host: str = "127.0.0.1"
    batcher_port: int = 8001
    balancer_port: int = 8100
    scaler_port: int = 8200
    # Prometheus /metrics of each service (workers pick free ones; the balancer lists them).
    batcher_metrics_port: int = 8002
    balancer_metrics_port: int = 8102
    scaler_metrics_port: int = 8202
    model_repository: Path = Path("model_repository")
    min_replicas: int = 1
    max_replicas: int = 2
    scaler_policy: str = "hpa"
    worker_threads: int = 0
    batcher_processes: int = 1
    log_dir: Path = Path(".tideserve/logs")
    # The per-role balancer tokens, made afresh by every `start` (tokens of an earlier run stop
    # working); None = beside the logs, in the suite's state directory (.tideserve/credentials).
    credentials_dir: Path | None = None
    ready_timeout_s: float = 90.0

    @property
    def credentials(self) -> Path:
        return self.credentials_dir or self.log_dir.parent / "credentials"

    def token_file(self, role: str) -> str:
        return str(token_path(self.credentials, role))

    @property
    def batcher(self) -> str:
        return f"{self.host}:{self.batcher_port}"

    @property
    def balancer(self) -> str:
        return f"{self.host}:{self.balancer_port}"

    @property
    def scaler(self) -> str:
        return f"{self.host}:{self.scaler_port}"


def service_commands(config: SuiteConfig) -> dict[str, list[str]]:
    python = [sys.executable, "-m"]
    return {
        "balancer": [
            *python,
            "services.balancer",
            "--host",
            config.host,
            "--port",
            str(config.balancer_port),
            "--metrics-port",
            str(config.balancer_metrics_port),
            "--credentials-dir",
            str(config.credentials),
        ],
        "batcher": [
            *python,
            "services.batcher",
            "--host",
            config.host,
            "--port",
            str(config.batcher_port),
            "--metrics-port",
            str(config.batcher_metrics_port),
            "--balancers",
            config.balancer,
            "--processes",
            str(config.batcher_processes),
            "--balancer-token-file",
            config.token_file("batcher"),
        ],
        "scaler": [
            *python,
            "services.scaler",
            "--host",
            config.host,
            "--port",
            str(config.scaler_port),
            "--metrics-port",
            str(config.scaler_metrics_port),
            "--balancers",
            config.balancer,
            "--runtime",
            "process",
            "--model-repository",
            str(config.model_repository),
            "--min-replicas",
            str(config.min_replicas),
            "--max-replicas",
            str(config.max_replicas),
            "--policy",
            config.scaler_policy,
            "--worker-threads",
            str(config.worker_threads),
            "--balancer-token-file",
            config.token_file("scaler"),
            "--worker-token-file",
            config.token_file("worker"),
        ],
    }


class Suite:
    def __init__(self, config: SuiteConfig) -> None:
        self.config = config
        self.processes: dict[str, subprocess.Popen] = {}

    def start(self) -> None:
        self.config.log_dir.mkdir(parents=True, exist_ok=True)
        create_credentials(self.config.credentials)
        for name, command in service_commands(self.config).items():
            log = (self.config.log_dir / f"{name}.log").open("ab")
            self.processes[name] = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=child_env()
            )
            log.close()

    async def wait_ready(self, model: str | None) -> None:
        """Until every service reports SERVING and the batcher has a ready model (or `model`)."""
        deadline = time.monotonic() + self.config.ready_timeout_s
        for address in (self.config.balancer, self.config.scaler, self.config.batcher):
            await _wait_serving(address, deadline, self)
        async with serving.channel(self.config.batcher) as channel:
            stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
            while True:
                self.check_alive()
                with contextlib.suppress(grpc.aio.AioRpcError):
                    if model is None:
                        ready = (await stub.ServerReady(inference_pb2.ServerReadyRequest())).ready
                    else:
                        ready = (
                            await stub.ModelReady(inference_pb2.ModelReadyRequest(name=model))
                        ).ready
                    if ready:
                        return
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"no model became ready; see the logs in {self.config.log_dir}"
                    )
                await asyncio.sleep(0.2)

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with code {process.returncode}; see "
                    f"{self.config.log_dir / (name + '.log')}"
                )

    def stop(self, timeout_s: float = 20.0) -> None:
        for name in STOP_ORDER:
            process = self.processes.get(name)
            if process is None or process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop in %.0f s; killing", name, timeout_s)
                process.kill()
                process.wait()


async def _wait_serving(address: str, deadline: float, suite: Suite) -> None:
    async with serving.channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            suite.check_alive()
            with contextlib.suppress(grpc.aio.AioRpcError):
                response = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{address} did not become healthy in time")
            await asyncio.sleep(0.1)
