"""The load drivers of `tideserve up --demo`, the tests and the benchmarks: one closed loop (a fixed
number of clients, each sending one request after another) and one open loop (requests sent at
scheduled times whatever the answers do), with the arrival schedules the open loop follows. Each
request's outcome goes to a `LatencyRecord` (tideserve_tools.latency), which fixes where latency
is measured from and what a percentile is.

Both drivers take any `Send` (a coroutine function issuing one RPC), so a benchmark of the
balancer's Dispatch or a worker's Execute uses the same loops as the KServe front door; the
`closed_loop`/`open_loop` wrappers send ModelInfer built from the model's metadata."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import grpc
import numpy as np

from tideserve import codec, serving, shared_memory
from tideserve.v1 import inference_pb2 as pb
from tideserve.v1 import inference_pb2_grpc
from tideserve_tools.latency import OK, LatencyRecord

# Issues one RPC and returns when it is answered; raises grpc.aio.AioRpcError when it fails.
Send = Callable[[], Awaitable[object]]
# An arrival the open loop could not issue because `max_outstanding` were already in flight: the
# generator bounds itself rather than become the bottleneck, and says so.
CLIENT_OVERLOAD = "CLIENT_OVERLOAD"


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
class LoadResult(LatencyRecord):
    """A load run's requests (LatencyRecord) over `seconds`. Open loops also keep `requests`:
    per arrival, its scheduled send time (s from the start) and its latency (inf if it failed),
    for figures per second of a schedule."""

    seconds: float = 0.0
    # CPU seconds this client process used inside the measured window (0 without a window).
    client_cpu_s: float = 0.0
    requests: list[tuple[float, float]] = field(default_factory=list)
    # Wall-clock time (`time.time()`) of send time 0 of an open loop.
    started_unix: float = 0.0
    # Requests an open loop with a `grace_s` stopped waiting for: sent, never answered, and in
    # no other count.
    unfinished: int = 0

    @property
    def throughput(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def within(self, slo_s: float) -> float:
        """The share of requests answered within `slo_s`; failures count as misses."""
        return sum(x <= slo_s for x in self.latencies) / self.sent if self.sent else 1.0


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


# ---------------------------------------------------------------------------------------------
# Arrival schedules of the open loop
# ---------------------------------------------------------------------------------------------


def arrival_times(rates: Sequence[float], *, cv: float = 1.0, seed: int = 0) -> list[float]:
    """Send times (s from the start) for `rates[k]` requests/s during second k. Inter-arrival
    times are drawn from a Gamma with coefficient of variation `cv` (1 is Poisson, above 1
    burstier, 0 evenly spaced), restarted at each second so that each second follows its rate."""
    rng = np.random.default_rng(seed)
    times: list[float] = []
    for second, rate in enumerate(rates):
        t = float(second)
        while rate > 0:
            t += 1.0 / rate if cv == 0 else rng.gamma(1.0 / cv**2, cv**2 / rate)
            if t >= second + 1:
                break
            times.append(t)
    return times


def steady_arrivals(rate: float, seconds: float, *, cv: float = 1.0, seed: int = 0) -> list[float]:
    """`arrival_times` at one `rate` for `seconds` (which need not be whole)."""
    times = arrival_times([rate] * math.ceil(seconds), cv=cv, seed=seed)
    return [t for t in times if t < seconds]


def per_second(times: Sequence[float], seconds: int) -> list[int]:
    """How many of `times` fall in each of the first `seconds` seconds."""
    counts, _ = np.histogram(times, bins=seconds, range=(0, seconds))
    return [int(c) for c in counts]


# ---------------------------------------------------------------------------------------------
# The two drivers, over any Send
# ---------------------------------------------------------------------------------------------


class RequestFailed(Exception):
    """A request that failed inside an RPC that did not (a stream's response carrying an
    error_message): `code` is its outcome in the record."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


# Whether a request issued at `started` and answered at `finished` (perf_counter) is counted.
Counted = Callable[[float, float], bool]


def _always(started: float, finished: float) -> bool:
    return True


async def _issue(send: Send) -> tuple[str, float, float]:
    """One request: (outcome, issued at, answered at). The clock starts just before the RPC is
    issued and stops when its response or error arrives: the latency of the record."""
    started = time.perf_counter()
    try:
        await send()
        code = OK
    except grpc.aio.AioRpcError as error:
        code = error.code().name
    except RequestFailed as error:
        code = error.code
    return code, started, time.perf_counter()


