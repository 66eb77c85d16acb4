"""Sim-to-real: how far the simulator's prediction is from the real local stack.

A held-out trace is time-compressed (`--compress` x faster) and scaled so its peak is `--peak` of
the cluster's SLO capacity, exactly as the simulator scales it. For each policy (learned, HPA):

One profile file describes the device to all three parties. It is `--profile`'s straight-line
fit t(b) = alpha + beta b (the curve the simulator uses) written at the profile's batch sizes, with
the cold start measured here on the process runtime (below), so:

* the workers emulate that device: `--service-profile` pads each batch up to t(b) (the real model
  still runs; see tideserve/profiles.py), which, unlike `--slowdown`, does not multiply
  the CPU contention of a shared machine into the service time;
* the simulator predicts with it, and the live scaler observes with it.

Cold start: before the runs a stack is started and one extra worker is pinned three times
(`ScaleTo`); the delay from the worker process starting to the balancer routing to it (the
scaler's worker list shows its address) is measured, and the median is the profile's cold start.
The runs record the same delay for every worker they start, under load.

One arrival realization serves both: the send times are drawn once from the trace's rates (Gamma
inter-arrival times with the trace's CV, `--seed`), the generator sends exactly those, and the
simulator replays their per-second counts instead of drawing its own. The simulator starts in
steady state at the trace's first rate, as if it had been running; the real stack is brought
there by a lead-in (`--lead-in-s`, default 35 s: the learned policy's 30 s rate history and the
batcher's 5 s rate window) at that rate before the trace, which is not measured.

* prediction: the simulator runs the trace under the live scaler's own controller
  (`tideserve_learning.sim.scaler`: the policy, the learned policy's fallback, the guards and the
  bounds) with that profile and the same guards as the real scaler (bounds, cooldowns, the
  scale-down stabilisation window, max steps), and with the live scaler's measurement windows
  (the batcher's 5 s arrival rate, the observer's 2 s utilisation);
* reality: a fresh local stack (process runtime, workers `--threads 1` emulating the profile) is
  driven by an open-loop generator sending those requests, the scaler running the same policy
  with the same profile, SLO and guards; worker-seconds are integrated from the scaler's status
  (starting + ready, as the simulator counts them), SLO attainment is the share of sent requests
  answered within the SLO (failures count as misses). The scaler's decisions (when, from, to)
  are recorded beside the simulator's.

    python -m bench.sim_to_real                      # spike seed 1000, 600 s trace in 150 s
    python -m bench.sim_to_real --policies hpa --compress 6 --cold-start-s 3

Loopback only; the load is bounded by the trace (a few hundred requests/s at most) and by a cap
on requests in flight. Results are printed and written to bench/results/sim_to_real.json.
`--run-json DIR` also writes each policy's timelines in `tideserve report`'s RUN.json format:
DIR/<policy>-real.json (per trace second: requests sent, client-side p50/p99 of those answered,
the scaler's ready and desired replicas; the balancer's batch sizes over the run) and
DIR/<policy>-sim.json (the simulator's prediction), so `tideserve report` plots either.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from harness.cluster import ROOT
from harness.stack import LocalStack
from services.batcher.core import ARRIVAL_WINDOW_S
from services.batcher.settings import BatcherSettings
from services.scaler.guards import GuardConfig
from services.scaler.observe import ClusterObserver
from services.scaler.planner import ServiceProfile
from services.scaler.policies import ScalingContext
from services.scaler.settings import ScalerSettings
from services.worker.models import DEFAULT_MODEL, write_default_model
from tideserve.runs import Run, Sample, batch_size_delta
from tideserve.v1 import cluster_pb2, cluster_pb2_grpc
from tideserve_learning.evaluate import episode_run
from tideserve_learning.sim import traces
from tideserve_learning.sim.env import DEFAULT_PROFILE, EnvConfig, EpisodeLog, ServingClusterEnv
from tideserve_learning.sim.scaler import PolicySpec, drive
from tideserve_tools.latency import OK, percentile
from tideserve_tools.loadgen import LoadResult, arrival_times, open_loop, per_second

RESULTS = ROOT / "bench" / "results" / "sim_to_real.json"
# The live batcher's batches in flight per worker (per model instance; the default model has
# one), the window of the arrival rate it reports to the scaler (services/batcher/core.py,
# frontend_report) and the window of the throughput the scaler's utilisation is measured over
# (services/scaler/observe.py): the simulator is told all three.
INFLIGHT_PER_WORKER = BatcherSettings().inflight_per_instance
RATE_WINDOW_S = ARRIVAL_WINDOW_S
UTIL_WINDOW_S = ClusterObserver(slo_s=1.0).window_s


@dataclass(frozen=True)
class Setup:
    """Everything the simulator and the real stack must agree on."""

    profile_path: Path
    slo_s: float
    max_replicas: int
    guards: GuardConfig
    hpa_target: float
    observation_delay_steps: int = 1

    def scaler_args(self, policy: str) -> list[str]:
        g = self.guards
        return [
            "--policy", policy, "--policy-parameters", f"target={self.hpa_target}",
            "--profile", str(self.profile_path), "--slo-ms", str(self.slo_s * 1e3),
            "--min-replicas", str(g.min_replicas), "--max-replicas", str(g.max_replicas),
            "--up-cooldown-s", str(g.up_cooldown_s), "--down-cooldown-s", str(g.down_cooldown_s),
            "--down-stabilisation-s", str(g.down_stabilisation_s),
            "--max-step-up", str(g.max_step_up), "--max-step-down", str(g.max_step_down),
            "--tick-s", "1", "--worker-threads", "1", "--worker-device", "cpu",
            "--worker-service-profile", str(self.profile_path), "--drain-timeout-s", "15",
        ]


def sim_env(setup: Setup, trace: traces.Trace, peak: float) -> ServingClusterEnv:
    config = EnvConfig(profile_path=setup.profile_path, slo_s=setup.slo_s,
                       min_replicas=setup.guards.min_replicas, max_replicas=setup.max_replicas,
                       duration_s=len(trace.rates), peak_load=(peak, peak),
                       inflight_per_worker=INFLIGHT_PER_WORKER, rate_window_s=RATE_WINDOW_S,
                       util_window_s=UTIL_WINDOW_S,
                       observation_delay_steps=setup.observation_delay_steps)
    env = ServingClusterEnv(config, trace_keys=[(trace.shape, trace.seed)])
    env.preload(trace)
    return env


def rate_scale(setup: Setup, trace: traces.Trace, peak: float) -> float:
    """Requests/s per unit of trace: the simulator's scaling of `trace` to `peak`."""
    env = sim_env(setup, trace, peak)
    env.reset(seed=trace.seed)
    return env.rate_scale


