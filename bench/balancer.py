"""Routing policies with uneven workers, and the cost of the balancer hop.

Four workers serve one model (default: the shared workloads' cnn), one of them 3x slower. After
a warm-up, capacity is measured with a closed loop through the balancer; then open-loop
Poisson load at `--load` (80%) of it is sent straight to the balancer's Dispatch (the same
raw Batch bytes and metadata the batcher sends, so no batching policy blurs the routing), once
per policy on the same arrival trace, switching
policy at runtime with SetRoutingPolicy. shortest_expected_delay is join-shortest-queue by expected
completion time and serves as the JSQ reference. Latency is tideserve_tools.latency's: from just
before each RPC is issued to its answer.

The hop: a separate balancer with one unslowed worker; batch-1 requests alternate between the
worker's Execute (batcher -> worker direct) and that balancer's Dispatch (through the balancer).

Every worker's compute is stretched by `--base-slowdown` (the slow one by 3x that) so that
service time is mostly sleep: on a 2-core machine four busy workers would otherwise fight the
client and the balancer for CPU and "capacity" would measure the machine, not the policies. Keep
it small: the worker sleeps a multiple of each batch's measured compute, so it multiplies CPU
jitter too (tiny_cnn at 40x turned 4 ms preemptions into 160 ms stalls), which is why the default
model is the compute-heavy cnn at 3x rather than tiny_cnn at a large factor.

    python -m bench.balancer [--model cnn] [--seconds 8] [--base-slowdown 3] [--load 0.8]

Loopback only. Writes bench/results/balancer.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable
from pathlib import Path

import grpc
import numpy as np

from harness.cluster import Cluster, wait_for
from services.worker.models import DEFAULT_MODEL, add_torchscript_model, write_default_model
from tideserve.credentials import write_secret
from tideserve.grpc_options import CHANNEL_OPTIONS
from tideserve.metadata import MODEL_KEY, ROWS_KEY
from tideserve.serving import bearer
from tideserve.v1 import cluster_pb2, cluster_pb2_grpc
from tideserve_tools.loadgen import (
    LoadResult,
    Send,
    drive_closed_loop,
    drive_open_loop,
    steady_arrivals,
    timed,
)

RESULTS = Path(__file__).parent / "results"
SHARED_WORKLOADS = Path(__file__).resolve().parents[2] / "shared" / "workloads" / "make_models.py"
# Input dims (batch excluded) of the models the bench can serve.
INPUT_DIMS = {DEFAULT_MODEL: [1, 28, 28], "mlp": [256], "cnn": [3, 64, 64]}
DISPATCH = "/tideserve.v1.Balancer/Dispatch"
EXECUTE = "/tideserve.v1.Worker/Execute"
# Measured in this order on the same trace; round robin last, because the slow worker's queue it
# builds would take long to drain before the next policy.
POLICIES = (
    "shortest_expected_delay",
    "power_of_two",
    "weighted_round_robin",
    "least_load",
    "round_robin",
)
DEFAULT_POLICY = "shortest_expected_delay"
JSQ = "shortest_expected_delay"
REQUEST_TIMEOUT_S = 10.0


def summary(run: LoadResult) -> dict:
    return {
        "ok": run.ok,
        "errors": dict(run.errors),
        "throughput": run.throughput,
        "p50_ms": run.percentile_ms(50),
        "p99_ms": run.percentile_ms(99),
        "max_ms": run.percentile_ms(100),
    }


def batch_bytes(model: str, auth: tuple = ()) -> tuple[bytes, tuple]:
    """One serialized batch-1 Batch and its Dispatch metadata, as the batcher would send them
    (`auth`: the batcher role's credentials)."""
    shape = [1, *INPUT_DIMS[model]]
    data = np.random.default_rng(0).random(shape, dtype=np.float32)
    batch = cluster_pb2.Batch(batch_id="bench", model_name=model)
    batch.inputs.add(name="INPUT__0", datatype="FP32", shape=shape, raw=data.tobytes())
    return batch.SerializeToString(), ((MODEL_KEY, model), (ROWS_KEY, "1"), *auth)


def model_repository(root: Path, model: str) -> Path:
    """tiny_cnn always; mlp and cnn from ../shared/workloads when asked for."""
    repository = root / "models"
    write_default_model(repository)
    if model != DEFAULT_MODEL:
        subprocess.run([sys.executable, str(SHARED_WORKLOADS), str(root)], check=True)
        add_torchscript_model(repository, model, root / f"{model}.pt", INPUT_DIMS[model])
    return repository


def dispatch(call: grpc.aio.UnaryUnaryMultiCallable, payload: tuple[bytes, tuple]) -> Send:
    """One raw call of `call` with `payload` (serialized request, metadata)."""

    def send() -> Awaitable[object]:
        return call(payload[0], timeout=REQUEST_TIMEOUT_S, metadata=payload[1])

    return send


async def open_loop(
    call: grpc.aio.UnaryUnaryMultiCallable,
    payload: tuple[bytes, tuple],
    rate: float,
    seconds: float,
    seed: int,
) -> LoadResult:
    """Poisson arrivals at `rate` for `seconds` (tideserve_tools.loadgen's open loop)."""
    run = LoadResult()
    began = time.perf_counter()
    await drive_open_loop(dispatch(call, payload), steady_arrivals(rate, seconds, seed=seed), run)
    run.seconds = time.perf_counter() - began
    return run


async def closed_loop(
    call: grpc.aio.UnaryUnaryMultiCallable,
    payload: tuple[bytes, tuple],
    concurrency: int,
    seconds: float,
) -> LoadResult:
    run = LoadResult()
    began = time.perf_counter()
    stop_at = began + seconds
    await drive_closed_loop(
        [dispatch(call, payload)] * concurrency, run, running=lambda: time.perf_counter() < stop_at
    )
    run.seconds = time.perf_counter() - began
    return run


def idle(cluster: Cluster) -> bool:
    return all(w.outstanding_batches == 0 for w in cluster.snapshot().workers)


def set_policy(cluster: Cluster, name: str) -> None:
    with grpc.insecure_channel(cluster.balancer, options=CHANNEL_OPTIONS) as channel:
        cluster_pb2_grpc.BalancerStub(channel).SetRoutingPolicy(
            cluster_pb2.SetRoutingPolicyRequest(name=name), timeout=5, metadata=cluster.auth()
        )


def worker_shares(before: cluster_pb2.ClusterSnapshot, after: cluster_pb2.ClusterSnapshot) -> dict:
    done = {w.worker_id: w.completed_batches for w in before.workers}
    return {w.worker_id: w.completed_batches - done.get(w.worker_id, 0) for w in after.workers}


async def policies(cluster: Cluster, args: argparse.Namespace) -> dict:
    payload = batch_bytes(args.model, cluster.auth("batcher"))
    async with grpc.aio.insecure_channel(cluster.balancer, options=CHANNEL_OPTIONS) as channel:
        call = channel.unary_unary(DISPATCH)
        await closed_loop(call, payload, concurrency=8, seconds=args.warmup)
        capacity_run = await closed_loop(call, payload, concurrency=16, seconds=args.capacity_s)
        capacity = capacity_run.throughput
        # What each worker says one batch costs it (compute and slowdown, no overhead).
        measured = {
            w.worker_id: 1.0 / t.seconds
            for w in cluster.snapshot().workers
            for t in w.service_times
            if t.batch_size == 1
        }
        rate = args.load * capacity
        print(
            f"capacity {capacity:.0f} batches/s (closed loop, 16 in flight); offered {rate:.0f}/s"
        )
        results = {}
        for name in POLICIES:
            await asyncio.to_thread(wait_for, lambda: idle(cluster), 60, "idle workers")
            await asyncio.to_thread(set_policy, cluster, name)
            # Unmeasured lead-in at the same rate: each policy starts from its own steady state,
            # not from whatever the previous phase left in the balancer's estimates.
            await open_loop(call, payload, rate, args.lead_in, seed=args.seed + 1)
            before = await asyncio.to_thread(cluster.snapshot)
            run = await open_loop(call, payload, rate, args.seconds, seed=args.seed)
            after = await asyncio.to_thread(cluster.snapshot)
            results[name] = {**summary(run), "batches_per_worker": worker_shares(before, after)}
            print(
                f"  {name:<24} p50 {results[name]['p50_ms']:8.1f} ms  "
                f"p99 {results[name]['p99_ms']:8.1f} ms  errors {dict(run.errors)}"
            )
    return {
        "capacity_batches_per_s": capacity,
        "worker_compute_rate_per_s": measured,
        "offered_rate_per_s": rate,
        "policies": results,
    }


async def hop(cluster: Cluster, requests: int, execute_key: str) -> dict:
    """Alternate direct and balanced batch-1 requests to one idle worker; p50 of each. The
    direct ones present the worker's Execute key (`execute_key`), as its balancer does."""
    payload = batch_bytes(DEFAULT_MODEL, cluster.auth("batcher"))
    direct_payload = (payload[0], bearer(execute_key))
    address = cluster.snapshot().workers[0].address
    direct, balanced = LoadResult(), LoadResult()
    async with (
        grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as to_worker,
        grpc.aio.insecure_channel(cluster.balancer, options=CHANNEL_OPTIONS) as to_balancer,
    ):
        execute = to_worker.unary_unary(EXECUTE)
        to_balancer_call = to_balancer.unary_unary(DISPATCH)
        for index in range(requests):
            pairs = ((execute, direct_payload, direct), (to_balancer_call, payload, balanced))
            for call, sent, run in pairs[:: 1 - 2 * (index % 2)]:
                await timed(dispatch(call, sent), run)
    return {
        "requests_each": requests,
        "direct_p50_ms": direct.percentile_ms(50),
        "via_balancer_p50_ms": balanced.percentile_ms(50),
        "added_p50_ms": balanced.percentile_ms(50) - direct.percentile_ms(50),
        "direct_p99_ms": direct.percentile_ms(99),
        "via_balancer_p99_ms": balanced.percentile_ms(99),
        "errors": dict(Counter(direct.errors) + Counter(balanced.errors)),
    }


def table(report: dict) -> str:
    rows = report["policies"]
    rr, jsq, default = rows["round_robin"], rows[JSQ], rows[DEFAULT_POLICY]
    lines = [
        f"4 workers (one {report['slow_factor']}x slower), {report['model']} batch 1, "
        f"base slowdown {report['base_slowdown']}, open-loop Poisson at "
        f"{report['offered_rate_per_s']:.0f}/s = {report['load']:.0%} of measured capacity "
        f"{report['capacity_batches_per_s']:.0f}/s, {report['seconds']} s per policy",
        "",
        "| policy | p50 ms | p99 ms | max ms | ok | errors | batches per worker |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for name, row in rows.items():
        shares = ", ".join(f"{w}:{n}" for w, n in sorted(row["batches_per_worker"].items()))
        mark = " (default)" if name == DEFAULT_POLICY else ""
        lines.append(
            f"| {name}{mark} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {row['max_ms']:.1f} "
            f"| {row['ok']} | {row['errors'] or '-'} | {shares} |"
        )
    hop_ = report["hop"]
    lines += [
        "",
        f"default p99 / round_robin p99 = {default['p99_ms'] / rr['p99_ms']:.2f} (target <= 0.5); "
        f"default p99 / JSQ p99 = {default['p99_ms'] / jsq['p99_ms']:.2f} (target <= 1.3); "
        f"lowest p99: {min(rows, key=lambda n: rows[n]['p99_ms'])}",
        "",
        "| balancer hop (batch 1, unslowed worker) | p50 ms | p99 ms |",
        "|---|---:|---:|",
        f"| batcher -> worker direct | {hop_['direct_p50_ms']:.2f} | {hop_['direct_p99_ms']:.2f} |",
        f"| batcher -> balancer -> worker | {hop_['via_balancer_p50_ms']:.2f} "
        f"| {hop_['via_balancer_p99_ms']:.2f} |",
        f"| added by the hop | {hop_['added_p50_ms']:.2f} | |",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(INPUT_DIMS), default="cnn")
    parser.add_argument("--seconds", type=float, default=8.0, help="load per policy")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--lead-in", type=float, default=2.0, help="unmeasured, per policy")
    parser.add_argument("--capacity-s", type=float, default=4.0)
    parser.add_argument("--load", type=float, default=0.8, help="fraction of measured capacity")
    parser.add_argument("--base-slowdown", type=float, default=3.0)
    parser.add_argument("--slow-factor", type=float, default=3.0)
    parser.add_argument("--hop-requests", type=int, default=400)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        repository = model_repository(Path(tmp), args.model)
        logs = RESULTS / "logs" / "balancer"
        main_cluster = Cluster(
            repository, logs / "policies", balancer_args=("--routing-policy", DEFAULT_POLICY)
        )
        # The hop's worker takes its Execute key from a file, so the bench can call it directly.
        execute_key = secrets.token_urlsafe(32)
        key_file = write_secret(Path(tmp) / "execute.key", execute_key)
        hop_cluster = Cluster(
            repository, logs / "hop", worker_args=("--execute-key-file", str(key_file))
        )
        try:
            main_cluster.start(workers=0)
            for index in range(3):
                main_cluster.add_worker(
                    f"fast-{index}", "--models", args.model, "--slowdown", str(args.base_slowdown)
                )
            main_cluster.add_worker(
                "slow-3",
                "--models",
                args.model,
                "--slowdown",
                str(args.base_slowdown * args.slow_factor),
            )
            main_cluster.wait_workers(4)
            report = asyncio.run(policies(main_cluster, args))
            main_cluster.stop()
            hop_cluster.start(workers=1)
            report["hop"] = asyncio.run(hop(hop_cluster, args.hop_requests, execute_key))
        finally:
            main_cluster.stop()
            hop_cluster.stop()

    report.update(
        model=args.model,
        seconds=args.seconds,
        load=args.load,
        base_slowdown=args.base_slowdown,
        slow_factor=args.slow_factor,
        default_policy=DEFAULT_POLICY,
        machine={"cpus": os.cpu_count(), "platform": platform.platform()},
    )
    (RESULTS / "balancer.json").write_text(json.dumps(report, indent=2))
    print(table(report))


if __name__ == "__main__":
    main()
