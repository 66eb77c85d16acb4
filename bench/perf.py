"""Drive a KServe v2 / Triton gRPC endpoint with load and report throughput and latency as JSON.

Two drivers, one result shape:

* ``run_perf_analyzer`` (harness.perf_analyzer): Triton's own perf_analyzer, so tideserve and a
  real Triton are measured by exactly the same client.
* ``run_loadgen``: a grpc.aio generator for what perf_analyzer does not do: open-loop arrivals
  (Poisson or Gamma at a given rate, so queueing under a fixed offered load can be seen; a closed
  loop slows down with the server and hides it), and a closed loop over ModelStreamInfer that does
  not balloon in memory. Time-bounded; requests outstanding at the end are counted, not awaited.

CLI:
    python -m bench.perf pa --url 127.0.0.1:8011 --model mlp --concurrency 64 [--streaming]
    python -m bench.perf load --url 127.0.0.1:8001 --model mlp --mode open --rate 2000 \
        [--arrival gamma --cv 2] [--stream] --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.perf_analyzer import DEFAULT_MEM_LIMIT, run_perf_analyzer
from tideserve_tools.latency import percentile
from tideserve_tools.loadgen import steady_arrivals

HERE = Path(__file__).resolve().parent

# Per-sample input shapes of the standard workloads, for the Python generator.
INPUT_SHAPES: dict[str, tuple[int, ...]] = {"mlp": (256,), "cnn": (3, 64, 64)}


# --------------------------------------------------------------------------------------------
# Python load generator (grpc.aio)
# --------------------------------------------------------------------------------------------


def _pb() -> tuple[Any, Any]:
    """Import the generated protos lazily, so perf_analyzer helpers work without the package."""
    if str(HERE.parent) not in sys.path:
        sys.path.insert(0, str(HERE.parent))
    from tideserve.v1 import inference_pb2, inference_pb2_grpc

    return inference_pb2, inference_pb2_grpc


def make_request(
    model: str, shape: tuple[int, ...], input_name: str = "INPUT__0", seed: int = 0
) -> Any:
    """One FP32 ModelInferRequest with raw_input_contents, built once and reused for every call.

    Reusing the same message keeps the generator's own cost (serialization aside) out of the
    measurement; the server cannot cache on content in any of the systems compared.
    """
    import numpy as np

    pb, _ = _pb()
    data = np.random.default_rng(seed).standard_normal((1, *shape), dtype=np.float32)
    req = pb.ModelInferRequest(model_name=model)
    tensor = req.inputs.add()
    tensor.name = input_name
    tensor.datatype = "FP32"
    tensor.shape.extend([1, *shape])
    req.raw_input_contents.append(data.tobytes())
    return req


def arrival_cv(arrival: str, cv: float) -> float:
    """The inter-arrival CV of tideserve_tools.loadgen's schedule for an arrival process:
    Poisson 1, Gamma the given ``cv`` (above 1 burstier than Poisson at the same mean rate,
    which is what stresses a batcher's delay), uniform 0 (evenly spaced)."""
    if arrival not in ("poisson", "gamma", "uniform"):
        raise ValueError(f"unknown arrival process {arrival!r}")
    return {"poisson": 1.0, "gamma": cv, "uniform": 0.0}[arrival]


@dataclass
class _Tally:
    """Latencies (s) and errors of requests *sent inside the measured window*, for all clients.

    Requests sent during warm-up are not counted even when they complete later, so warm-up and
    the end-of-run grace period cannot inflate the figures.
    """

    window_start: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    sent: int = 0

    def on_send(self, t0: float) -> None:
        if t0 >= self.window_start:
            self.sent += 1

    def on_done(self, t0: float, error: str | None = None) -> None:
        if t0 < self.window_start:
            return
        if error is None:
            self.latencies.append(time.perf_counter() - t0)
        else:
            self.errors[error] = self.errors.get(error, 0) + 1


def _summary(tally: _Tally, elapsed: float) -> dict[str, Any]:
    """Throughput over the measurement window and latency percentiles in ms."""
    lat = sorted(tally.latencies)

    def pct(q: float) -> float | None:
        return round(percentile(lat, q) * 1e3, 3) if lat else None

    return {
        "sent": tally.sent,
        "completed": len(lat),
        "errors": tally.errors,
        "elapsed_s": round(elapsed, 3),
        "throughput_infer_per_s": round(len(lat) / elapsed, 1) if elapsed > 0 else None,
        "p50_ms": pct(50),
        "p90_ms": pct(90),
        "p95_ms": pct(95),
        "p99_ms": pct(99),
        "max_ms": round(lat[-1] * 1e3, 3) if lat else None,
        "mean_ms": round(sum(lat) / len(lat) * 1e3, 3) if lat else None,
    }


class _StreamClient:
    """One ModelStreamInfer stream with requests matched to responses by request ``id``.

    ids are required rather than relying on order: the issue's batcher preserves order on a
    stream, but a generator that assumed it would hide a violation as wrong latencies.
    """

    def __init__(self, stub: Any, tally: _Tally, timeout_s: float) -> None:
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._pending: dict[str, tuple[float, asyncio.Future[None] | None]] = {}
        self._tally = tally
        self._call = stub.ModelStreamInfer(self._requests(), timeout=timeout_s)
        self._reader = asyncio.ensure_future(self._read())

    async def _requests(self) -> Any:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            yield item

    async def _read(self) -> None:
        import grpc

        try:
            async for resp in self._call:
                entry = self._pending.pop(resp.infer_response.id, None)
                if entry is None:
                    self._tally.errors["unmatched_response"] = (
                        self._tally.errors.get("unmatched_response", 0) + 1
                    )
                    continue
                t0, fut = entry
                self._tally.on_done(t0, "stream_error" if resp.error_message else None)
                if fut is not None and not fut.done():
                    fut.set_result(None)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                self._tally.errors[exc.code().name] = self._tally.errors.get(exc.code().name, 0) + 1
        finally:
            for _, fut in self._pending.values():
                if fut is not None and not fut.done():
                    fut.set_result(None)

    def send(self, template: Any, rid: str, wait: bool) -> asyncio.Future[None] | None:
        """Queue one request; with ``wait`` return a future resolved when its response arrives."""
        req = type(template)()
        req.CopyFrom(template)
        req.id = rid
        fut = asyncio.get_running_loop().create_future() if wait else None
        t0 = time.perf_counter()
        self._pending[rid] = (t0, fut)
        self._tally.on_send(t0)
        self._queue.put_nowait(req)
        return fut

    def outstanding(self) -> int:
        """Requests of the measured window sent but not yet answered."""
        return sum(1 for t0, _ in self._pending.values() if t0 >= self._tally.window_start)

    async def close(self) -> None:
        """End the stream and stop the reader."""
        self._queue.put_nowait(None)
        self._call.cancel()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


async def _loadgen(
    url: str,
    model: str,
    *,
    mode: str,
    stream: bool,
    concurrency: int,
    rate: float,
    arrival: str,
    cv: float,
    seconds: float,
    warmup_s: float,
    request_timeout_s: float,
    max_outstanding: int,
    seed: int,
    shape: tuple[int, ...],
) -> dict[str, Any]:
    """Run one closed- or open-loop measurement; see ``run_loadgen``."""
    import grpc

    _, pb_grpc = _pb()
    template = make_request(model, shape, seed=seed)
    options = [("grpc.max_receive_message_length", 64 << 20)]
    channel = grpc.aio.insecure_channel(url, options=options)
    await asyncio.wait_for(channel.channel_ready(), timeout=10)
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    loop_t0 = time.perf_counter()
    tally = _Tally(window_start=loop_t0 + warmup_s)
    end_all = tally.window_start + seconds
    counter = [0]
    stream_life = seconds + warmup_s + request_timeout_s + 5

    def next_id() -> str:
        counter[0] += 1
        return str(counter[0])

    async def unary_once() -> None:
        t0 = time.perf_counter()
        tally.on_send(t0)
        try:
            await stub.ModelInfer(template, timeout=request_timeout_s)
        except grpc.aio.AioRpcError as exc:
            tally.on_done(t0, exc.code().name)
            return
        tally.on_done(t0)

    streams: list[_StreamClient] = []
    inflight: set[asyncio.Task[None]] = set()
    dropped = 0
    if mode == "closed":
        if stream:
            streams = [_StreamClient(stub, tally, stream_life) for _ in range(concurrency)]

        async def client(i: int) -> None:
            while time.perf_counter() < end_all:
                if stream:
                    fut = streams[i].send(template, next_id(), wait=True)
                    if fut is not None:
                        await fut
                else:
                    await unary_once()

        await asyncio.gather(*(client(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - tally.window_start
    else:
        times = steady_arrivals(rate, warmup_s + seconds, cv=arrival_cv(arrival, cv), seed=seed)
        if stream:
            streams = [_StreamClient(stub, tally, stream_life)]
        for at in times:
            delay = loop_t0 + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if stream:
                streams[0].send(template, next_id(), wait=False)
                continue
            if len(inflight) >= max_outstanding:
                # The generator must not become the bottleneck or eat the machine's memory; a
                # dropped arrival is reported so an overloaded server is visible, not hidden.
                dropped += 1
                continue
            task = asyncio.ensure_future(unary_once())
            inflight.add(task)
            task.add_done_callback(inflight.discard)
        elapsed = time.perf_counter() - tally.window_start
        # Grace period: up to 1 s for answers to requests sent before the end.
        grace_end = time.perf_counter() + 1.0
        while time.perf_counter() < grace_end and (
            inflight or any(s.outstanding() for s in streams)
        ):
            await asyncio.sleep(0.01)
    outstanding = sum(1 for t in inflight if not t.done()) + sum(
        s.outstanding() for s in streams
    )
    for t in list(inflight):
        t.cancel()
    for s in streams:
        await s.close()
    await channel.close()
    summary = _summary(tally, elapsed)
    summary["outstanding_at_end"] = outstanding
    if dropped:
        summary["errors"]["dropped_at_generator"] = dropped
    return summary


def run_loadgen(
    url: str,
    model: str,
    *,
    mode: str = "closed",
    stream: bool = False,
    concurrency: int = 1,
    rate: float = 100.0,
    arrival: str = "poisson",
    cv: float = 1.0,
    seconds: float = 10.0,
    warmup_s: float = 1.0,
    request_timeout_s: float = 10.0,
    max_outstanding: int = 4096,
    seed: int = 0,
    shape: tuple[int, ...] | None = None,
) -> dict[str, Any]:
    """Closed loop (``concurrency`` clients back to back) or open loop (arrivals at ``rate``/s).

    Bounded in time: ``warmup_s`` of unmeasured load, then ``seconds`` measured. Batch-1
    requests with the model's per-sample shape (``shape`` or the mlp/cnn default for ``model``).
    Returns the same latency/throughput keys as ``run_perf_analyzer``.
    """
    if mode not in ("closed", "open"):
        raise ValueError("mode must be 'closed' or 'open'")
    if shape is None:
        key = next((k for k in INPUT_SHAPES if model.startswith(k)), None)
        if key is None:
            raise ValueError(f"give shape= for model {model!r}")
        shape = INPUT_SHAPES[key]
    result = asyncio.run(
        _loadgen(
            url, model, mode=mode, stream=stream, concurrency=concurrency, rate=rate,
            arrival=arrival, cv=cv, seconds=seconds, warmup_s=warmup_s,
            request_timeout_s=request_timeout_s, max_outstanding=max_outstanding, seed=seed,
            shape=tuple(shape),
        )
    )
    settings = {
        "driver": "loadgen", "url": url, "model": model, "mode": mode, "stream": stream,
        "concurrency": concurrency if mode == "closed" else None,
        "rate": rate if mode == "open" else None,
        "arrival": arrival if mode == "open" else None,
        "cv": cv if mode == "open" and arrival == "gamma" else None,
        "seconds": seconds, "warmup_s": warmup_s, "shape": list(shape),
    }
    return {**settings, **result}


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _write(record: dict[str, Any], out: Path | None) -> None:
    """Print the record; also save it when --out is given (creating bench/results/ as needed)."""
    text = json.dumps(record, indent=2)
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


def main(argv: list[str] | None = None) -> int:
    """``pa`` runs perf_analyzer, ``load`` runs the Python generator; exit 1 on a failed run."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    pa = sub.add_parser("pa", help="perf_analyzer, one concurrency level")
    pa.add_argument("--url", default="127.0.0.1:8001")
    pa.add_argument("--model", required=True)
    pa.add_argument("--concurrency", type=int, default=1)
    pa.add_argument("--streaming", action="store_true")
    pa.add_argument("--measurement-ms", type=int, default=5000)
    pa.add_argument("--timeout-s", type=float, default=180)
    pa.add_argument("--stability-pct", type=float, default=20.0)
    pa.add_argument("--mem-limit-gb", type=float, default=DEFAULT_MEM_LIMIT / (1 << 30))
    pa.add_argument("--out", type=Path)

    lg = sub.add_parser("load", help="grpc.aio generator, closed or open loop")
    lg.add_argument("--url", default="127.0.0.1:8001")
    lg.add_argument("--model", required=True)
    lg.add_argument("--mode", choices=["closed", "open"], default="closed")
    lg.add_argument("--stream", action="store_true", help="use ModelStreamInfer")
    lg.add_argument("--concurrency", type=int, default=1)
    lg.add_argument("--rate", type=float, default=100.0, help="open loop: requests/s")
    lg.add_argument("--arrival", choices=["poisson", "gamma", "uniform"], default="poisson")
    lg.add_argument("--cv", type=float, default=1.0, help="gamma: coefficient of variation")
    lg.add_argument("--seconds", type=float, default=10.0)
    lg.add_argument("--warmup-s", type=float, default=1.0)
    lg.add_argument("--shape", type=int, nargs="*", default=None)
    lg.add_argument("--seed", type=int, default=0)
    lg.add_argument("--out", type=Path)

    args = p.parse_args(argv)
    if args.cmd == "pa":
        rec = run_perf_analyzer(
            args.url, args.model, args.concurrency, streaming=args.streaming,
            measurement_ms=args.measurement_ms, timeout_s=args.timeout_s,
            mem_limit_bytes=int(args.mem_limit_gb * (1 << 30)),
            stability_pct=args.stability_pct,
        )
        _write(rec, args.out)
        return 0 if rec["ok"] else 1
    rec = run_loadgen(
        args.url, args.model, mode=args.mode, stream=args.stream, concurrency=args.concurrency,
        rate=args.rate, arrival=args.arrival, cv=args.cv, seconds=args.seconds,
        warmup_s=args.warmup_s, seed=args.seed,
        shape=tuple(args.shape) if args.shape else None,
    )
    _write(rec, args.out)
    return 0 if rec["completed"] > 0 else 1


if __name__ == "__main__":
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    sys.exit(main())
