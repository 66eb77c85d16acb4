"""Drive a KServe v2 / Triton gRPC endpoint with load and report throughput and latency as JSON.

Two drivers, one result shape:

* ``run_perf_analyzer`` (harness.perf_analyzer): Triton's own perf_analyzer, so tideserve and a
  real Triton are measured by exactly the same client.
* ``run_loadgen``: tideserve_tools.loadgen's closed- and open-loop drivers, for what
  perf_analyzer does not do: open-loop arrivals (Poisson or Gamma at a given rate, so queueing
  under a fixed offered load can be seen; a closed loop slows down with the server and hides it),
  open-loop arrivals over one shared ModelStreamInfer stream, and a closed loop over
  ModelStreamInfer that does not balloon in memory. Time-bounded; requests outstanding at the
  end are counted, not awaited.

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
from pathlib import Path
from typing import Any

import numpy as np

from harness.perf_analyzer import DEFAULT_MEM_LIMIT, run_perf_analyzer
from tideserve import serving
from tideserve.v1 import inference_pb2 as pb
from tideserve.v1 import inference_pb2_grpc
from tideserve_tools.loadgen import (
    CLIENT_OVERLOAD,
    LoadResult,
    SharedStream,
    drive_closed_loop,
    drive_open_loop,
    steady_arrivals,
    stream_send,
    unary_send,
)

# Per-sample input shapes of the standard workloads, for the Python generator.
INPUT_SHAPES: dict[str, tuple[int, ...]] = {"mlp": (256,), "cnn": (3, 64, 64)}
# How long an open loop waits, after its last arrival, for the answers still outstanding.
GRACE_S = 1.0


# --------------------------------------------------------------------------------------------
# Python load generator (tideserve_tools.loadgen's drivers)
# --------------------------------------------------------------------------------------------


def make_request(
    model: str, shape: tuple[int, ...], input_name: str = "INPUT__0", seed: int = 0
) -> pb.ModelInferRequest:
    """One FP32 ModelInferRequest with raw_input_contents, built once and reused for every call.

    Reusing the same message keeps the generator's own cost (serialization aside) out of the
    measurement; the server cannot cache on content in any of the systems compared.
    """
    data = np.random.default_rng(seed).standard_normal((1, *shape), dtype=np.float32)
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name=input_name, datatype="FP32", shape=[1, *shape])
    request.raw_input_contents.append(data.tobytes())
    return request


def arrival_cv(arrival: str, cv: float) -> float:
    """The inter-arrival CV of tideserve_tools.loadgen's schedule for an arrival process:
    Poisson 1, Gamma the given ``cv`` (above 1 burstier than Poisson at the same mean rate,
    which is what stresses a batcher's delay), uniform 0 (evenly spaced)."""
    if arrival not in ("poisson", "gamma", "uniform"):
        raise ValueError(f"unknown arrival process {arrival!r}")
    return {"poisson": 1.0, "gamma": cv, "uniform": 0.0}[arrival]


def _summary(result: LoadResult, elapsed: float) -> dict[str, Any]:
    """Throughput over the measurement window and latency percentiles (nearest rank) in ms."""
    lat = sorted(result.latencies)

    def pct(q: float) -> float | None:
        return round(result.percentile_ms(q), 3) if lat else None

    return {
        # Requests issued in the window: answered, failed, or still outstanding at the end (an
        # arrival the generator refused, CLIENT_OVERLOAD, was never issued).
        "sent": result.sent - result.errors.get(CLIENT_OVERLOAD, 0) + result.unfinished,
        "completed": len(lat),
        "errors": dict(result.errors),
        "elapsed_s": round(elapsed, 3),
        "throughput_infer_per_s": round(len(lat) / elapsed, 1) if elapsed > 0 else None,
        "p50_ms": pct(50),
        "p90_ms": pct(90),
        "p95_ms": pct(95),
        "p99_ms": pct(99),
        "max_ms": round(lat[-1] * 1e3, 3) if lat else None,
        "mean_ms": round(sum(lat) / len(lat) * 1e3, 3) if lat else None,
        "outstanding_at_end": result.unfinished,
    }


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
    template = make_request(model, shape, seed=seed)
    result = LoadResult()
    async with serving.channel(url) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=10)
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        window_start = time.perf_counter() + warmup_s

        def counted(started: float, finished: float) -> bool:
            # Warm-up requests are left out even when they complete inside the window.
            return started >= window_start

        if mode == "closed":
            end = window_start + seconds
            clients = [
                stream_send(stub, template, warmup_s + seconds + request_timeout_s)
                if stream
                else unary_send(stub, template, request_timeout_s)
                for _ in range(concurrency)
            ]
            await drive_closed_loop(
                clients, result, running=lambda: time.perf_counter() < end, counted=counted
            )
            elapsed = time.perf_counter() - window_start
        else:
            times = steady_arrivals(rate, warmup_s + seconds, cv=arrival_cv(arrival, cv), seed=seed)
            async with contextlib.AsyncExitStack() as stack:
                shared = (
                    await stack.enter_async_context(SharedStream(stub, template))
                    if stream
                    else None
                )
                await drive_open_loop(
                    shared.send if shared else unary_send(stub, template, request_timeout_s),
                    times,
                    result,
                    max_outstanding=max_outstanding,
                    counted=counted,
                    grace_s=GRACE_S,
                )
                if shared and shared.unmatched:
                    result.errors["UNMATCHED_RESPONSE"] = shared.unmatched
            elapsed = seconds
    return _summary(result, elapsed)


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
    With ``stream``, the closed loop gives each client a ModelStreamInfer stream of its own and
    the open loop sends every arrival over one shared stream, answers matched by request id.
    Returns the same latency/throughput keys as ``run_perf_analyzer``.

    What is counted: the requests issued at or after the end of the warm-up, whenever they
    complete (a warm-up request completing inside the window is left out, so neither warm-up
    nor the end of the run inflates the figures); latency from just before the RPC (or the
    stream write) to its answer, percentiles by nearest rank (tideserve_tools.latency).
    Throughput is completed requests over ``elapsed_s``: for a closed loop, from the end of
    the warm-up until the last client's last answer; for an open loop, ``seconds``, the span
    of the measured arrivals. An open loop then waits up to 1 s for the answers still
    outstanding; those it stops waiting for are ``outstanding_at_end`` (and in ``sent``, in
    no other count).

    Errors are keyed by gRPC status name, and by ``STREAM_ERROR`` for a stream's response
    carrying an error message or a stream that ended, ``CLIENT_OVERLOAD`` for an open-loop
    arrival not sent because ``max_outstanding`` were in flight (a bound that now holds for the
    shared stream too), ``UNMATCHED_RESPONSE`` for a stream response no request waited for.
    Since moving onto the shared drivers: an open loop's throughput divides by ``seconds``
    rather than by the time its last arrival was issued (the same unless the generator falls
    behind its schedule), and a CLIENT_OVERLOAD (formerly ``dropped_at_generator``) is counted
    only in the measured window; error keys are spelt as the drivers spell them
    (``STREAM_ERROR``, ``UNMATCHED_RESPONSE``, formerly in lower case).
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
            url,
            model,
            mode=mode,
            stream=stream,
            concurrency=concurrency,
            rate=rate,
            arrival=arrival,
            cv=cv,
            seconds=seconds,
            warmup_s=warmup_s,
            request_timeout_s=request_timeout_s,
            max_outstanding=max_outstanding,
            seed=seed,
            shape=tuple(shape),
        )
    )
    settings = {
        "driver": "loadgen",
        "url": url,
        "model": model,
        "mode": mode,
        "stream": stream,
        "concurrency": concurrency if mode == "closed" else None,
        "rate": rate if mode == "open" else None,
        "arrival": arrival if mode == "open" else None,
        "cv": cv if mode == "open" and arrival == "gamma" else None,
        "seconds": seconds,
        "warmup_s": warmup_s,
        "shape": list(shape),
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
            args.url,
            args.model,
            args.concurrency,
            streaming=args.streaming,
            measurement_ms=args.measurement_ms,
            timeout_s=args.timeout_s,
            mem_limit_bytes=int(args.mem_limit_gb * (1 << 30)),
            stability_pct=args.stability_pct,
        )
        _write(rec, args.out)
        return 0 if rec["ok"] else 1
    rec = run_loadgen(
        args.url,
        args.model,
        mode=args.mode,
        stream=args.stream,
        concurrency=args.concurrency,
        rate=args.rate,
        arrival=args.arrival,
        cv=args.cv,
        seconds=args.seconds,
        warmup_s=args.warmup_s,
        seed=args.seed,
        shape=tuple(args.shape) if args.shape else None,
    )
    _write(rec, args.out)
    return 0 if rec["completed"] > 0 else 1


if __name__ == "__main__":
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    sys.exit(main())
