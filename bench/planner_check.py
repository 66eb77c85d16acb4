"""Planner against a measured run: does the replica count `tideserve plan` predicts hold the SLO?

For a rate R and a p99 SLO, the batching-aware planner (services.scaler.planner, with the measured
profile) predicts n* replicas and, for any n, a p99 of P99_OVER_TAU x tau*(R / n). This bench runs
the real local stack with the count pinned (static policy, min = max = n) at n* - 1, n* and n* + 1,
drives R requests/s open loop (Poisson) for `--seconds`, and prints predicted against measured
p99 and SLO attainment. The planner is right when n* is the smallest count whose measured p99 is
within the SLO.

    python -m bench.planner_check                # 100 req/s, SLO 500 ms, default profile
    python -m bench.planner_check --rate 60 --seconds 40

Workers run with --threads 1 and emulate the profile's straight-line fit (the curve the planner
uses) with `--worker-service-profile`, as bench.sim_to_real does, so CPU contention on a shared
machine is not multiplied into their service time; `--slowdown K` instead runs the real model
K-fold slowed, as the profile was measured. Results go to bench/results/planner_check.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.sim_to_real import emulated_profile
from harness.cluster import ROOT
from harness.stack import LocalStack
from services.scaler.planner import P99_OVER_TAU, ServiceProfile, replicas_for_batching
from services.worker.models import DEFAULT_MODEL, write_default_model
from tideserve_learning.sim.env import DEFAULT_PROFILE
from tideserve_tools.latency import percentile
from tideserve_tools.loadgen import arrival_times, open_loop

RESULTS = ROOT / "bench" / "results" / "planner_check.json"
WARM_UP_S = 5


def predicted_p99(profile: ServiceProfile, rate: float, replicas: int) -> float:
    return P99_OVER_TAU * profile.steady_batch_time(rate / replicas)


def measure(repository: Path, log_dir: Path, replicas: int, rate: float, seconds: int,
            device: list[str], slo_s: float) -> tuple[float, float, int]:
    """(measured p99 s, share within the SLO, failed requests) at a pinned replica count; the
    first WARM_UP_S seconds are sent but not counted. `device`: the worker flags that set its
    speed."""
    args = ["--policy", "static", "--policy-parameters", f"replicas={replicas}",
            "--min-replicas", str(replicas), "--max-replicas", str(replicas),
            "--worker-threads", "1", "--worker-device", "cpu", *device]
    stack = LocalStack(repository, log_dir, args).start()
    try:
        stack.wait_ready_workers(replicas)
        times = arrival_times([rate] * (seconds + WARM_UP_S), seed=replicas)
        result = asyncio.run(open_loop(stack.address("batcher"), DEFAULT_MODEL, times=times,
                                       max_outstanding=2000))
    finally:
        stack.stop()
    counted = [latency for t, latency in result.requests if t >= WARM_UP_S]
    finite = [latency for latency in counted if math.isfinite(latency)]
    p99 = percentile(finite, 99) if finite else math.inf
    within = sum(latency <= slo_s for latency in counted) / len(counted) if counted else 1.0
    return p99, within, result.failed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.planner_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--slo-ms", type=float, default=500.0)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--slowdown", type=float, default=0.0,
                        help="run the real model this many times slower instead of emulating")
    parser.add_argument("--profile", type=Path, default=DEFAULT_PROFILE)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    profile = ServiceProfile.load(args.profile)
    slo_s = args.slo_ms / 1e3
    planned = replicas_for_batching(profile, args.rate, slo_s)
    print(f"planner: {args.rate:g} req/s, p99 <= {args.slo_ms:g} ms -> {planned} replicas "
          f"({profile.rate_within_slo(slo_s):.1f} req/s per replica within the SLO)", flush=True)
    work = Path(tempfile.mkdtemp(prefix="planner-check-"))
    write_default_model(work / "models")
    if args.slowdown:
        device = ["--worker-slowdown", str(args.slowdown)]
    else:
        emulated = emulated_profile(args.profile, profile.cold_start_s, work / "profile.json")
        device = ["--worker-service-profile", str(emulated)]
    rows = []
    try:
        for n in (planned - 1, planned, planned + 1):
            if n < 1:
                continue
            p99, within, failed = measure(work / "models", work / f"n{n}", n, args.rate,
                                          args.seconds, device, slo_s)
            predicted = predicted_p99(profile, args.rate, n)
            rows.append({"replicas": n, "predicted_p99_ms": predicted * 1e3,
                         "measured_p99_ms": p99 * 1e3, "measured_within_slo": within,
                         "failed": failed})
            print(f"  {n} replicas: p99 predicted {predicted * 1e3:.0f} ms, measured "
                  f"{p99 * 1e3:.0f} ms, {within:.2%} within SLO, {failed} failed", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    meeting = [r["replicas"] for r in rows if r["measured_p99_ms"] <= args.slo_ms]
    verdict = (f"smallest count measured within the SLO: {min(meeting)}" if meeting
               else "no tried count met the SLO")
    print(f"planner said {planned}; {verdict}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    command = "python -m bench.planner_check " + " ".join(sys.argv[1:] if argv is None else argv)
    args.out.write_text(json.dumps({"command": command, "rate": args.rate, "slo_ms": args.slo_ms,
                                    "planned": planned, "runs": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
