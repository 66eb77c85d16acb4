"""python -m tideserve.healthprobe HOST:PORT [--service NAME] [--timeout S] [--live]

Readiness (default): exit 0 iff the server's standard gRPC health service reports SERVING for
`--service` (default: the whole server, ""). For the batcher that means it holds a live stream to
a balancer; a worker, that its model is loaded.
Liveness (`--live`): exit 0 iff the server answers the health check at all, SERVING or not. A
batcher waiting for its balancer to return is alive and holding requests; restarting it (what
an orchestrator does to a task failing its liveness check) would only lose them.

Container healthchecks use it because the image has no grpcurl or grpc_health_probe binary, and
every tideserve server already runs grpc.health.v1. `wait_serving` is the one wait for a starting
server used by the launcher, the test harness and the benchmarks.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tideserve.grpc_options import CHANNEL_OPTIONS

SERVING = health_pb2.HealthCheckResponse.SERVING


def probe(
    address: str, service: str = "", timeout_s: float = 2.0, live: bool = False
) -> tuple[bool, str]:
    """Ask `address` for the health of `service`. Returns (ok, what was seen): ok means SERVING,
    or with `live` any answer. Never raises for an unreachable or failing server: that is an
    answer (not ok), not an error."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as error:
            return False, f"{error.code().name}: {error.details()}"
    status_name = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return live or response.status == SERVING, status_name


def _still_there() -> str | None:
    return None


def wait_serving(
    address: str,
    timeout_s: float,
    *,
    credentials: grpc.ChannelCredentials | None = None,
    gone: Callable[[], str | None] = _still_there,
    interval_s: float = 0.1,
) -> None:
    """Return once `address` answers SERVING for the whole server, asking every `interval_s`
    (TLS with `credentials`). Raise TimeoutError after `timeout_s`, or RuntimeError with the
    reason as soon as `gone()` gives one: the process meant to serve there has exited, so
    waiting longer cannot help."""
    deadline = time.monotonic() + timeout_s
    channel = (
        grpc.secure_channel(address, credentials, options=CHANNEL_OPTIONS)
        if credentials
        else grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    )
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            reason = gone()
            if reason:
                raise RuntimeError(reason)
            try:
                response = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if response.status == SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{address} not SERVING after {timeout_s:g} s")
            time.sleep(interval_s)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tideserve.healthprobe",
        description="Exit 0 iff a gRPC server's health service answers SERVING (with --live: "
        "answers at all).",
    )
    parser.add_argument("address", help="HOST:PORT of the gRPC server")
    parser.add_argument("--service", default="", help='service name; "" (default) = whole server')
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for an answer")
    parser.add_argument(
        "--live",
        action="store_true",
        help="liveness: exit 0 if the server answers at all, SERVING or NOT_SERVING",
    )
    args = parser.parse_args(argv)
    if args.timeout <= 0:
        parser.error("--timeout must be > 0")
    serving, seen = probe(args.address, args.service, args.timeout, args.live)
    print(f"{args.address} {args.service or '(server)'}: {seen}", file=sys.stderr)
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
