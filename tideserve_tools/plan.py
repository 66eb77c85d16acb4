"""`tideserve plan`: the replicas a request rate needs for a latency target, under each model of
services/scaler/planner.py (the scaler sizes its workers with the same functions)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from services.scaler import planner
from services.scaler.planner import (
    P99_OVER_TAU,
    ServiceProfile,
    erlang_c,
    mmm_mean_latency,
    replicas_for_batching,
    replicas_for_mean_latency,
    replicas_for_wait_quantile,
    seed_mm1_latency,
)


def main(argv: Sequence[str] | None = None) -> int:
    """`tideserve plan`: print the replicas a rate needs under each model."""
    parser = argparse.ArgumentParser(
        prog="tideserve plan", description=planner.__doc__.splitlines()[0]
    )
    parser.add_argument("--rate", type=float, required=True, help="arrival rate, requests/s")
    parser.add_argument(
        "--service-rate", type=float, required=True, help="requests/s one replica serves (mu)"
    )
    parser.add_argument("--slo-ms", type=float, required=True, help="latency target, ms")
    parser.add_argument("--profile", type=Path, help="batch profile JSON for the batching model")
    parser.add_argument(
        "--quantile", type=float, default=0.99, help="share of requests within the target"
    )
    args = parser.parse_args(argv)
    rate, mu, slo = args.rate, args.service_rate, args.slo_ms / 1e3
    try:
        m = replicas_for_mean_latency(rate, mu, slo)
    except ValueError as exc:
        print(f"M/M/m (Erlang C), mean <= {args.slo_ms:g} ms: impossible ({exc})")
        return 1
    print(
        f"M/M/m (Erlang C), mean latency <= {args.slo_ms:g} ms: {m} replicas "
        f"(mean {mmm_mean_latency(m, rate, mu) * 1e3:.1f} ms, "
        f"P(wait) {erlang_c(m, rate / mu):.3f})"
    )
    tail = replicas_for_wait_quantile(rate, mu, slo - 1.0 / mu, 1.0 - args.quantile)
    print(
        f"M/M/m (Erlang C), {args.quantile:.0%} wait <= {args.slo_ms - 1e3 / mu:g} ms "
        f"(target minus one service time): {tail} replicas"
    )
    seed = next((k for k in range(1, 10 * m + 10) if seed_mm1_latency(k, rate, mu) <= slo), None)
    print(
        "seed's M/M/1 formula (wrong, for comparison): "
        + (f"{seed} replicas" if seed else "no count meets the target")
    )
    if args.profile is not None:
        profile = ServiceProfile.load(args.profile)
        alpha, beta = profile.fit
        try:
            n = replicas_for_batching(profile, rate, slo)
        except ValueError as exc:
            print(f"batching ({profile.model}): {exc}")
            return 1
        tau = profile.steady_batch_time(rate / n)
        print(
            f"batching-aware ({profile.model}, t(b) = {alpha * 1e3:.2f} ms + "
            f"{beta * 1e3:.3f} ms x b), p99 <= {args.slo_ms:g} ms: {n} replicas "
            f"(p99 {P99_OVER_TAU * tau * 1e3:.1f} ms, batch {rate / n * tau:.1f})"
        )
    return 0
