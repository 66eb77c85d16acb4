"""`tideserve profile MODEL`: measure a model's batch service-time curve and a worker's cold start,
and write them as the profile JSON the scaler's simulator and planner read.

* t(b): the model is loaded in-process exactly as a worker loads it (repository scan, ModelRunner,
  warm-up, the same torch thread setting), then a batch of zeros of each size is run `repeats`
  times; the median is kept, so one scheduler hiccup on a shared machine does not bend the curve.
  `slowdown` is applied as the worker applies it, so a profile can describe the slowed workers a
  benchmark runs.
* cold start: a real worker process (`python -m services.worker`) is started on a free port and
  its standard health service is polled; the delay is from process start to SERVING, which the
  worker reports only once its models are loaded and warmed up, right before it registers with
  the balancers. That is what a scale-up waits for in the live stack.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from services.worker.repository import scan
from services.worker.runner import ModelRunner, configure_threads, resolve_device
from tideserve.errors import InvalidArgument
from tideserve.healthprobe import wait_serving
from tideserve.procs import free_port

ROOT = Path(__file__).resolve().parents[2]


def _zeros(runner: ModelRunner, batch: int) -> list[np.ndarray]:
    arrays = []
    for spec in runner.spec.inputs:
        if spec.datatype != "FP32":
            raise InvalidArgument(f"profiling supports FP32 inputs only; {spec.name} is "
                                  f"{spec.datatype}")
        arrays.append(np.zeros([batch, *[max(d, 1) for d in spec.dims]], dtype=np.float32))
    return arrays


def measure_batches(
    repository: Path, model: str, batch_sizes: Sequence[int] | None, repeats: int,
    device: str = "cpu", slowdown: float = 1.0,
) -> tuple[list[int], list[float]]:
    """Median seconds per batch for each batch size (default: every size 1..max_batch_size)."""
    entry = scan(repository, [model])[-1]
    runner = ModelRunner(entry.config, entry.version, entry.model_path, resolve_device(device),
                         slowdown)
    try:
        runner.warm_up()
        max_batch = max(runner.config.max_batch_size, 1)
        sizes = sorted(set(batch_sizes or range(1, max_batch + 1)))
        if sizes[0] < 1 or sizes[-1] > max_batch:
            raise ValueError(f"batch sizes must lie in 1..{max_batch} for {model}")
        seconds = []
        for size in sizes:
            inputs = _zeros(runner, size)
            runner.run(inputs)  # the first run at a new shape may allocate
            samples = []
            for _ in range(repeats):
                started = time.perf_counter()
                runner.run(inputs)
                samples.append(time.perf_counter() - started)
            seconds.append(statistics.median(samples))
        return sizes, seconds
    finally:
        runner.close()


def measure_cold_start(
    repository: Path, model: str, threads: int, slowdown: float, timeout_s: float = 120.0
) -> float:
    """Seconds from starting a worker process to its health service answering SERVING."""
    port = free_port()
    # Nothing listens on the balancer port: the worker keeps retrying its heartbeat, which does
    # not delay SERVING, and no real cluster is disturbed.
    command = [
        sys.executable, "-m", "services.worker", "--worker-id", f"profile-{os.getpid()}",
        "--port", str(port), "--model-repository", str(repository), "--models", model,
        "--balancers", f"127.0.0.1:{free_port()}", "--threads", str(threads),
        "--device", "cpu", "--slowdown", str(slowdown),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        wait_serving(
            f"127.0.0.1:{port}",
            timeout_s,
            gone=lambda: None
            if process.poll() is None
            else f"worker exited with code {process.returncode}",
            interval_s=0.02,
        )
        return time.monotonic() - started
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.node()}: {cpu}, {os.cpu_count()} cores, {platform.system()}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tideserve profile", description=__doc__)
    parser.add_argument("model")
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--out", type=Path, help="profile JSON to write (default: print it)")
    parser.add_argument("--batch-sizes", type=lambda s: [int(b) for b in s.split(",")],
                        help="comma-separated sizes (default: every size 1..max_batch_size)")
    parser.add_argument("--repeats", type=int, default=15, help="runs per batch size (median)")
    parser.add_argument("--cold-starts", type=int, default=3, help="worker starts (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, as the worker's")
    parser.add_argument("--slowdown", type=float, default=1.0, help="as the worker's --slowdown")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.cold_starts < 1:
        parser.error("--repeats and --cold-starts must be >= 1")
    configure_threads(args.threads)
    sizes, seconds = measure_batches(args.model_repository, args.model, args.batch_sizes,
                                     args.repeats, slowdown=args.slowdown)
    colds = [measure_cold_start(args.model_repository, args.model, args.threads, args.slowdown)
             for _ in range(args.cold_starts)]
    argv_text = shlex.join(sys.argv[1:] if argv is None else argv)
    profile = {
        "model": args.model,
        "note": (f"Measured on {_machine()} (torch threads {args.threads}, slowdown "
                 f"{args.slowdown:g}, cpu) while the machine was shared; t(b) is the median of "
                 f"{args.repeats} runs, cold_start_s the median of {args.cold_starts} worker "
                 f"starts to health SERVING (all: {[round(c, 2) for c in colds]})."),
        "command": f"tideserve profile {argv_text}",
        "batch_sizes": sizes,
        "seconds": [round(s, 6) for s in seconds],
        "cold_start_s": round(statistics.median(colds), 2),
    }
    text = json.dumps(profile, indent=1) + "\n"
    if args.out is None:
        print(text, end="")
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"wrote {args.out}: t(1) {seconds[0] * 1e3:.2f} ms, t({sizes[-1]}) "
              f"{seconds[-1] * 1e3:.2f} ms, cold start {profile['cold_start_s']} s")
    return 0
