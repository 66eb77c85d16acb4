"""`tideserve up`: the whole suite as local processes on loopback — balancer, batcher and scaler
(which starts the workers) — with the default model repository made on first run.

Each service is a separate process, supervised as compose's `restart: unless-stopped` would:
one that exits is restarted (tideserve_tools.supervision), and workers outlive a scaler crash so the
restarted scaler adopts them (tideserve.procs). On SIGINT/SIGTERM the services stop in order:
batcher first (no new requests), then the scaler (drains and stops its workers), then the
balancer; then anything still running below the launcher is stopped, so nothing outlives it
(services also stop by themselves if the launcher is killed: PR_SET_PDEATHSIG)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from tideserve import serving
from tideserve.credentials import create_credentials, token_path
from tideserve.healthprobe import wait_serving
from tideserve.procs import (
    ADOPTER_ENV,
    ProcessWatch,
    become_subreaper,
    child_env,
    descendants,
)
from tideserve.v1 import inference_pb2, inference_pb2_grpc
from tideserve_tools.supervision import RestartPolicy, Supervisor

logger = logging.getLogger(__name__)

STOP_ORDER = ("batcher", "scaler", "balancer")

# Memory budgeted per worker. A CPU worker serving tiny_cnn under load holds about 270 MiB
# resident (`ps -o rss`), most of it torch; 1 GiB leaves room for a larger model.
WORKER_MEMORY_BYTES = 1 << 30


def host_max_replicas(cpus: int | None = None, memory_bytes: int | None = None) -> int:
    """The most workers this host runs side by side, `tideserve up`'s default max_replicas.

    One worker per CPU core this process may use, less one core kept for the batcher, balancer
    and scaler (a worker computes on its core; more workers than cores only queue for them), and
    no more than half the memory holds at WORKER_MEMORY_BYTES each (the other half for the
    services, the clients and the page cache). At least 1."""
    if cpus is None:
        cpus = len(os.sched_getaffinity(0))
    if memory_bytes is None:
        memory_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return max(1, min(cpus - 1, memory_bytes // 2 // WORKER_MEMORY_BYTES))


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
    scaler_policy: str = "learned"
    worker_threads: int = 0
    batcher_processes: int = 1
    log_dir: Path = Path(".tideserve/logs")
    # The per-role balancer tokens, made afresh by every `start` (tokens of an earlier run stop
    # working); None = beside the logs, in the suite's state directory (.tideserve/credentials).
    credentials_dir: Path | None = None
    # Where the scaler keeps its workers' pids (worker_state_dir).
    state_dir: Path = Path(".tideserve/state")
    ready_timeout_s: float = 90.0
    # Further scaler flags, after the ones above (a later flag wins): the policy's parameters,
    # profile, SLO and cooldowns that experiments vary.
    scaler_args: tuple[str, ...] = ()

    @property
    def credentials(self) -> Path:
        return self.credentials_dir or self.log_dir.parent / "credentials"

    def token_file(self, role: str) -> str:
        return str(token_path(self.credentials, role))

    @property
    def worker_state_dir(self) -> Path:
        # Per launcher: two suites started from one directory never adopt each other's workers.
        return self.state_dir / f"workers-{os.getpid()}"

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
            "--admin-token-file",
            config.token_file("operator"),
            "--worker-state-dir",
            str(config.worker_state_dir),
            *config.scaler_args,
        ],
    }


class ServiceProcess:
    """One run of a service. Its exit status is set by `Suite`'s reaper: the launcher is a child
    subreaper that waits for every child itself (orphaned workers included), so nothing else may
    wait for these pids."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.exited = asyncio.Event()

    def poll(self) -> int | None:
        return self.returncode


