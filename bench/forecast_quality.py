"""How much of the next seconds' load the recent past predicts, on the policy-eval traces.

The foresight oracle of `bench.autoscaling_frontier` sizes for the highest trace rate of the next
N seconds and, with N = 5-20 s, meets the scaler's target that no past-only policy has met. This
measures how close a scaler that sees only the past gets to the oracle's input: on every trace of
the split, at every second from 30 s in, each predictor's error against the highest trace rate of
the next N seconds (the rate the arrivals are drawn from), in replica capacities (requests/s over
the per-replica rate within the SLO), from the arrival rates the scaler measures (1 s windows,
drawn as `tideserve policy eval` draws them):

  rate now     the trace's own rate at this second: the N = 0 oracle's input, without the
               measurement noise (no past-only predictor does better on average than knowing it)
  mean 5 s     the mean measured rate of the last 5 s (persistence)
  line 10 s    the least-squares line through the last 10 s of measured rates, its highest point
               over the next N seconds
  line 30 s    the same through the last 30 s

Each cell is the spread (standard deviation) of the error, then its mean. Headroom (a lower target
load) makes up for a mean error, as every policy here already keeps some; the spread is what no
headroom short of the worst case covers. A trend feature can only help a policy where a line's
spread is below persistence's.

    python -m bench.forecast_quality --split test --split out-of-family   # ~10 s
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numpy as np

from tideserve_learning.evaluate import SPLITS, split_keys
from tideserve_learning.sim.env import EnvConfig, ServingClusterEnv

HORIZONS_S = (5, 10, 20)
HISTORY_S = 30
PREDICTORS = ("rate now", "mean 5 s", "line 10 s", "line 30 s")


def _line_max(rates: np.ndarray, horizon_s: int) -> float:
    """Highest point over the next `horizon_s` seconds of the least-squares line through `rates`
    (one per second, the last one now)."""
    t = np.arange(len(rates)) - (len(rates) - 1)
    slope, now = np.polyfit(t, rates, 1)
    return float(max(now, now + slope * horizon_s))


def errors(key: tuple[str, int], horizon_s: int) -> np.ndarray:
    """Per second of trace `key`: each predictor's error (prediction - the highest trace rate of
    the next `horizon_s` s), in replica capacities; shape (seconds, len(PREDICTORS))."""
    env = ServingClusterEnv(EnvConfig(), trace_keys=[key])
    env.reset(seed=key[1])
    truncated, measured = False, []
    while not truncated:  # the arrivals do not depend on the count, so the count is held
        measured.append(env.scaling_context().arrival_rate)
        truncated = env.step_to(env.replicas)[3]
    rates, mu = env.trace.rates * env.rate_scale, env.rate_within_slo
    rows = []
    for now in range(HISTORY_S, len(measured) - horizon_s):
        future = rates[now : now + horizon_s + 1].max()
        past = np.asarray(measured[now - HISTORY_S + 1 : now + 1])
        predicted = (
            rates[now],
            past[-5:].mean(),
            _line_max(past[-10:], horizon_s),
            _line_max(past, horizon_s),
        )
        rows.append([(p - future) / mu for p in predicted])
    return np.asarray(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.forecast_quality",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--split", choices=list(SPLITS), action="append")
    args = parser.parse_args(argv)
    keys = [key for split in args.split or ["test"] for key in split_keys(split)]
    shapes = list(dict.fromkeys(shape for shape, _ in keys))
    print("error predicting the highest rate of the next N s, in replica capacities: spread / mean")
    print(f"{'N':>4} {'family':<12}" + "".join(f"{p:>14}" for p in PREDICTORS))
    for horizon in HORIZONS_S:
        by_shape: dict[str, list[np.ndarray]] = {shape: [] for shape in shapes}
        for key in keys:
            by_shape[key[0]].append(errors(key, horizon))
        for shape, rows in by_shape.items():
            error = np.concatenate(rows)
            cells = [
                f"{s:.2f} / {m:+.2f}"
                for s, m in zip(error.std(axis=0), error.mean(axis=0), strict=True)
            ]
            print(f"{horizon:>3}s {shape:<12}" + "".join(f"{c:>14}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
