"""`tideserve top`: a live terminal view of the cluster, redrawn from the balancer's WatchCluster
stream (workers, their load, batch sizes, routing) and the scaler's GetStatus (replicas, policy,
last decision). `--once` prints one frame and exits, for scripts and tests.

Plain text rather than a curses UI: a frame is a string, so it can be tested and piped."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

import grpc

from tideserve import serving
from tideserve.credentials import OPERATOR_TOKEN_HELP, operator_token_file, read_token_file
from tideserve.v1 import cluster_pb2, cluster_pb2_grpc

PHASES = {
    cluster_pb2.WorkerState.READY: "ready",
    cluster_pb2.WorkerState.DRAINING: "draining",
    cluster_pb2.WorkerState.EJECTED: "ejected",
}
CLEAR = "\x1b[H\x1b[2J"


def render(
    snapshot: cluster_pb2.ClusterSnapshot,
    status: cluster_pb2.ScalerStatus | None,
    previous: cluster_pb2.ClusterSnapshot | None = None,
) -> str:
    """One frame. With `previous`, rates (batches/s, utilisation) cover the interval between."""
    elapsed = snapshot.timestamp_unix - previous.timestamp_unix if previous else 0.0
    before = {w.worker_id: w for w in previous.workers} if previous else {}
    arrival = sum(f.arrival_rate for f in snapshot.frontends)
    queued = sum(f.queued_requests for f in snapshot.frontends)
    p99 = max((f.latency_p99_seconds for f in snapshot.frontends), default=0.0)
    lines = [
        f"tideserve  routing {snapshot.routing_policy}  workers {len(snapshot.workers)}  "
        f"arrivals {arrival:.0f}/s  queued {queued}  p99 {p99 * 1000:.1f} ms",
    ]
    if status is not None:
        pinned = f" pinned {status.pinned_replicas}" if status.HasField("pinned_replicas") else ""
        lines.append(
            f"scaler   policy {status.policy}{' (paused)' if status.paused else ''}{pinned}  "
            f"replicas desired {status.desired_replicas} ready {status.ready_replicas} "
            f"starting {status.starting_replicas} draining {status.draining_replicas} "
            f"[{status.min_replicas}..{status.max_replicas}]  runtime {status.runtime}"
        )
        if status.recent_decisions:
            last = status.recent_decisions[-1]
            lines.append(
                f"         last decision {last.current_replicas} -> {last.applied_replicas} "
                f"(proposed {last.proposed_replicas}): {last.reason}"
            )
    lines.append("")
    lines.append(
        f"{'WORKER':<22}{'PHASE':<10}{'DEVICE':<9}{'OUT':>5}{'ROWS':>6}{'BACKLOG ms':>12}"
        f"{'BATCHES/s':>11}{'BUSY':>7}{'HB ms':>8}  MODELS"
    )
    for worker in sorted(snapshot.workers, key=lambda w: w.worker_id):
        old = before.get(worker.worker_id)
        if old is not None and elapsed > 0:
            rate = f"{(worker.completed_batches - old.completed_batches) / elapsed:.1f}"
            busy = f"{(worker.busy_seconds - old.busy_seconds) / elapsed:.0%}"
        else:
            rate, busy = "-", "-"
        lines.append(
            f"{worker.worker_id:<22}{PHASES.get(worker.phase, '?'):<10}{worker.device:<9}"
            f"{worker.outstanding_batches:>5}{worker.outstanding_rows:>6}"
            f"{worker.expected_backlog_seconds * 1000:>12.1f}{rate:>11}{busy:>7}"
            f"{worker.heartbeat_age_seconds * 1000:>8.0f}  {','.join(worker.models)}"
        )
    counts = dict(snapshot.batch_size_counts)
    if previous is not None:
        counts = {s: n - previous.batch_size_counts.get(s, 0) for s, n in counts.items()}
    counts = {s: n for s, n in sorted(counts.items()) if n > 0}
    batches = sum(counts.values())
    mean = sum(s * n for s, n in counts.items()) / batches if batches else 0.0
    lines.append("")
    lines.append(
        f"batches  {snapshot.dispatched_batches} dispatched, {snapshot.failed_batches} failed, "
        f"{snapshot.retried_batches} retried;  sizes{' (interval)' if previous else ''}: "
        f"mean {mean:.1f}  " + " ".join(f"{s}:{n}" for s, n in counts.items())
    )
    return "\n".join(lines)


async def _status(scaler: str | None) -> cluster_pb2.ScalerStatus | None:
    if scaler is None:
        return None
    try:
        async with serving.channel(scaler) as channel:
            stub = cluster_pb2_grpc.ScalerAdminStub(channel)
            return await stub.GetStatus(cluster_pb2.GetStatusRequest(), timeout=2.0)
    except grpc.aio.AioRpcError:
        # No scaler (workers started by hand) is a normal set-up: show the balancer's view.
        return None


async def run(
    balancer: str, scaler: str | None, interval_s: float, once: bool, token: str = ""
) -> None:
    async with serving.channel(balancer) as channel:
        stub = cluster_pb2_grpc.BalancerStub(channel)
        previous: cluster_pb2.ClusterSnapshot | None = None
        async for snapshot in stub.WatchCluster(
            cluster_pb2.WatchClusterRequest(interval_seconds=interval_s),
            metadata=serving.bearer(token),
        ):
            frame = render(snapshot, await _status(scaler), previous)
            if once:
                print(frame, flush=True)
                return
            print(CLEAR + frame, flush=True)
            previous = snapshot


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tideserve top", description=__doc__.splitlines()[0])
    parser.add_argument("--balancer", default="127.0.0.1:8100")
    parser.add_argument("--scaler", default="127.0.0.1:8200", help="'' to leave the scaler out")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between frames")
    parser.add_argument("--once", action="store_true", help="print one frame and exit")
    parser.add_argument("--token-file", help=OPERATOR_TOKEN_HELP)
    args = parser.parse_args(argv)
    try:
        token = read_token_file(operator_token_file(args.token_file), "--token-file")
        asyncio.run(run(args.balancer, args.scaler or None, args.interval, args.once, token))
    except ValueError as error:
        print(f"tideserve top: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except grpc.aio.AioRpcError as error:
        print(f"tideserve top: balancer {args.balancer}: {error.code().name}", file=sys.stderr)
        return 1
    return 0
