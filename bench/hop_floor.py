"""The floor under a lone request's latency: bare grpc.aio servers with no tideserve code,
chained as tideserve's processes are (client -> batcher -> balancer -> worker), each hop a
unary call that forwards the bytes untouched.

    python -m bench.hop_floor [--requests 3000] [--payload-bytes 1100]

Prints the median round trip through 1, 2 and 3 such hops from a blocking client. The target asks
a lone request to cost at most the model's time + 1 ms end to end; three Python gRPC hops in
series already cost more than that here, before any batching, routing or model code runs.
Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from tideserve.procs import free_port
from tideserve_tools.latency import percentile

METHOD = "/floor.Hop/Forward"


Handler = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]


def _identity(data: bytes) -> bytes:
    return data


def hop_stub(port: int) -> grpc.aio.UnaryUnaryMultiCallable:
    """A bytes-in, bytes-out call to the hop on `port` (made inside the event loop)."""
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    return channel.unary_unary(
        METHOD, request_serializer=_identity, response_deserializer=_identity
    )


def forwarding_to(port: int) -> Handler:
    """A hop's handler passing the bytes on to the hop on `port`, untouched."""
    forward = hop_stub(port)

    async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return await forward(request)

    return handle


async def serve_hop(port: int, handle: Handler, ready: Any) -> None:
    """Serve `handle` as the hop's one method on `port`; set `ready` once listening."""
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(handle, _identity, _identity)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("floor.Hop", {"Forward": handler}),)
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    ready.set()
    await server.wait_for_termination()


def _serve(port: int, downstream: int | None, ready: mp.Event) -> None:
    async def main() -> None:
        if downstream is None:
            async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
                return request[:16]
        else:
            handle = forwarding_to(downstream)
        await serve_hop(port, handle, ready)

    asyncio.run(main())


def median_round_trip_ms(port: int, requests: int, payload: bytes) -> float:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(
            METHOD, request_serializer=_identity, response_deserializer=_identity
        )
        for _ in range(requests // 10):
            call(payload)
        times = []
        for _ in range(requests):
            started = time.perf_counter()
            call(payload)
            times.append(time.perf_counter() - started)
    return percentile(times, 50) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--payload-bytes", type=int, default=1100, help="mlp's one row: 1 KiB")
    args = parser.parse_args(argv)
    ports = [free_port() for _ in range(3)]
    processes = []
    for index, port in enumerate(ports):
        ready = mp.Event()
        downstream = ports[index - 1] if index else None
        process = mp.Process(target=_serve, args=(port, downstream, ready), daemon=True)
        process.start()
        ready.wait(30)
        processes.append(process)
    payload = b"\0" * args.payload_bytes
    try:
        for hops, port in enumerate(ports, start=1):
            floor = median_round_trip_ms(port, args.requests, payload)
            print(f"{hops} hop{'s' if hops > 1 else ''}: median {floor:.3f} ms", flush=True)
    finally:
        for process in processes:
            process.terminate()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