async def timed(send: Send, record: LatencyRecord) -> None:
    """One request, its outcome and latency added to `record`."""
    code, started, finished = await _issue(send)
    record.add(code, finished - started)


async def drive_closed_loop(
    clients: Sequence[Send],
    result: LatencyRecord,
    *,
    running: Callable[[], bool],
    counted: Counted = _always,
) -> None:
    """Each of `clients` sends one request after another while `running()`; the requests
    `counted` go to `result`. A closed loop slows down with the server, so it measures what
    the server sustains at a given concurrency, not how it queues under a given rate."""

    async def client(send: Send) -> None:
        while running():
            code, started, finished = await _issue(send)
            if counted(started, finished):
                result.add(code, finished - started)

    await asyncio.gather(*(client(send) for send in clients))


async def drive_open_loop(
    send: Send,
    times: Sequence[float],
    result: LoadResult,
    *,
    max_outstanding: int = 10_000,
    counted: Counted = _always,
    grace_s: float | None = None,
) -> None:
    """Send at each of `times` (s from now) whatever earlier requests do: a slow server sees
    its queue grow, as under real traffic. An arrival beyond `max_outstanding` in flight is not
    sent but counted as CLIENT_OVERLOAD, so the generator neither piles up nor hides it. The
    requests `counted` go to `result`, with their scheduled times in `result.requests` (in the
    order they end). After the last arrival every request is awaited, or with `grace_s` only
    that long: the rest are cancelled and counted in `result.unfinished`, so a run's length is
    bounded even when the server has stopped answering."""
    pending: set[asyncio.Task] = set()
    began = time.perf_counter()
    result.started_unix = time.time()

    async def one(at: float) -> None:
        code, started, finished = await _issue(send)
        if counted(started, finished):
            latency = finished - started
            result.add(code, latency)
            result.requests.append((at, latency if code == OK else math.inf))

    for at in times:
        delay = began + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(pending) >= max_outstanding:
            now = time.perf_counter()
            if counted(now, now):
                result.error(CLIENT_OVERLOAD)
                result.requests.append((at, math.inf))
            continue
        task = asyncio.create_task(one(at))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if grace_s is None or not pending:
        await asyncio.gather(*pending)
        return
    _, late = await asyncio.wait(set(pending), timeout=grace_s)
    for task in late:
        task.cancel()
    await asyncio.gather(*late, return_exceptions=True)
    result.unfinished += len(late)


# ---------------------------------------------------------------------------------------------
# ModelInfer through the front door
# ---------------------------------------------------------------------------------------------


def unary_send(
    stub: inference_pb2_grpc.GRPCInferenceServiceStub,
    request: pb.ModelInferRequest,
    timeout_s: float,
) -> Send:
    def send() -> Awaitable[object]:
        return stub.ModelInfer(request, timeout=timeout_s)

    return send


def stream_send(
    stub: inference_pb2_grpc.GRPCInferenceServiceStub,
    request: pb.ModelInferRequest,
    stream_timeout_s: float | None = None,
) -> Send:
    """One client's ModelStreamInfer: each send writes `request` and reads its response. A
    stream that ends or fails is replaced by a new one on the next send. `stream_timeout_s`
    bounds each stream's whole life (gRPC has no per-message deadline), so a run that must end
    in time is not held by a server that stops answering."""
    call: grpc.aio.StreamStreamCall | None = None

    async def send() -> None:
        nonlocal call
        if call is None:
            call = stub.ModelStreamInfer(timeout=stream_timeout_s)
        try:
            await call.write(request)
            response = await call.read()
        except grpc.aio.AioRpcError:
            call = None
            raise
        if response is grpc.aio.EOF:
            call = None
            raise RequestFailed("STREAM_ERROR")
        if response.error_message:
            raise RequestFailed("STREAM_ERROR")

    return send