# What a policy decides on, recorded per second on both sides.
SEEN_FIELDS = ("utilisation", "arrival_rate", "latency_p99_s", "queued_requests",
               "ongoing_requests")
Seen = tuple[float, ...]


def seen(ctx: ScalingContext) -> Seen:
    return tuple(round(float(getattr(ctx, name)), 3) for name in SEEN_FIELDS)


def simulate(setup: Setup, trace: traces.Trace, peak: float, name: str,
             arrivals: Sequence[int]) -> tuple[EpisodeLog, list[Seen]]:
    """The simulator's prediction for `trace` with `arrivals[k]` requests in second k under the
    live controller running policy `name` with the setup's guards, and what it saw at each
    decision."""
    env = sim_env(setup, trace, peak)
    spec = PolicySpec(name, {"target": setup.hpa_target})
    episode = asyncio.run(drive(env, spec, trace.seed, {"arrivals": arrivals}, setup.guards))
    return episode.log, [seen(c) for c in episode.contexts]


def sim_decisions(log: EpisodeLog, initial: int) -> list[tuple[float, int, int]]:
    """(second, from, to) for each change of the simulated count."""
    changes, current = [], initial
    for second, replicas in enumerate(log.replicas):
        if replicas != current:
            changes.append((float(second), current, replicas))
            current = replicas
    return changes


@dataclass
class Measured:
    attainment: float
    worker_seconds: float
    requests: int
    failed: int
    max_workers: int
    p99_s: float
    timeline: Run
    cold_starts: list[float]
    decisions: list[tuple[float, int, int]]  # (s since the trace began, from, to)
    inputs: list[Seen]  # at each whole second since the trace began
    within_per_second: list[float | None]  # share of each second's requests within the SLO
    service_s: dict[int, float]  # the workers' reported seconds per batch size, at the end


