"""`tideserve report --record`: capture a RUN.json (schema in tideserve/runs.py) from a live
stack by sampling the balancer's WatchCluster stream.

The balancer already holds everything a run plot needs: the batchers' frontend reports (arrival
rate, p50/p99 latency), every worker's phase, and cumulative batch-size counts. Only the replica
count the scaler *wants* lives elsewhere, so with `scaler` set each sample also reads its
GetStatus; without one, desired replicas are the workers not draining (what the balancer routes
to or will again)."""

from __future__ import annotations

import time

from tideserve import serving
from tideserve.runs import Run, Sample, batch_size_delta
from tideserve.v1 import cluster_pb2, cluster_pb2_grpc


def sample_from_snapshot(
    snapshot: cluster_pb2.ClusterSnapshot,
    t0: float,
    status: cluster_pb2.ScalerStatus | None = None,
    slo_ms: float | None = None,
) -> Sample:
    """One RUN.json sample from one snapshot taken `snapshot.timestamp_unix - t0` s into the run.

    Several batchers are summed for arrivals; for latency the worst batcher's percentile is kept,
    since percentiles of separate streams cannot be averaged and the worst is what an SLO sees.
    Frontends that have answered nothing yet report 0 latency, which is no measurement: null."""
    ready = sum(1 for w in snapshot.workers if w.phase == cluster_pb2.WorkerState.READY)
    if status is not None:
        desired = status.desired_replicas
    else:
        desired = sum(1 for w in snapshot.workers if w.phase != cluster_pb2.WorkerState.DRAINING)
    answered = [f for f in snapshot.frontends if f.latency_p99_seconds > 0]
    return Sample(
        t=round(snapshot.timestamp_unix - t0, 3),
        arrival_rate=sum(f.arrival_rate for f in snapshot.frontends),
        replicas_ready=ready,
        replicas_desired=desired,
        latency_p50_ms=max(f.latency_p50_seconds for f in answered) * 1e3 if answered else None,
        latency_p99_ms=max(f.latency_p99_seconds for f in answered) * 1e3 if answered else None,
        slo_ms=slo_ms,
    )


async def record(
    balancer: str,
    seconds: float,
    *,
    interval_s: float = 0.5,
    scaler: str | None = None,
    slo_ms: float | None = None,
    token: str = "",
) -> Run:
    """Sample the cluster every `interval_s` for `seconds` (by the balancer's clock, so samples
    line up with its snapshot timestamps). Raises grpc.aio.AioRpcError if the balancer (or the
    scaler, when given) cannot be reached, RuntimeError if the stream ends before a snapshot."""
    if seconds <= 0 or interval_s <= 0:
        raise ValueError(f"seconds and interval must be > 0, got {seconds} and {interval_s}")
    samples: list[Sample] = []
    first: cluster_pb2.ClusterSnapshot | None = None
    last: cluster_pb2.ClusterSnapshot | None = None
    started_unix = time.time()
    # Plaintext, as `tideserve top` uses; recording a TLS cluster would pass its TlsSettings here.
    async with serving.channel(balancer) as channel:
        scaler_channel = serving.channel(scaler) if scaler else None
        try:
            scaler_stub = (cluster_pb2_grpc.ScalerAdminStub(scaler_channel)
                           if scaler_channel else None)
            # The deadline bounds the recording even if the balancer stops sending snapshots.
            call = cluster_pb2_grpc.BalancerStub(channel).WatchCluster(
                cluster_pb2.WatchClusterRequest(interval_seconds=interval_s),
                timeout=seconds + max(10.0, 4 * interval_s),
                metadata=serving.bearer(token),
            )
            async for snapshot in call:
                first = first or snapshot
                last = snapshot
                status = (await scaler_stub.GetStatus(cluster_pb2.GetStatusRequest(), timeout=5)
                          if scaler_stub else None)
                samples.append(sample_from_snapshot(snapshot, first.timestamp_unix, status,
                                                    slo_ms))
                if snapshot.timestamp_unix - first.timestamp_unix >= seconds:
                    break
            call.cancel()
        finally:
            if scaler_channel is not None:
                await scaler_channel.close()
    if first is None or last is None:
        raise RuntimeError(f"balancer {balancer} ended WatchCluster without a snapshot")
    return Run(
        samples,
        batch_size_delta(dict(first.batch_size_counts), dict(last.batch_size_counts)),
        {
            "source": "tideserve report --record",
            "balancer": balancer,
            "scaler": scaler,
            "started_unix": started_unix,
            "interval_s": interval_s,
            "routing_policy": last.routing_policy,
            "desired_replicas_from": "scaler" if scaler else "balancer (workers not draining)",
        },
    )
