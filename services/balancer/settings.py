from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from services.balancer.routing import POLICIES
from tideserve.settings import TlsFields, load_settings


@dataclass(frozen=True)
class BalancerSettings(TlsFields):
    host: str = "127.0.0.1"
    port: int = 8100
    # least_load measured the best tail in bench/balancer.py (4 workers, one 3x slower, 80% load);
    # see services/balancer/routing.py for when each policy is right.
    routing_policy: str = "least_load"
    # A worker silent this long is dropped (heartbeats come every 100 ms by default).
    heartbeat_timeout_s: float = 1.0
    # How long a batch waits for some worker to serve its model before UNAVAILABLE.
    no_worker_wait_s: float = 2.0
    # Tries of a batch on different workers (inference is idempotent) within its deadline.
    max_attempts: int = 2
    # Per-batch timeout: this multiple of the worker's expected completion time, at least the
    # floor, at most the cap; it catches a worker that hangs while still heartbeating.
    batch_timeout_multiplier: float = 5.0
    batch_timeout_floor_s: float = 0.5
    batch_timeout_s: float = 30.0
    # Circuit breaker: consecutive lost or faulty batches that eject a worker; the first back-off,
    # doubled on each ejection in a row up to the maximum; then one probe batch re-admits it.
    eject_after_failures: int = 3
    ejection_s: float = 5.0
    max_ejection_s: float = 60.0
    snapshot_interval_s: float = 0.5
    grace_s: float = 5.0
    # Prometheus /metrics, and the live workers for Prometheus' HTTP discovery at /sd/workers.
    metrics_port: int = 8102
    # Directory of the per-role bearer tokens (worker.token, batcher.token, scaler.token,
    # operator.token; tideserve.credentials.create_credentials writes them). With mutual TLS
    # (tls_ca) a client certificate naming its role serves too. The balancer refuses to start
    # with neither, unless allow_unauthenticated is set for development.
    credentials_dir: str = ""
    allow_unauthenticated: bool = False
    log_level: str = "INFO"
    json_logs: bool = False

    def __post_init__(self) -> None:
        if self.routing_policy not in POLICIES:
            raise ValueError(
                f"unknown routing policy {self.routing_policy!r}; choose one of {sorted(POLICIES)}"
            )


def parse(argv: Sequence[str] | None = None) -> BalancerSettings:
    return load_settings(
        BalancerSettings, argv, env_prefix="TIDESERVE_BALANCER_", description="tideserve balancer"
    )
