"""The in-process limit: the TorchScript model called directly in a loop, no server, no network.

Why: every serving figure is read against what the model alone can do on this
machine at the same batch sizes and thread count. Whatever a server loses against this number is
its overhead (serialization, queueing, hops, scheduling), so this is the ceiling for cnn.pt
(compute-bound) and the yardstick that shows how overhead-bound mlp.pt is.

``threads`` Python threads each call the model back to back with the same pre-made input (torch
releases the GIL inside the op, so threads overlap like concurrent model instances would);
``--torch-threads`` sets torch's intra-op pool (0 leaves torch's default: one per core).

Usage:
    .venv/bin/python bench/inprocess.py MODEL.pt --batch-sizes 1 8 64 [--threads 1] [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import torch

from tideserve_tools.latency import percentile

# Per-sample input shapes of the standard workloads (/work/shared/workloads/make_models.py).
INPUT_SHAPES: dict[str, tuple[int, ...]] = {"mlp": (256,), "cnn": (3, 64, 64)}


def input_shape_for(model_path: Path) -> tuple[int, ...]:
    """Per-sample input shape from the file name (mlp*/cnn*), the convention of the workloads."""
    for prefix, shape in INPUT_SHAPES.items():
        if model_path.stem.startswith(prefix):
            return shape
    raise ValueError(f"unknown input shape for {model_path}; name it mlp*.pt or cnn*.pt")


def measure(
    model: torch.jit.ScriptModule,
    sample_shape: tuple[int, ...],
    batch_size: int,
    threads: int = 1,
    seconds: float = 5.0,
    warmup_s: float = 1.0,
) -> dict[str, Any]:
    """Run ``threads`` loops of ``model(x)`` for ``seconds`` at one batch size; return the figures.

    Warm-up runs first (TorchScript profiles and re-optimizes the graph on its first calls, and
    allocator caches fill), so that the timed window measures the steady state only.
    """
    x = torch.randn(batch_size, *sample_shape, dtype=torch.float32)
    with torch.inference_mode():
        deadline = time.perf_counter() + warmup_s
        while time.perf_counter() < deadline:
            model(x)

    latencies: list[list[float]] = [[] for _ in range(threads)]
    start_barrier = threading.Barrier(threads + 1)
    stop_at = [0.0]
    intra_op_threads = torch.get_num_threads()

    def loop(slot: list[float]) -> None:
        # torch's thread count is per OS thread; a new thread would use every core (as the
        # worker's executor threads would; services/worker/runner.py).
        torch.set_num_threads(intra_op_threads)
        start_barrier.wait()
        with torch.inference_mode():
            while True:
                t0 = time.perf_counter()
                if t0 >= stop_at[0]:
                    return
                model(x)
                slot.append(time.perf_counter() - t0)

    workers = [threading.Thread(target=loop, args=(lat,), daemon=True) for lat in latencies]
    for w in workers:
        w.start()
    stop_at[0] = time.perf_counter() + seconds
    t_begin = time.perf_counter()
    start_barrier.wait()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - t_begin
    calls = sum(len(lat) for lat in latencies)
    merged = sorted(v for lat in latencies for v in lat)
    return {
        "batch_size": batch_size,
        "threads": threads,
        "seconds": round(elapsed, 3),
        "calls": calls,
        "samples_per_s": round(calls * batch_size / elapsed, 1),
        "calls_per_s": round(calls / elapsed, 1),
        "call_ms": {
            "mean": round(statistics.fmean(merged) * 1e3, 3) if merged else None,
            "p50": round(percentile(merged, 50) * 1e3, 3),
            "p99": round(percentile(merged, 99) * 1e3, 3),
        },
    }


def run(
    model_path: Path,
    batch_sizes: list[int],
    threads: int = 1,
    seconds: float = 5.0,
    torch_threads: int = 0,
) -> dict[str, Any]:
    """Measure every batch size for one model and return a JSON-ready record with the settings."""
    if torch_threads > 0:
        torch.set_num_threads(torch_threads)
    model = torch.jit.load(str(model_path), map_location="cpu").eval()
    shape = input_shape_for(model_path)
    results = [measure(model, shape, b, threads, seconds) for b in batch_sizes]
    return {
        "kind": "inprocess",
        "model": str(model_path),
        "sample_shape": list(shape),
        "threads": threads,
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "cpus": os.cpu_count(),
        "machine": platform.platform(),
        "results": results,
        "best_samples_per_s": max(r["samples_per_s"] for r in results),
    }


def main(argv: list[str] | None = None) -> None:
    """CLI: print the JSON record (and write it to --out if given)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("model", type=Path)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 16, 32, 64])
    p.add_argument("--threads", type=int, default=1, help="Python threads calling the model")
    p.add_argument("--torch-threads", type=int, default=0, help="intra-op threads (0=default)")
    p.add_argument("--seconds", type=float, default=5.0, help="timed window per batch size")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    record = run(args.model, args.batch_sizes, args.threads, args.seconds, args.torch_threads)
    text = json.dumps(record, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
