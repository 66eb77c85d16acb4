"""python -m tideserve.healthprobe HOST:PORT [--service NAME] [--timeout S] [--live]

Readiness (default): exit 0 iff the server's standard gRPC health service reports SERVING for
`--service` (default: the whole server, ""). For the batcher that means it holds a live stream to
a balancer; a worker, that its model is loaded.
Liveness (`--live`): exit 0 iff the server answers the health check at all, SERVING or not. A
batcher waiting for its balancer to return is alive and holding requests; restarting it (what
an orchestrator does to a task failing its liveness check) would only lose them.

Container healthchecks use it because the image has no grpcurl or grpc_health_probe binary, and
every tideserve server already runs grpc.health.v1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

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