class SharedStream:
    """One ModelStreamInfer stream that every request of an open loop goes over, as one streaming
    client sends them: each `send` queues the request under an id of its own and returns when the
    response with that id arrives, so requests overlap on the stream. gRPC writes a stream's
    requests one at a time, so they go through a queue the call reads from, not concurrent
    writes. Responses are matched by id, not by order: a driver that assumed the batcher keeps a
    stream's order would report a reordering as wrong latencies instead of noticing it. A
    response with an id no request is waiting for is counted in `unmatched`. When the stream
    fails, every waiting request, and every later one, fails with its status; use as
    `async with`, which ends the stream."""

    def __init__(
        self, stub: inference_pb2_grpc.GRPCInferenceServiceStub, request: pb.ModelInferRequest
    ) -> None:
        self._stub, self._request = stub, request
        self._outgoing: asyncio.Queue[pb.ModelInferRequest | None] = asyncio.Queue()
        self._pending: dict[str, asyncio.Future[None]] = {}
        self._sent = 0
        self._failure: Exception = RequestFailed("STREAM_ERROR")
        self.unmatched = 0

    async def __aenter__(self) -> SharedStream:
        self._call = self._stub.ModelStreamInfer(self._requests())
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._outgoing.put_nowait(None)
        # Reading a call cancelled here raises CancelledError in the reader: the stream's end.
        self._call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader

    async def send(self) -> None:
        if self._reader.done():
            raise self._failure
        self._sent += 1
        request = pb.ModelInferRequest()
        request.CopyFrom(self._request)
        request.id = str(self._sent)
        answered = asyncio.get_running_loop().create_future()
        self._pending[request.id] = answered
        self._outgoing.put_nowait(request)
        try:
            await answered
        finally:
            self._pending.pop(request.id, None)

    async def _requests(self) -> AsyncIterator[pb.ModelInferRequest]:
        while (request := await self._outgoing.get()) is not None:
            yield request

    async def _read(self) -> None:
        try:
            async for response in self._call:
                answered = self._pending.pop(response.infer_response.id, None)
                if answered is None:
                    self.unmatched += 1
                elif answered.done():
                    continue
                elif response.error_message:
                    answered.set_exception(RequestFailed("STREAM_ERROR"))
                else:
                    answered.set_result(None)
        except grpc.aio.AioRpcError as error:
            self._failure = error
        finally:
            for answered in self._pending.values():
                if not answered.done():
                    answered.set_exception(self._failure)


