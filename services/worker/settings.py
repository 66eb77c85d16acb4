from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from tideserve.settings import TlsFields, load_settings


@dataclass(frozen=True)
class WorkerSettings(TlsFields):
    # Unique name the balancer and scaler know this worker by; default host-pid.
    worker_id: str = ""
    host: str = "127.0.0.1"
    # 0 lets the OS pick a free port; the worker reports the real one when it registers.
    port: int = 0
    model_repository: str = "model_repository"
    # Models to load; empty loads every model in the repository.
    models: tuple[str, ...] = ()
    # Rescan the repository every this many seconds (Triton's --model-control-mode=poll): a
    # model new to the repository (of `models`, if set) is loaded, a new version directory is
    # loaded beside the served one and takes over once warm, a removed one is unloaded, and a
    # model whose directory is gone is unloaded. A model unloaded by model control stays
    # unloaded until its files change. Write a new version under a temporary name and rename it
    # into place, so a scan never sees it half-copied. 0 = off: models change only by explicit
    # load/unload.
    repository_poll_s: float = 0.0
    balancers: tuple[str, ...] = ("127.0.0.1:8100",)
    heartbeat_interval_s: float = 0.1
    # This process's role token for the balancers (`authorization: Bearer` on every call), a
    # file readable by its owner alone; "" sends none (a balancer on mutual TLS, or one started
    # with --allow-unauthenticated).
    balancer_token_file: str = ""
    # Execute serves only callers presenting this worker's key, which it sends its balancers at
    # registration. "" makes a fresh random key at each start; a file (owner-only) holding one
    # is for tools that call the worker themselves, such as the balancer-hop benchmark.
    execute_key_file: str = ""
    # "auto" takes cuda when present, else cpu; or "cpu", "cuda", "cuda:1".
    device: str = "auto"
    # torch intra-op threads; 0 keeps torch's default.
    threads: int = 0
    # Multiplies compute time (sleeps the difference): simulates a slower machine in benchmarks.
    slowdown: float = 1.0
    # A profile JSON (`tideserve profile` writes them): each batch is padded up to its t(b), so
    # the worker emulates a device with that service curve while the real model still runs.
    # Unlike slowdown, CPU contention is not multiplied (tideserve/profiles.py). "" = off.
    service_profile: str = ""
    # Take batch inputs that a batcher on this host leaves in /dev/shm (tideserve/shared_memory.py)
    # instead of inline bytes: the tensors then skip both gRPC hops.
    shared_memory: bool = True
    # On a GPU, pin those segments (cudaHostRegister) so batches are copied to the device
    # straight from them, without a staging copy into pinned buffers.
    pin_shared_memory: bool = True
    # Exit once every balancer has released this worker after a drain.
    exit_on_release: bool = True
    grace_s: float = 10.0
    # Prometheus /metrics; 0 picks a free port, reported to the balancers at registration so
    # Prometheus finds it through the balancer's /sd/workers.
    metrics_port: int = 0
    log_level: str = "INFO"
    json_logs: bool = False

    def __post_init__(self) -> None:
        if not self.worker_id:
            object.__setattr__(self, "worker_id", f"{socket.gethostname()}-{os.getpid()}")
        if self.slowdown < 1.0:
            raise ValueError("slowdown must be >= 1.0")
        if self.heartbeat_interval_s <= 0:
            raise ValueError("heartbeat_interval_s must be > 0")
        if self.repository_poll_s < 0:
            raise ValueError("repository_poll_s must be >= 0 (0 turns polling off)")


def parse(argv: Sequence[str] | None = None) -> WorkerSettings:
    return load_settings(
        WorkerSettings, argv, env_prefix="TIDESERVE_WORKER_", description="tideserve worker"
    )
