"""Overload: does the batcher shed quickly and keep its goodput at 3x capacity?

One balancer, one batcher and `--workers` workers serve tiny_cnn capped at `--max-batch-size`
rows per batch. Each worker emulates a slower device (`--device-ms BASE,PER_ROW`: a batch of b rows
takes BASE + PER_ROW x b ms, the worker's `service_profile`), so capacity is set by the workers and
not by the load generator and the services fighting over this machine's two CPUs. `--slowdown K`
instead multiplies each batch's real compute time K-fold, which multiplies that CPU contention too:
under overload the shed traffic slows the workers and capacity falls with it. Phases:

1. capacity: a closed loop (`--concurrency` clients) for `--capacity-seconds`;
2. overload: open-loop Poisson arrivals at `--overload` x capacity for `--seconds` (30);
3. recovery: open-loop Poisson at `--recovery` x capacity for 5 s, right after.

Reported: goodput (OK responses/s during the overload) against capacity, the shed fraction
(RESOURCE_EXHAUSTED) and how long a rejection took, p99 of accepted requests, every other status
seen, the batcher's RSS before, at peak and after (bounded memory: no unbounded queue), and p99
in the recovery window. Latency is tideserve_tools.latency's: from just before each RPC is issued
to its answer. `--max-queue-rows-default 0` runs the same with an unbounded queue.

    python -m bench.overload [--seconds 30] [--workers 1] [--device-ms 20,2]
                             [--slowdown 1] [--max-queue-rows-default 256]

Loopback only. Writes bench/results/overload.json (or --output) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import tempfile
from pathlib import Path

from harness.cluster import Cluster
from services.worker.models import DEFAULT_MODEL, add_torchscript_model, write_default_model
from tideserve_tools.latency import OK, percentile
from tideserve_tools.loadgen import LoadResult, closed_loop, open_loop

RESULTS = Path(__file__).resolve().parent / "results"
REJECTED = "RESOURCE_EXHAUSTED"


def summary(phase: LoadResult, seconds: float) -> dict:
    """One open-loop phase: every status seen, goodput, the shed share, and the latencies of
    accepted and of rejected requests apart (a rejection should be quick)."""

    def ms(q: float, code: str = OK) -> float | None:
        value = phase.percentile_ms(q, code)
        return None if math.isnan(value) else round(value, 2)

    others = [x for code, xs in phase.error_latencies.items() if code != REJECTED for x in xs]
    return {
        "seconds": round(seconds, 2),
        "sent": phase.sent,
        "codes": phase.codes(),
        "goodput_per_s": round(phase.ok / seconds, 1),
        "shed_fraction": round(phase.errors.get(REJECTED, 0) / max(phase.sent, 1), 3),
        "ok_p50_ms": ms(50),
        "ok_p99_ms": ms(99),
        "reject_p50_ms": ms(50, REJECTED),
        "reject_p99_ms": ms(99, REJECTED),
        "other_max_ms": round(percentile(others, 100) * 1000, 2) if others else None,
    }


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def sample_rss(pid: int, samples: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        samples.append(rss_mib(pid))
        await asyncio.sleep(0.25)


async def measure(cluster: Cluster, args: argparse.Namespace) -> dict:
    batcher_pid = cluster.processes["batcher"].pid
    await closed_loop(cluster.batcher, DEFAULT_MODEL, concurrency=args.concurrency, seconds=2.0)
    capacity_run = await closed_loop(
        cluster.batcher, DEFAULT_MODEL, concurrency=args.concurrency,
        seconds=args.capacity_seconds, timeout_s=args.timeout_s,
    )
    capacity = capacity_run.throughput
    rss_before = rss_mib(batcher_pid)
    samples: list[float] = []
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_rss(batcher_pid, samples, stop))
    # Every arrival is sent: none is dropped by the client, whatever the backlog.
    common = {"timeout_s": args.timeout_s, "max_outstanding": 1 << 30}
    overload = await open_loop(cluster.batcher, DEFAULT_MODEL, rate=args.overload * capacity,
                               seconds=args.seconds, seed=1, **common)
    recovery = await open_loop(cluster.batcher, DEFAULT_MODEL, rate=args.recovery * capacity,
                               seconds=5.0, seed=2, **common)
    stop.set()
    await sampler
    over = summary(overload, args.seconds)
    return {
        "capacity_per_s": round(capacity, 1),
        "capacity_p99_ms": round(capacity_run.percentile_ms(99), 2),
        "capacity_errors": capacity_run.errors,
        "overload_rate_per_s": round(args.overload * capacity, 1),
        "overload": over,
        "goodput_vs_capacity": round(over["goodput_per_s"] / capacity, 3) if capacity else None,
        "recovery_rate_per_s": round(args.recovery * capacity, 1),
        "recovery": summary(recovery, 5.0),
        "batcher_rss_mib": {
            "before": round(rss_before, 1),
            "peak": round(max(samples), 1),
            "after": round(rss_mib(batcher_pid), 1),
        },
    }


def table(report: dict) -> str:
    over, rec, rss = report["overload"], report["recovery"], report["batcher_rss_mib"]
    rows = [
        ("capacity (closed loop)", f"{report['capacity_per_s']} req/s, p99 "
                                   f"{report['capacity_p99_ms']} ms"),
        ("offered load", f"{report['overload_rate_per_s']} req/s for {over['seconds']} s "
                         f"({over['sent']} requests)"),
        ("goodput", f"{over['goodput_per_s']} req/s = {report['goodput_vs_capacity']:.0%} "
                    "of capacity"),
        ("shed (RESOURCE_EXHAUSTED)", f"{over['shed_fraction']:.1%}; time to reject p50 "
         f"{over['reject_p50_ms']} ms, p99 {over['reject_p99_ms']} ms"),
        ("accepted p50 / p99", f"{over['ok_p50_ms']} / {over['ok_p99_ms']} ms"),
        ("statuses", json.dumps(over["codes"])),
        ("batcher RSS before / peak / after", f"{rss['before']} / {rss['peak']} / "
                                              f"{rss['after']} MiB"),
        ("recovery at 50%: p99, statuses", f"{rec['ok_p99_ms']} ms, {json.dumps(rec['codes'])}"),
    ]
    lines = ["| measure | value |", "| --- | --- |"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines)


def write_device_profile(root: Path, device_ms: str) -> Path:
    """A linear service curve t(b) = base + per_row x b as a worker service-profile file."""
    base_ms, per_row_ms = (float(part) for part in device_ms.split(","))
    sizes = [1, 64]
    path = root / "device_profile.json"
    path.write_text(json.dumps({
        "batch_sizes": sizes,
        "seconds": [(base_ms + per_row_ms * b) / 1000 for b in sizes],
    }))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--capacity-seconds", type=float, default=8.0)
    parser.add_argument("--overload", type=float, default=3.0)
    parser.add_argument("--recovery", type=float, default=0.5)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--device-ms", default="20,2",
        help="emulated device: b rows take BASE + PER_ROW x b ms; 'off' = the real model only",
    )
    parser.add_argument("--slowdown", type=float, default=1.0)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--timeout-s", type=float, default=5.0)
    parser.add_argument("--max-queue-rows-default", type=int, default=256)
    parser.add_argument("--output", type=Path, default=RESULTS / "overload.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        staging = root / "staging"
        write_default_model(staging)
        repository = root / "repository"
        add_torchscript_model(repository, DEFAULT_MODEL, staging / DEFAULT_MODEL / "1" / "model.pt",
                              [1, 28, 28], max_batch_size=args.max_batch_size)
        worker_args = ["--slowdown", str(args.slowdown)]
        if args.device_ms != "off":
            worker_args += ["--service-profile", str(write_device_profile(root, args.device_ms))]
        cluster = Cluster(
            repository, root / "logs",
            worker_args=tuple(worker_args),
            batcher_args=("--max-queue-rows-default", str(args.max_queue_rows_default)),
        )
        try:
            cluster.start(workers=args.workers)
            report = asyncio.run(measure(cluster, args))
        finally:
            cluster.stop()
    report["settings"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    report["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"\nwritten to {args.output}")


if __name__ == "__main__":
    main()