def emulated_profile(source: Path, cold_start_s: float, out: Path) -> Path:
    """`source`'s straight-line fit written at its batch sizes: the workers pad to exactly the
    t(b) the simulator uses."""
    profile = ServiceProfile.load(source)
    alpha, beta = profile.fit
    out.write_text(json.dumps({
        "model": profile.model,
        "note": (f"Emulated device for bench.sim_to_real: the fit t(b) = {alpha * 1e3:.2f} ms + "
                 f"{beta * 1e3:.3f} ms x b of {source.name}; cold start measured on the process "
                 "runtime (worker start to the balancer routing to it)."),
        "batch_sizes": list(profile.batch_sizes),
        "seconds": [round(profile.batch_time(b), 6) for b in profile.batch_sizes],
        "cold_start_s": round(cold_start_s, 2),
    }, indent=1) + "\n")
    return out


def list_workers(stack: LocalStack) -> list[cluster_pb2.ManagedWorker]:
    with grpc.insecure_channel(stack.address("scaler")) as channel:
        stub = cluster_pb2_grpc.ScalerAdminStub(channel)
        return list(stub.ListWorkers(cluster_pb2.ListWorkersRequest(), timeout=5,
                                     metadata=stack.operator_auth()).workers)


class ColdStarts:
    """Seconds from each worker's process start to its first appearance with an address in the
    scaler's worker list (the balancer has registered it and routes to it)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def poll(self, stack: LocalStack) -> None:
        now = time.time()
        for worker in list_workers(stack):
            if worker.address and worker.worker_id not in self.seconds:
                self.seconds[worker.worker_id] = now - worker.started_unix


def measure_cold_start(setup: Setup, repository: Path, log_dir: Path, starts: int = 3
                       ) -> list[float]:
    """Pin one worker more than the minimum `starts` times on an idle stack; each new worker's
    delay from process start to being routed to."""
    stack = LocalStack(repository, log_dir, setup.scaler_args("hpa")).start()
    delays = []
    try:
        stack.wait_ready_workers(1)
        colds = ColdStarts()
        colds.poll(stack)
        with grpc.insecure_channel(stack.address("scaler")) as channel:
            admin = cluster_pb2_grpc.ScalerAdminStub(channel)
            for _ in range(starts):
                known = set(colds.seconds)
                admin.ScaleTo(cluster_pb2.ScaleToRequest(replicas=2), timeout=5,
                              metadata=stack.operator_auth())
                deadline = time.monotonic() + 60
                while set(colds.seconds) == known:
                    if time.monotonic() > deadline:
                        raise TimeoutError("pinned worker not routed to after 60 s")
                    time.sleep(0.05)
                    colds.poll(stack)
                (new,) = set(colds.seconds) - known
                delays.append(colds.seconds[new])
                admin.ScaleTo(cluster_pb2.ScaleToRequest(replicas=1), timeout=5,
                              metadata=stack.operator_auth())
                while len(list_workers(stack)) > 1:
                    time.sleep(0.2)
    finally:
        stack.stop()
    return delays


class Watcher:
    """The scaler's inputs, rebuilt from the balancer's snapshot stream with the scaler's own
    `ClusterObserver` and profile: (snapshot time, inputs) for every snapshot."""

    def __init__(self, stack: LocalStack, setup: Setup) -> None:
        self.observer = ClusterObserver(setup.slo_s, ServiceProfile.load(setup.profile_path))
        self.inputs: list[tuple[float, Seen]] = []
        self._service: dict[tuple[str, int], float] = {}
        self._channel = grpc.insecure_channel(stack.address("balancer"))
        self._call = cluster_pb2_grpc.BalancerStub(self._channel).WatchCluster(
            cluster_pb2.WatchClusterRequest(), metadata=stack.operator_auth())
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with contextlib.suppress(grpc.RpcError):
            for snapshot in self._call:
                self.observer.observe(snapshot)
                ready = sum(1 for w in snapshot.workers
                            if w.phase == cluster_pb2.WorkerState.READY)
                ctx = self.observer.context(snapshot, 0.0, ready, ready)
                self.inputs.append((snapshot.timestamp_unix, seen(ctx)))
                for worker in snapshot.workers:
                    for point in worker.service_times:
                        self._service[worker.worker_id, point.batch_size] = point.seconds

    def close(self) -> None:
        self._call.cancel()
        self._thread.join()
        self._channel.close()

    def service_s(self) -> dict[int, float]:
        """Each batch size's service time, as the workers last reported it (mean of workers)."""
        by_size: dict[int, list[float]] = {}
        for (_, size), seconds in self._service.items():
            by_size.setdefault(size, []).append(seconds)
        return {size: round(statistics.mean(v), 4) for size, v in sorted(by_size.items())}

    def per_second(self, began_unix: float, seconds: int) -> list[Seen]:
        """At each whole second since `began_unix`, the inputs of the latest snapshot then."""
        out = []
        for second in range(seconds):
            then = [v for t, v in self.inputs if t - began_unix <= second]
            out.append(then[-1] if then else (0.0,) * len(SEEN_FIELDS))
        return out


