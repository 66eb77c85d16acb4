"""Real tideserve processes on loopback for integration tests and benchmarks: each service is
started the way an operator starts it (`python -m services.<name>`), on free ports, and torn down
afterwards."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from tideserve.credentials import create_credentials, read_secret, token_path
from tideserve.grpc_options import CHANNEL_OPTIONS
from tideserve.healthprobe import wait_serving
from tideserve.procs import free_port
from tideserve.serving import PLAINTEXT, TlsSettings, bearer, channel_credentials
from tideserve.v1 import cluster_pb2, cluster_pb2_grpc, inference_pb2, inference_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent


def sync_channel(address: str, tls: TlsSettings = PLAINTEXT) -> grpc.Channel:
    """A blocking client channel, secure when `tls` says so (as `serving.channel` for aio)."""
    if tls.secure_client:
        return grpc.secure_channel(address, channel_credentials(tls), options=CHANNEL_OPTIONS)
    return grpc.insecure_channel(address, options=CHANNEL_OPTIONS)


def wait_for(predicate, timeout_s: float, what: str, interval_s: float = 0.05):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(grpc.RpcError):
            value = predicate()
            if value:
                return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


@dataclass
class Cluster:
    """Balancer + batcher + N workers started directly (no scaler), for tests that need to kill
    or inspect individual processes."""

    repository: Path
    log_dir: Path
    balancer_port: int = field(default_factory=free_port)
    batcher_port: int = field(default_factory=free_port)
    # Free ports rather than the documented defaults, so clusters of concurrent test runs coexist.
    balancer_metrics_port: int = field(default_factory=free_port)
    batcher_metrics_port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    worker_args: tuple[str, ...] = ()
    balancer_args: tuple[str, ...] = ()
    batcher_args: tuple[str, ...] = ()
    # Ports of further balancers, started as balancer-1, balancer-2...: every worker heartbeats
    # to all of them and the batcher spreads batches over all of them.
    extra_balancer_ports: tuple[int, ...] = ()
    # Every service runs with these certificates (`--tls-*`), and the cluster's own checks use
    # them as a client; PLAINTEXT by default.
    tls: TlsSettings = PLAINTEXT

    @property
    def balancer(self) -> str:
        return f"127.0.0.1:{self.balancer_port}"

    @property
    def credentials_dir(self) -> Path:
        """The per-role balancer tokens of this cluster, made fresh by `start` as `tideserve up`
        makes them, so every test runs the authenticated path."""
        return self.log_dir / "credentials"

    def token_file(self, role: str) -> str:
        return str(token_path(self.credentials_dir, role))

    def auth(self, role: str = "operator") -> tuple[tuple[str, str], ...]:
        """Call metadata carrying `role`'s token, for calls to the balancer."""
        return bearer(read_secret(self.token_file(role)))

    def balancer_flags(self) -> tuple[str, ...]:
        return ("--credentials-dir", str(self.credentials_dir))

    def scaler_flags(self) -> tuple[str, ...]:
        """What a scaler started against this cluster needs to reach its balancers."""
        return ("--balancer-token-file", self.token_file("scaler"),
                "--worker-token-file", self.token_file("worker"))

    @property
    def balancers(self) -> str:
        """Every balancer, comma-separated as the --balancers flag takes them."""
        ports = (self.balancer_port, *self.extra_balancer_ports)
        return ",".join(f"127.0.0.1:{port}" for port in ports)

    @property
    def batcher(self) -> str:
        return f"127.0.0.1:{self.batcher_port}"

    def spawn(
        self, name: str, module: str, *args: str, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen:
        """Start `module` with `args`; `env` adds to (or overrides) this process's environment."""
        log = (self.log_dir / f"{name}.log").open("ab")
        pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, **(env or {}), "PYTHONPATH": pythonpath}
        process = subprocess.Popen(
            [sys.executable, "-m", module, *args, *self.tls_flags()],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
        log.close()
        self.processes[name] = process
        return process

    def tls_flags(self) -> tuple[str, ...]:
        fields = (("--tls-cert", self.tls.cert), ("--tls-key", self.tls.key),
                  ("--tls-ca", self.tls.ca))
        return tuple(item for flag, value in fields if value for item in (flag, value))

    def start(self, workers: int = 1) -> Cluster:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        create_credentials(self.credentials_dir)
        self.spawn(
            "balancer",
            "services.balancer",
            "--port",
            str(self.balancer_port),
            "--metrics-port",
            str(self.balancer_metrics_port),
            *self.balancer_flags(),
            *self.balancer_args,
        )
        self.wait_serving("balancer", self.balancer)
        for index, port in enumerate(self.extra_balancer_ports, start=1):
            self.spawn(
                f"balancer-{index}",
                "services.balancer",
                "--port",
                str(port),
                "--metrics-port",
                str(free_port()),
                *self.balancer_flags(),
                *self.balancer_args,
            )
            self.wait_serving(f"balancer-{index}", f"127.0.0.1:{port}")
        for index in range(workers):
            self.add_worker(f"worker-{index}")
        self.spawn(
            "batcher",
            "services.batcher",
            "--port",
            str(self.batcher_port),
            "--metrics-port",
            str(self.batcher_metrics_port),
            "--balancers",
            self.balancers,
            "--balancer-token-file",
            self.token_file("batcher"),
            *self.batcher_args,
        )
        self.wait_serving("batcher", self.batcher)
        if workers:
            self.wait_workers(workers)
        return self

    def wait_serving(self, name: str, address: str) -> None:
        wait_healthy(address, tls=self.tls, process=self.processes[name],
                     log=self.log_dir / f"{name}.log")

    def registered(self) -> set[str]:
        """Worker ids the balancer has registered right now."""
        return {w.worker_id for w in self.snapshot().workers}

    def add_worker(
        self, worker_id: str, *extra: str, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen:
        return self.spawn(
            worker_id,
            "services.worker",
            "--worker-id",
            worker_id,
            "--model-repository",
            str(self.repository),
            "--balancers",
            self.balancers,
            "--threads",
            "1",
            "--balancer-token-file",
            self.token_file("worker"),
            *self.worker_args,
            *extra,
            env=env,
        )

    def snapshot(self, address: str = "") -> cluster_pb2.ClusterSnapshot:
        """One cluster snapshot from the balancer at `address` (the first one by default)."""
        with sync_channel(address or self.balancer, self.tls) as channel:
            call = cluster_pb2_grpc.BalancerStub(channel).WatchCluster(
                cluster_pb2.WatchClusterRequest(), timeout=5, metadata=self.auth()
            )
            snapshot = next(call)
            call.cancel()
            return snapshot

    def wait_workers(self, count: int, timeout_s: float = 60.0) -> None:
        """Until `count` workers are registered and the batcher reports every model ready."""
        wait_for(lambda: len(self.snapshot().workers) == count, timeout_s, f"{count} workers")
        with sync_channel(self.batcher, self.tls) as channel:
            stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
            wait_for(
                lambda: stub.ServerReady(inference_pb2.ServerReadyRequest()).ready,
                timeout_s,
                "batcher ready",
            )

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")


def wait_healthy(
    address: str,
    timeout_s: float = 30.0,
    tls: TlsSettings = PLAINTEXT,
    process: subprocess.Popen | None = None,
    log: Path | None = None,
) -> None:
    """Until `address` answers SERVING (tideserve.healthprobe.wait_serving). Given the `process`
    meant to serve there, fail as soon as it exits; given its `log`, a failure carries the log's
    tail, which is why it failed."""

    def gone() -> str | None:
        if process is None or process.poll() is None:
            return None
        return f"the process for {address} exited with {process.returncode}{log_tail(log)}"

    credentials = channel_credentials(tls) if tls.secure_client else None
    try:
        wait_serving(address, timeout_s, credentials=credentials, gone=gone, interval_s=0.05)
    except TimeoutError as error:
        raise TimeoutError(f"{error}{log_tail(log)}") from None


def log_tail(log: Path | None, lines: int = 30) -> str:
    if log is None or not log.exists():
        return ""
    tail = log.read_text(errors="replace").splitlines()[-lines:]
    return f"; the end of {log}:\n" + "\n".join(tail)
