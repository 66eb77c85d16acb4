"""The suite exactly as `tideserve up` starts it (tideserve_tools.launcher's commands: balancer,
batcher and a scaler whose process runtime starts the workers), for tests and benchmarks: on free
loopback ports, under a given log directory, with any further scaler flags, as plain child
processes. Unlike the launcher it neither supervises (a service that exits is a failure to see,
not to hide by a restart) nor becomes a subreaper, which would take over the test process's
orphans."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness.cluster import ROOT, sync_channel, wait_for, wait_healthy
from tideserve.credentials import create_credentials, read_secret
from tideserve.procs import child_env, free_port
from tideserve.serving import bearer
from tideserve.v1 import cluster_pb2, cluster_pb2_grpc
from tideserve_tools.launcher import STOP_ORDER, SuiteConfig, service_commands

SERVICES = ("balancer", "batcher", "scaler")


def _config(model_repository: Path, log_dir: Path, scaler_args: Sequence[str]) -> SuiteConfig:
    return SuiteConfig(
        batcher_port=free_port(),
        balancer_port=free_port(),
        scaler_port=free_port(),
        batcher_metrics_port=free_port(),
        balancer_metrics_port=free_port(),
        scaler_metrics_port=free_port(),
        model_repository=model_repository,
        log_dir=log_dir,
        credentials_dir=log_dir / "credentials",
        state_dir=log_dir / "state",
        scaler_args=tuple(scaler_args),
    )


@dataclass
class LocalStack:
    """Balancer + batcher + scaler on 127.0.0.1; `scaler_args` are further scaler flags."""

    model_repository: Path
    log_dir: Path
    scaler_args: Sequence[str] = ()
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    config: SuiteConfig = field(init=False)

    def __post_init__(self) -> None:
        self.config = _config(self.model_repository, self.log_dir, self.scaler_args)

    def address(self, name: str) -> str:
        return {
            "balancer": self.config.balancer,
            "batcher": self.config.batcher,
            "scaler": self.config.scaler,
        }[name]

    def token_file(self, role: str) -> str:
        """`role`'s token, made fresh by `start` as `tideserve up` makes them."""
        return self.config.token_file(role)

    def operator_auth(self) -> tuple[tuple[str, str], ...]:
        """Call metadata for the balancer's and the scaler's admin RPCs, as an operator."""
        return bearer(read_secret(self.token_file("operator")))

    def start(self) -> LocalStack:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        create_credentials(self.config.credentials)
        commands = service_commands(self.config)
        pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        for name in SERVICES:
            with (self.log_dir / f"{name}.log").open("ab") as log:
                self.processes[name] = subprocess.Popen(
                    commands[name], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                    env=child_env({**os.environ, "PYTHONPATH": pythonpath}),
                )
        for name in SERVICES:
            wait_healthy(self.address(name), 60.0, process=self.processes[name],
                         log=self.log_dir / f"{name}.log")
        return self

    def status(self) -> cluster_pb2.ScalerStatus:
        with sync_channel(self.address("scaler")) as channel:
            stub = cluster_pb2_grpc.ScalerAdminStub(channel)
            return stub.GetStatus(
                cluster_pb2.GetStatusRequest(), timeout=5, metadata=self.operator_auth()
            )

    def wait_ready_workers(self, count: int, timeout_s: float = 90.0) -> None:
        wait_for(lambda: self.status().ready_replicas >= count, timeout_s,
                 f"{count} ready workers", interval_s=0.2)

    def stop(self) -> None:
        """In the launcher's order: batcher first (no new requests), then the scaler (drains
        and stops its workers), then the balancer."""
        for name in STOP_ORDER:
            process = self.processes.get(name)
            if process is None or process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