@contextlib.asynccontextmanager
async def _front_door(
    address: str,
    model: str,
    tls: serving.TlsSettings,
    request: pb.ModelInferRequest | None,
    rows: int,
    seed: int,
    shared_memory_inputs: bool,
) -> AsyncIterator[tuple[inference_pb2_grpc.GRPCInferenceServiceStub, pb.ModelInferRequest]]:
    """A stub for `address` and the request to send (`request`, else one made from the
    model's metadata), its inputs in a registered shared-memory region if asked."""
    async with contextlib.AsyncExitStack() as stack:
        channel = await stack.enter_async_context(serving.channel(address, tls))
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = request or await sample_request(stub, model, seed, rows)
        if shared_memory_inputs:
            request = await stack.enter_async_context(inputs_in_shared_memory(stub, request))
        yield stub, request


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
    `seconds`, unary or each on its own ModelStreamInfer; with `shared_memory_inputs`, the
    inputs are read from a registered region. With a `window`, `seconds` is ignored: the
    clients send until the window ends and count only what completes inside it; without one
    every request counts, the last ones in flight included."""
    result = LoadResult()
    async with _front_door(address, model, tls, request, rows, 0, shared_memory_inputs) as (
        stub,
        request,
    ):
        began = time.perf_counter()
        count_from, stop_at = window.on_perf_counter() if window else (began, began + seconds)
        meter = _WindowCpu(count_from, stop_at)

        def counted(started: float, finished: float) -> bool:
            meter.sample(finished)
            return not window or count_from <= finished <= stop_at

        clients = [
            stream_send(stub, request) if stream else unary_send(stub, request, timeout_s)
            for _ in range(concurrency)
        ]
        await drive_closed_loop(
            clients, result, running=lambda: time.perf_counter() < stop_at, counted=counted
        )
        result.seconds = window.seconds if window else time.perf_counter() - began
        result.client_cpu_s = meter.cpu_s
    return result


async def open_loop(
    address: str,
    model: str,
    *,
    rate: float = 0.0,
    seconds: float = 0.0,
    times: Sequence[float] | None = None,
    cv: float = 1.0,
    seed: int = 0,
    request: pb.ModelInferRequest | None = None,
    timeout_s: float = 10.0,
    max_outstanding: int = 10_000,
    rows: int = 1,
    tls: serving.TlsSettings = serving.PLAINTEXT,
    shared_memory_inputs: bool = False,
    window: Window | None = None,
) -> LoadResult:
    """Unary requests at `times` (s from the start; see `arrival_times`), or else at `rate`/s
    for `seconds` with inter-arrival CV `cv` (1: Poisson). With a `window`, arrivals at `rate`
    run from now until its end and only requests issued and answered inside it count."""
    result = LoadResult()
    async with _front_door(address, model, tls, request, rows, seed, shared_memory_inputs) as (
        stub,
        request,
    ):
        began = time.perf_counter()
        count_from, stop_at = window.on_perf_counter() if window else (began, math.inf)
        meter = _WindowCpu(count_from, stop_at)

        def counted(started: float, finished: float) -> bool:
            meter.sample(finished)
            return started >= count_from and finished <= stop_at

        if times is None:
            span = stop_at - began if window else seconds
            times = steady_arrivals(rate, span, cv=cv, seed=seed)
        await drive_open_loop(
            unary_send(stub, request, timeout_s),
            times,
            result,
            max_outstanding=max_outstanding,
            counted=counted,
        )
        result.seconds = window.seconds if window else time.perf_counter() - began
        result.client_cpu_s = meter.cpu_s
    return result


class Booking(Protocol):
    """Where a SteadyLoad counts one request beyond its own totals: opened just before the request
    is sent, closed by its answer or its failure. Called from the load's thread; a booking read
    from another thread guards itself."""

    def answered(self, response: pb.ModelInferResponse) -> None: ...

    def failed(self, error: grpc.aio.AioRpcError) -> None: ...


class SteadyLoad:
    """`clients` closed-loop clients sending one request after another, from a background
    thread, while the `with` block runs: load for a test or benchmark that changes the cluster
    meanwhile (adds or drains a worker, rolls out a model version) and then checks that no
    request failed. The counts are live; read them under `lock`.

    `book`, if given, opens a `Booking` for each request as it is sent, so a caller can file
    requests by what was true when they left (a model rollout books each one on the version
    being rolled out then) without a load of its own."""

    def __init__(
        self,
        address: str,
        model: str,
        *,
        clients: int = 2,
        timeout_s: float = 30.0,
        book: Callable[[], Booking] | None = None,
    ) -> None:
        self.address, self.model = address, model
        self.clients, self.timeout_s = clients, timeout_s
        self.book = book
        self.result = LoadResult()
        self.sent = 0
        # Answers per model version.
        self.versions: Counter[str] = Counter()
        # Each failure's status and message, so a failed run says what went wrong.
        self.failures: Counter[str] = Counter()
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._error: BaseException | None = None

    @property
    def errors(self) -> int:
        return sum(self.failures.values())

    @property
    def unanswered(self) -> int:
        """Requests sent but neither answered nor failed (after the block: stuck ones)."""
        with self.lock:
            return self.sent - sum(self.versions.values()) - self.errors

    def _run(self) -> None:
        try:
            asyncio.run(self._load())
        except BaseException as error:  # re-raised in the caller's thread by __exit__
            self._error = error

    async def _load(self) -> None:
        async with serving.channel(self.address) as channel:
            stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
            request = await sample_request(stub, self.model)

            async def send() -> None:
                booking = self.book() if self.book else None
                with self.lock:
                    self.sent += 1
                try:
                    response = await stub.ModelInfer(request, timeout=self.timeout_s)
                except grpc.aio.AioRpcError as error:
                    with self.lock:
                        self.failures[f"{error.code().name}: {error.details()}"] += 1
                    if booking:
                        booking.failed(error)
                    raise
                with self.lock:
                    self.versions[response.model_version] += 1
                if booking:
                    booking.answered(response)

            await drive_closed_loop(
                [send] * self.clients, self.result, running=lambda: not self._stop.is_set()
            )

    def __enter__(self) -> SteadyLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(self.timeout_s * 2)
        if self._error is not None:
            raise RuntimeError(f"the load on {self.address} stopped") from self._error


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