def batch_size_counts(stack: LocalStack) -> dict[int, int]:
    """The balancer's cumulative batches per size (one WatchCluster snapshot)."""
    with grpc.insecure_channel(stack.address("balancer")) as channel:
        call = cluster_pb2_grpc.BalancerStub(channel).WatchCluster(
            cluster_pb2.WatchClusterRequest(), timeout=10, metadata=stack.operator_auth())
        snapshot = next(call)
        call.cancel()
    return dict(snapshot.batch_size_counts)


def sent_and_latency(result: LoadResult) -> tuple[np.ndarray, np.ndarray]:
    """Each request's send time (s) and latency (s, inf if it failed), as two arrays."""
    pairs = np.asarray(result.requests, dtype=float).reshape(-1, 2)
    return pairs[:, 0], pairs[:, 1]


def timeline(result: LoadResult, seconds: int, replicas: list[tuple[float, int, int]],
             slo_s: float) -> list[Sample]:
    """Per trace second: the requests sent in it, the p50/p99 of those answered (as the client
    saw them; failures leave the percentiles and count only in the rate) and the scaler's last
    (ready, desired) replicas polled at or before it. `replicas` holds (seconds since the load
    began, ready, desired)."""
    sent, latency = sent_and_latency(result)
    samples = []
    for second in range(seconds):
        in_second = (sent >= second) & (sent < second + 1)
        answered = latency[in_second & np.isfinite(latency)] * 1e3
        polled = [r for r in replicas if r[0] <= second] or replicas[:1]
        _, ready, desired = polled[-1]
        p50, p99 = ((percentile(answered, 50), percentile(answered, 99)) if answered.size
                    else (None, None))
        samples.append(Sample(float(second), float(in_second.sum()), ready, desired,
                              p50, p99, slo_s * 1e3))
    return samples


def measured_part(result: LoadResult, lead_in_s: float) -> LoadResult:
    """The requests sent after the lead-in, with send times from the end of the lead-in."""
    part = LoadResult(started_unix=result.started_unix + lead_in_s)
    for t, latency in result.requests:
        if t >= lead_in_s:
            part.requests.append((t - lead_in_s, latency))
            if math.isfinite(latency):
                part.add(OK, latency)
            else:
                part.error("FAILED")
    return part


def within_per_second(result: LoadResult, seconds: int, slo_s: float) -> list[float | None]:
    sent, latency = sent_and_latency(result)
    second = np.floor(sent).astype(int)
    return [float(np.mean(latency[second == s] <= slo_s)) if (second == s).any() else None
            for s in range(seconds)]


