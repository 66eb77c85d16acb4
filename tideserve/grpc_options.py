"""Every gRPC channel and server option tideserve uses, in one place, each with its reason."""

from __future__ import annotations

# Caps on what one server holds for its clients, so that a client opening connections, calls or
# streams without end runs into a refusal instead of the server's memory. Calls beyond
# MAX_CONCURRENT_RPCS are answered RESOURCE_EXHAUSTED (grpc.aio.server's
# maximum_concurrent_rpcs); streams beyond MAX_STREAMS_PER_CONNECTION wait in the client for one
# to end (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS); connections beyond MAX_CONNECTIONS are closed
# as they are accepted (gRPC core's connection quota). Each is far above what the benchmarks use
# (perf_analyzer at concurrency 64 is 64 streams on one connection).
MAX_CONCURRENT_RPCS = 4096
MAX_STREAMS_PER_CONNECTION = 1024
MAX_CONNECTIONS = 1024
# A connection that has not finished its HTTP/2 (and TLS) handshake by then is dropped, so idle
# sockets cannot hold the connection quota (gRPC's default waits 120 s).
HANDSHAKE_TIMEOUT_MS = 10_000

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
    ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION),
    ("grpc.max_allowed_incoming_connections", MAX_CONNECTIONS),
    ("grpc.server_handshake_timeout_ms", HANDSHAKE_TIMEOUT_MS),
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
