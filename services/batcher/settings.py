from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from services.batcher.core import BALANCER_HOLD_S, THREAD_BYTES
from tideserve.settings import TlsFields, load_settings


@dataclass(frozen=True)
class BatcherSettings(TlsFields):
    host: str = "127.0.0.1"
    # Triton's gRPC port, so clients' defaults work.
    port: int = 8001
    balancers: tuple[str, ...] = ("127.0.0.1:8100",)
    batcher_id: str = ""
    # This process's role token for the balancers (`authorization: Bearer` on every call), a
    # file readable by its owner alone; "" sends none (a balancer on mutual TLS, or one started
    # with --allow-unauthenticated).
    balancer_token_file: str = ""
    # Batches in flight per model instance (config `instance_count`) on each ready worker. The
    # first is computing (Triton hands a batch to a free instance); any more leave just in time,
    # when the instance is predicted to free, so it need not idle through the hops between
    # batches (services/batcher/pipelining.py).
    inflight_per_instance: int = 1
    # Rows a model's queue may hold when its config sets no max_queue_size; more are refused at
    # once with RESOURCE_EXHAUSTED. Shedding keeps the accepted requests fast under overload
    # (bench/overload.py): a queue of B rows adds about B / throughput of waiting. It should
    # cover a few max-size batches per worker, or workers idle between batches. 0 = unbounded.
    max_queue_rows_default: int = 256
    # Batcher processes sharing the port (SO_REUSEPORT): the kernel spreads client connections
    # over them when one Python process cannot keep up. Each has its own queues; process i
    # serves metrics on metrics_port + i.
    processes: int = 1
    # Batches whose inputs reach this many bytes go to workers that share this host's /dev/shm
    # through a shared segment instead of inline (tideserve/shared_memory.py); smaller ones are
    # cheaper inline. 0 = never.
    shared_memory_min_bytes: int = 65536
    # Batches through a shared segment whose inputs reach this many bytes are copied into it on
    # a thread, the event loop serving other requests meanwhile; smaller ones are copied on the
    # loop, cheaper than the hand-off (services/batcher/core.py, THREAD_BYTES). 0 = always on
    # the loop.
    shared_memory_thread_bytes: int = THREAD_BYTES
    # Serve Triton's system shared-memory extension: local clients register /dev/shm regions that
    # this batcher then reads and writes. Any client that reaches the port can name any plain
    # segment of this batcher's user (services/batcher/client_memory.py says which are
    # refused); turn it off where clients are not trusted.
    client_shared_memory: bool = True
    # Serve Triton's explicit model control (RepositoryModelLoad / RepositoryModelUnload, as
    # tritonclient's load_model / unload_model): the batcher has every worker load or unload
    # the model from its own repository. As in Triton, any client that reaches the port may;
    # turn it off where clients are not trusted (the calls then answer UNIMPLEMENTED), and
    # operators still load and unload with the balancer's ControlModel and the operator token.
    model_control: bool = True
    # Requests of one ModelStreamInfer stream that may be unanswered at a time; with that many,
    # the batcher stops reading the stream until one is answered (HTTP/2 flow control then
    # holds the client's sends), so a client that never reads its responses cannot grow the
    # batcher's memory. As many as a model's queue holds by default: more gain nothing.
    stream_inflight: int = 256
    # While no balancer is reachable (one restarting), accepted requests wait in their queue for
    # one to return: up to their deadline, or this many seconds for a request without one. Then
    # they fail UNAVAILABLE (reason balancer-unreachable), naming the balancers tried. 0 = fail
    # at once.
    balancer_hold_s: float = BALANCER_HOLD_S
    report_interval_s: float = 0.5
    grace_s: float = 5.0
    # Prometheus /metrics: Triton's metrics port, next to its gRPC port.
    metrics_port: int = 8002
    log_level: str = "INFO"
    json_logs: bool = False

    def __post_init__(self) -> None:
        if not self.batcher_id:
            object.__setattr__(self, "batcher_id", f"{socket.gethostname()}-{os.getpid()}")
        if self.processes < 1:
            raise ValueError("processes must be >= 1")
        if self.max_queue_rows_default < 0:
            raise ValueError("max_queue_rows_default must be >= 0 (0 = unbounded)")
        if self.shared_memory_min_bytes < 0:
            raise ValueError("shared_memory_min_bytes must be >= 0 (0 = never)")
        if self.shared_memory_thread_bytes < 0:
            raise ValueError("shared_memory_thread_bytes must be >= 0 (0 = on the event loop)")
        if self.stream_inflight < 1:
            raise ValueError("stream_inflight must be >= 1")
        if self.balancer_hold_s < 0:
            raise ValueError("balancer_hold_s must be >= 0 (0 = fail at once)")
        if self.inflight_per_instance < 1:
            raise ValueError("inflight_per_instance must be >= 1")
        if not self.balancers:
            raise ValueError("at least one balancer address is needed")


def parse(argv: Sequence[str] | None = None) -> BatcherSettings:
    return load_settings(
        BatcherSettings, argv, env_prefix="TIDESERVE_BATCHER_", description="tideserve batcher"
    )