def run_real(setup: Setup, policy: str, rates: list[float], times: list[float],
             lead_in: list[float], lead_in_s: float, repository: Path, log_dir: Path
             ) -> Measured:
    """Send `lead_in` (send times within its first `lead_in_s` seconds), then `times` from
    `lead_in_s` on; only the latter is measured."""
    stack = LocalStack(repository, log_dir, setup.scaler_args(policy)).start()
    try:
        stack.wait_ready_workers(setup.guards.min_replicas)
        samples: list[tuple[float, int]] = []
        replicas: list[tuple[float, int, int]] = []
        decisions: dict[float, tuple[int, int]] = {}  # unix time: (from, to)
        done = threading.Event()
        colds = ColdStarts()
        colds.poll(stack)
        initial = set(colds.seconds)

        def poll() -> None:
            while not done.is_set():
                status = stack.status()
                samples.append((time.time(), status.ready_replicas + status.starting_replicas))
                replicas.append((samples[-1][0], status.ready_replicas, status.desired_replicas))
                for d in status.recent_decisions:
                    if d.applied_replicas != d.current_replicas:
                        decisions[d.timestamp_unix] = (d.current_replicas, d.applied_replicas)
                colds.poll(stack)
                done.wait(0.5)

        batches_before = batch_size_counts(stack)
        watcher = Watcher(stack, setup)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        everything = asyncio.run(open_loop(
            stack.address("batcher"), DEFAULT_MODEL,
            times=[*lead_in, *(t + lead_in_s for t in times)], max_outstanding=2000))
        result = measured_part(everything, lead_in_s)
        began, ended = result.started_unix, result.started_unix + len(rates)
        done.set()
        poller.join()
        watcher.close()
        batch_sizes = batch_size_delta(batches_before, batch_size_counts(stack))
    finally:
        stack.stop()
    worker_seconds = 0.0
    for (t0, n), (t1, _) in zip(samples, samples[1:], strict=False):
        lo, hi = max(t0, began), min(t1, ended)
        worker_seconds += n * max(hi - lo, 0.0)
    p99 = percentile(result.latencies, 99) if result.latencies else math.inf
    run = Run(timeline(result, len(rates), [(t - began, r, d) for t, r, d in replicas],
                       setup.slo_s), batch_sizes,
              {"source": "bench.sim_to_real (real stack)", "policy": policy,
               "title": f"{policy} (real)", "failed": result.failed})
    changes = [(round(t - began, 2), *d) for t, d in sorted(decisions.items())
               if 0 <= t - began < len(rates)]
    return Measured(result.within(setup.slo_s), worker_seconds, result.sent,
                    result.failed, max(n for t, n in samples if began <= t <= ended), p99, run,
                    [s for w, s in colds.seconds.items() if w not in initial], changes,
                    watcher.per_second(began, len(rates)),
                    within_per_second(result, len(rates), setup.slo_s), watcher.service_s())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sim_to_real", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="spike", choices=traces.SHAPES)
    parser.add_argument("--seed", type=int, default=traces.TEST_SEEDS[0])
    parser.add_argument("--compress", type=int, default=4, help="trace seconds per real second")
    parser.add_argument("--peak", type=float, default=0.7, help="trace peak / SLO capacity")
    parser.add_argument("--max-replicas", type=int, default=3)
    parser.add_argument("--slo-ms", type=float, default=500.0)
    parser.add_argument("--hpa-target", type=float, default=0.6)
    parser.add_argument("--profile", type=Path, default=DEFAULT_PROFILE,
                        help="profile whose straight-line fit the workers emulate")
    parser.add_argument("--cold-start-s", type=float,
                        help="the emulated profile's cold start (default: measure it here)")
    parser.add_argument("--observation-delay", type=int, default=1, metavar="STEPS",
                        help="steps the simulated scaler's inputs trail the simulated cluster")
    parser.add_argument("--lead-in-s", type=int, default=35,
                        help="seconds at the trace's first rate before it, not measured")
    parser.add_argument("--policies", default="learned,hpa")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--run-json", type=Path, metavar="DIR",
                        help="also write DIR/<policy>-real.json and -sim.json (RUN.json format)")
    args = parser.parse_args(argv)
    guards = GuardConfig(min_replicas=1, max_replicas=args.max_replicas, up_cooldown_s=2.0,
                         down_cooldown_s=5.0, max_step_up=2, max_step_down=1,
                         down_stabilisation_s=ScalerSettings.down_stabilisation_s)
    trace = traces.compress(traces.generate(args.shape, args.seed), args.compress)
    work = Path(tempfile.mkdtemp(prefix="sim2real-"))
    repository = work / "models"
    write_default_model(repository)
    profile_path = emulated_profile(args.profile, args.cold_start_s or 0.0, work / "profile.json")
    setup = Setup(profile_path, args.slo_ms / 1e3, args.max_replicas, guards, args.hpa_target,
                  args.observation_delay)
    rows = []
    measured_colds: list[float] = []
    try:
        if args.cold_start_s is None:
            measured_colds = measure_cold_start(setup, repository, work / "cold-start")
            print(f"cold start (process runtime, start to routed): "
                  f"{', '.join(f'{c:.2f}' for c in measured_colds)} s", flush=True)
            emulated_profile(args.profile, statistics.median(measured_colds), profile_path)
        profile = ServiceProfile.load(profile_path)
        emulated = json.loads(profile_path.read_text())
        scale = rate_scale(setup, trace, args.peak)
        rates = [float(r * scale) for r in trace.rates]
        times = arrival_times(rates, cv=trace.cv, seed=args.seed)
        counts = per_second(times, len(rates))
        lead_in = arrival_times([rates[0]] * args.lead_in_s, cv=trace.cv, seed=args.seed + 1)
        for name in args.policies.split(","):
            log, sim_inputs = simulate(setup, trace, args.peak, name, counts)
            print(f"{name}: replaying {len(rates)} s, {len(times)} requests, "
                  f"{min(rates):.0f}-{max(rates):.0f} req/s (SLO capacity "
                  f"{profile.rate_within_slo(setup.slo_s):.1f} req/s per worker)", flush=True)
            real = run_real(setup, name, rates, times, lead_in, args.lead_in_s, repository,
                            work / name)
            if args.run_json is not None:
                real.timeline.write(args.run_json / f"{name}-real.json")
                episode_run(log, step_s=1.0, slo_s=setup.slo_s, meta={
                    "source": "bench.sim_to_real (simulator)", "policy": name,
                    "title": f"{name} (sim)"}).write(args.run_json / f"{name}-sim.json")
            rows.append({
                "policy": name,
                "sim_within_slo": log.slo_attainment(), "real_within_slo": real.attainment,
                "sim_worker_seconds": log.worker_seconds,
                "real_worker_seconds": real.worker_seconds,
                "real_requests": real.requests, "real_failed": real.failed,
                "real_max_workers": real.max_workers, "sim_max_workers": max(log.replicas),
                "sim_p99_ms": log.latency_quantile(0.99) * 1e3, "real_p99_ms": real.p99_s * 1e3,
                "sim_actions": log.changes,
                "sim_decisions": sim_decisions(log, setup.guards.min_replicas),
                "real_decisions": real.decisions,
                "seen_fields": SEEN_FIELDS,
                "sim_seen": sim_inputs, "real_seen": real.inputs,
                "sim_within_per_second": [round(x, 4) for x in log.within_slo],
                "real_within_per_second": [None if x is None else round(x, 4)
                                           for x in real.within_per_second],
                "real_service_s": real.service_s,
                "profile_service_s": {b: round(profile.batch_time(b), 4)
                                      for b in real.service_s},
                "real_cold_starts_s": [round(c, 2) for c in real.cold_starts],
            })
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\ntrace {args.shape} seed {args.seed}, {args.compress}x compressed "
          f"({len(trace.rates)} s), peak {args.peak:.0%} of {args.max_replicas} workers' SLO "
          f"capacity, SLO {args.slo_ms:g} ms")
    print(f"{'policy':<9}{'within SLO sim':>15}{'real':>8}{'gap pts':>9}"
          f"{'worker-s sim':>14}{'real':>8}{'gap':>8}{'failed':>8}")
    for r in rows:
        gap_pts = (r["real_within_slo"] - r["sim_within_slo"]) * 100
        gap_ws = r["real_worker_seconds"] / r["sim_worker_seconds"] - 1
        r["gap_points"], r["gap_worker_seconds"] = gap_pts, gap_ws
        print(f"{r['policy']:<9}{r['sim_within_slo']:>14.2%}{r['real_within_slo']:>9.2%}"
              f"{gap_pts:>+9.2f}{r['sim_worker_seconds']:>14.0f}{r['real_worker_seconds']:>8.0f}"
              f"{gap_ws:>+8.1%}{r['real_failed']:>8d}")
    for r in rows:
        print(f"{r['policy']} scaling (s, from, to): sim {r['sim_decisions']}, "
              f"real {r['real_decisions']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    command = "python -m bench.sim_to_real " + " ".join(sys.argv[1:] if argv is None else argv)
    args.out.write_text(json.dumps({"command": command, "args": {
        k: str(v) for k, v in vars(args).items()}, "profile": emulated,
        "measured_cold_starts_s": [round(c, 2) for c in measured_colds], "results": rows},
        indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