class Suite:
    """The services as supervised processes (tideserve_tools.supervision): started on `start`,
    restarted when they exit, stopped in order by `stop`, after which nothing started below the
    launcher is left running. Runs inside the event loop: it reaps children on SIGCHLD."""

    def __init__(self, config: SuiteConfig, restarts: RestartPolicy | None = None) -> None:
        self.config = config
        self.commands = service_commands(config)
        self.supervisor = Supervisor(tuple(self.commands), self._spawn, restarts)
        self._running: dict[int, ServiceProcess] = {}
        self._exits = asyncio.Event()

    def start(self) -> None:
        # Orphans below us (workers of a crashed scaler) become our children: we adopt and, at
        # the end, stop them.
        become_subreaper()
        asyncio.get_running_loop().add_signal_handler(signal.SIGCHLD, self._reap)
        self.config.log_dir.mkdir(parents=True, exist_ok=True)
        create_credentials(self.config.credentials)
        remove_stale_worker_state(self.config.state_dir)
        self.supervisor.start()

    async def supervise(self, say: Callable[[str], None]) -> None:
        """Restart services that exit, telling `say` about each, until cancelled. Raises
        CrashLoop when one will not stay up."""
        while True:
            self._exits.clear()
            for message in self.supervisor.check():
                say(message)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._exits.wait(), self.supervisor.next_restart_in())

    def _spawn(self, name: str) -> ServiceProcess:
        command = self.commands[name]
        # Its own process group: a Ctrl-C on the terminal reaches the launcher alone, which then
        # stops the services in order (and a service it stops is not mistaken for a crash).
        env = {**child_env(), ADOPTER_ENV: str(os.getpid())}
        log = os.open(
            self.config.log_dir / f"{name}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644
        )
        try:
            pid = os.posix_spawn(
                command[0],
                command,
                env,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, log, 1),
                    (os.POSIX_SPAWN_DUP2, log, 2),
                ],
                setpgroup=0,
            )
        finally:
            os.close(log)
        process = ServiceProcess(pid)
        self._running[pid] = process
        return process

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            process = self._running.pop(pid, None)
            if process is not None:
                process.returncode = os.waitstatus_to_exitcode(status)
                process.exited.set()
                self._exits.set()

    async def wait_ready(self, model: str | None) -> None:
        """Until every service reports SERVING and the batcher has a ready model (or `model`)."""
        deadline = time.monotonic() + self.config.ready_timeout_s
        # The wait runs in a thread; a cancelled launcher (Ctrl-C while starting) ends it at once
        # rather than leave it polling until the deadline.
        stopped = threading.Event()

        def gone() -> str | None:
            return "the launcher stopped waiting" if stopped.is_set() else None

        try:
            for address in (self.config.balancer, self.config.scaler, self.config.batcher):
                remaining = max(0.0, deadline - time.monotonic())
                try:
                    await asyncio.to_thread(wait_serving, address, remaining, gone=gone)
                except TimeoutError:
                    raise TimeoutError(f"{address} did not become healthy in time") from None
        finally:
            stopped.set()
        async with serving.channel(self.config.batcher) as channel:
            stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
            while True:
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

    async def stop(self, timeout_s: float = 20.0) -> None:
        """Stop the services in STOP_ORDER (the scaler drains and stops its workers), then
        whatever is left below the launcher. Call with `supervise` cancelled."""
        for name in STOP_ORDER:
            process = self.supervisor.handle(name)
            if process.poll() is not None:
                continue
            os.kill(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.exited.wait(), timeout_s)
            except TimeoutError:
                logger.warning("%s did not stop in %.0f s; killing", name, timeout_s)
                os.kill(process.pid, signal.SIGKILL)
                await process.exited.wait()
        await _end_descendants(grace_s=5.0)
        asyncio.get_running_loop().remove_signal_handler(signal.SIGCHLD)
        self._reap()
        shutil.rmtree(self.config.worker_state_dir, ignore_errors=True)


def remove_stale_worker_state(state_dir: Path) -> None:
    """Drop the worker records of launchers that are gone (killed before they could clean up):
    their workers stopped with them."""
    for directory in state_dir.glob("workers-*"):
        pid = directory.name.removeprefix("workers-")
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(directory, ignore_errors=True)


async def _end_descendants(grace_s: float) -> None:
    """SIGTERM every process left below this one, SIGKILL those still there after `grace_s`."""
    watches = []
    for pid in descendants(os.getpid()):
        with contextlib.suppress(ProcessLookupError):
            watches.append(ProcessWatch(pid))
    if watches:
        logger.warning("stopping %d leftover processes", len(watches))
    for watch in watches:
        watch.send_signal(signal.SIGTERM)
    done = await asyncio.gather(*(w.wait(grace_s) for w in watches))
    for watch, exited in zip(watches, done, strict=True):
        if not exited:
            watch.send_signal(signal.SIGKILL)
            await watch.wait(grace_s)
        watch.close()
