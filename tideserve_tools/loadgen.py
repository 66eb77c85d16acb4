"""A bounded closed-loop load generator over the client API (unary or ModelStreamInfer), used by
`tideserve up --demo` and the tests. It builds a valid batch-1 request from the model's metadata."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import numpy as np

from tideserve import codec, serving, shared_memory
from tideserve.v1 import inference_pb2 as pb
from tideserve.v1 import inference_pb2_grpc


@dataclass(frozen=True)
class Window:
    """A measurement window in wall-clock seconds (`time.time()`), shared by client processes
    that start at different moments: each sends from when it is ready (its warm-up) until `end`,
    and counts only the requests that complete inside [start, end]. Figures then describe the
    server in steady state, not the clients' start-up or the tail of the last requests."""

    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start

    def on_perf_counter(self) -> tuple[float, float]:
        """The window on this process's `time.perf_counter()` clock."""
        offset = time.perf_counter() - time.time()
        return self.start + offset, self.end + offset


@dataclass
class LoadResult:
    sent: int = 0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    # CPU seconds this client process used inside the measured window (0 without a window).
    client_cpu_s: float = 0.0

    @property
    def throughput(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies, q) * 1000) if self.latencies else float("nan")

    def error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1


async def sample_request(
    stub: inference_pb2_grpc.GRPCInferenceServiceStub, model: str, seed: int = 0, rows: int = 1
) -> pb.ModelInferRequest:
    """A request of `rows` rows of random data shaped as the model's metadata says."""
    metadata = await stub.ModelMetadata(pb.ModelMetadataRequest(name=model), timeout=10)
    rng = np.random.default_rng(seed)
    request = pb.ModelInferRequest(model_name=model)
    for tensor in metadata.inputs:
        shape = [rows, *(1 if d < 0 else d for d in tensor.shape[1:])]
        data = rng.random(shape).astype(codec.NUMPY_DTYPES[tensor.datatype])
        request.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=shape)
        request.raw_input_contents.append(data.tobytes())
    return request


@contextlib.asynccontextmanager
async def inputs_in_shared_memory(
    stub: inference_pb2_grpc.GRPCInferenceServiceStub, request: pb.ModelInferRequest
) -> AsyncIterator[pb.ModelInferRequest]:
    """`request` with its input bytes moved into a /dev/shm region registered with the batcher
    (Triton's system shared-memory extension), as perf_analyzer --shared-memory system sends
    them. Registration holds for the channel's batcher process only (regions are per process),
    so the caller sends on the same channel; the region is unregistered and removed on exit."""
    name = f"loadgen-{os.getpid()}-{id(request)}"
    data = b"".join(request.raw_input_contents)
    path = shared_memory.SHM_DIR / name
    path.write_bytes(data)
    placed = pb.ModelInferRequest()
    placed.CopyFrom(request)
    del placed.raw_input_contents[:]
    offset = 0
    for tensor, raw in zip(placed.inputs, request.raw_input_contents, strict=True):
        tensor.parameters[shared_memory.REGION_PARAMETER].string_param = name
        tensor.parameters[shared_memory.OFFSET_PARAMETER].int64_param = offset
        tensor.parameters[shared_memory.BYTE_SIZE_PARAMETER].int64_param = len(raw)
        offset += len(raw)
    try:
        await stub.SystemSharedMemoryRegister(
            pb.SystemSharedMemoryRegisterRequest(
                name=name, key=f"/{name}", offset=0, byte_size=len(data)
            ),
            timeout=10,
        )
        yield placed
    finally:
        with contextlib.suppress(grpc.aio.AioRpcError):
            await stub.SystemSharedMemoryUnregister(
                pb.SystemSharedMemoryUnregisterRequest(name=name), timeout=10
            )
        path.unlink(missing_ok=True)


