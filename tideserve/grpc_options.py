"""Every gRPC channel and server option tideserve uses, in one place, each with its reason."""

from __future__ import annotations

# Batches of images are large: allow 256 MiB messages in both directions (gRPC's default is 4 MiB).
MAX_MESSAGE_BYTES = 256 * 1024 * 1024

_MESSAGE_SIZE = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]

SERVER_OPTIONS: list[tuple[str, int]] = [
    *_MESSAGE_SIZE,
    # Let clients ping every 2 s (CHANNEL_OPTIONS) without a call in flight or data on it
    # (workers' heartbeat streams idle between reports); gRPC would otherwise answer frequent
    # pings with GOAWAY.
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 1_000),
    ("grpc.http2.max_ping_strikes", 0),
    # Reuse the port right after a restart, and let several batcher processes share one port.
    ("grpc.so_reuseport", 1),
]

CHANNEL_OPTIONS: list[tuple[str, int]] = [
    *_MESSAGE_SIZE,
    # Notice a peer that died without closing its TCP connection (host gone, network cut,
    # process frozen) within ~5 s: the batcher is not ready while its balancer stream is dead,
    # and a worker's heartbeat stream must fail over as fast. A peer that exits closes its
    # connection and is noticed at once, without pings.
    ("grpc.keepalive_time_ms", 2_000),
    ("grpc.keepalive_timeout_ms", 3_000),
    # The same bound for every ping: a keepalive ping joins one already in flight (gRPC's own
    # flow-control probes), whose ack is otherwise awaited for a minute.
    ("grpc.http2.ping_timeout_ms", 3_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # Keep pinging a connection that carries no data (an idle stream), not just the first two.
    ("grpc.http2.max_pings_without_data", 0),
    # Reconnect quickly after a peer restarts instead of gRPC's default 1 s -> 120 s back-off.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    ("grpc.min_reconnect_backoff_ms", 100),
]