async def closed_loop(
    address: str,
    model: str,
    *,
    concurrency: int,
    seconds: float,
    stream: bool = False,
    request: pb.ModelInferRequest | None = None,
    timeout_s: float = 10.0,
    rows: int = 1,
    tls: serving.TlsSettings = serving.PLAINTEXT,
    shared_memory_inputs: bool = False,
    window: Window | None = None,
) -> LoadResult:
    """`concurrency` clients each sending one request (of `rows` rows) after another for
    `seconds`; with `shared_memory_inputs`, the inputs are read from a registered region. With
    a `window`, `seconds` is ignored: the clients send until the window ends and count only
    what completes inside it."""
    result = LoadResult()
    async with contextlib.AsyncExitStack() as stack:
        channel = await stack.enter_async_context(serving.channel(address, tls))
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = request or await sample_request(stub, model, rows=rows)
        if shared_memory_inputs:
            request = await stack.enter_async_context(inputs_in_shared_memory(stub, request))
        count_from, stop_at = (
            window.on_perf_counter()
            if window
            else (time.perf_counter(), time.perf_counter() + seconds)
        )
        meter = _WindowCpu(count_from, stop_at)

        def record(started: float, error: str | None) -> None:
            finished = time.perf_counter()
            meter.sample(finished)
            # Without a window every request counts, the last ones in flight included.
            if window and not count_from <= finished <= stop_at:
                return
            result.sent += 1
            if error is not None:
                result.error(error)
                return
            result.ok += 1
            result.latencies.append(finished - started)

        async def unary_client() -> None:
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                try:
                    await stub.ModelInfer(request, timeout=timeout_s)
                except grpc.aio.AioRpcError as error:
                    record(started, error.code().name)
                    continue
                record(started, None)

        async def stream_client() -> None:
            call = stub.ModelStreamInfer()
            try:
                while time.perf_counter() < stop_at:
                    started = time.perf_counter()
                    await call.write(request)
                    response = await call.read()
                    if response is grpc.aio.EOF or response.error_message:
                        record(started, "STREAM_ERROR")
                        if response is grpc.aio.EOF:
                            return
                        continue
                    record(started, None)
                await call.done_writing()
            except grpc.aio.AioRpcError as error:
                record(time.perf_counter(), error.code().name)

        began = time.perf_counter()
        client = stream_client if stream else unary_client
        await asyncio.gather(*(client() for _ in range(concurrency)))
        result.seconds = window.seconds if window else time.perf_counter() - began
        result.client_cpu_s = meter.cpu_s
    return result


class _WindowCpu:
    """This process's CPU time between the first completion inside a window and the last: how
    busy the client itself was while it measured the server."""

    def __init__(self, start: float, end: float) -> None:
        self.start, self.end = start, end
        self._first: float | None = None
        self._last = 0.0

    def sample(self, now: float) -> None:
        if self.start <= now <= self.end:
            cpu = time.process_time()
            if self._first is None:
                self._first = cpu
            self._last = cpu

    @property
    def cpu_s(self) -> float:
        return 0.0 if self._first is None else self._last - self._first


async def open_loop(
    address: str,
    model: str,
    *,
    rate: float,
    seconds: float,
    seed: int = 0,
    request: pb.ModelInferRequest | None = None,
    timeout_s: float = 10.0,
    max_outstanding: int = 10_000,
    rows: int = 1,
    tls: serving.TlsSettings = serving.PLAINTEXT,
    shared_memory_inputs: bool = False,
    window: Window | None = None,
) -> LoadResult:
    """Poisson arrivals at `rate`/s for `seconds`, each a unary request that does not wait for
    the previous ones (so a slow server sees its queue grow, as under real traffic). Arrivals
    beyond `max_outstanding` in flight count as a "CLIENT_OVERLOAD" error instead of piling up.
    With a `window`, arrivals run from now until its end and only requests that arrive and
    complete inside it count."""
    result = LoadResult()
    rng = np.random.default_rng(seed)
    async with contextlib.AsyncExitStack() as stack:
        channel = await stack.enter_async_context(serving.channel(address, tls))
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = request or await sample_request(stub, model, seed, rows)
        if shared_memory_inputs:
            request = await stack.enter_async_context(inputs_in_shared_memory(stub, request))
        pending: set[asyncio.Task] = set()
        began = time.perf_counter()
        count_from, stop_at = window.on_perf_counter() if window else (began, began + seconds)
        meter = _WindowCpu(count_from, stop_at)

        def counted(started: float, finished: float) -> bool:
            meter.sample(finished)
            return not window or (started >= count_from and finished <= stop_at)

        async def one(started: float) -> None:
            try:
                await stub.ModelInfer(request, timeout=timeout_s)
            except grpc.aio.AioRpcError as error:
                if counted(started, time.perf_counter()):
                    result.sent += 1
                    result.error(error.code().name)
                return
            finished = time.perf_counter()
            if counted(started, finished):
                result.sent += 1
                result.ok += 1
                result.latencies.append(finished - started)

        next_at = began
        while next_at < stop_at:
            next_at += rng.exponential(1.0 / rate)
            delay = next_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(pending) >= max_outstanding:
                if counted(next_at, next_at):
                    result.sent += 1
                    result.error("CLIENT_OVERLOAD")
                continue
            task = asyncio.create_task(one(time.perf_counter()))
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.gather(*pending)
        result.seconds = window.seconds if window else time.perf_counter() - began
        result.client_cpu_s = meter.cpu_s
    return result
