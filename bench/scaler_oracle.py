"""How cheap can a scaling rule be on the policy-eval traces if it is told each trace's shape?
A reference point for the scaler's target (learned policy <= 0.85x the tuned HPA's worker-seconds
at >= 99% of requests within the SLO).

The rules size on the highest `w`-second mean arrival rate of the last `D` seconds, plus queued
requests / 5 s, at target load L: ceil(demand / (L x per-replica rate within the SLO)). A rise is
followed at once, a fall only once D seconds of lower rates have passed (HPA's scale-down
stabilisation; D = 1 is none). Every (L, w, D) of the grid runs on every trace of the split, in the
simulator and through the live controller `tideserve policy eval` runs
(`tideserve_learning.sim.scaler`). The oracle then picks one setting
per trace shape, with the outcomes in hand, for the fewest pooled worker-seconds with >= 99% of the
split's requests within the SLO. A policy that sees only the past can know neither the shape in
advance nor the outcomes, so within this family it does no better than the oracle.

    python -m bench.scaler_oracle --split test          # the held-out traces, ~3 min on 2 cores
    python -m bench.scaler_oracle --split validation

The HPA reference is `tideserve policy eval`'s tuned setting (target 0.5, `--hpa-target`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from services.scaler.policies import ScalingContext
from tideserve_learning.evaluate import SLO_GOAL
from tideserve_learning.sim import traces
from tideserve_learning.sim.env import EnvConfig
from tideserve_learning.sim.scaler import PolicySpec, run_episode

LOADS = tuple(round(0.6 + 0.05 * i, 2) for i in range(13))
SMOOTHING_S = (1, 3)
STABILISATION_S = (1, 10, 20, 30)
BACKLOG_DRAIN_S = 5.0

Setting = tuple[float, int, int]  # (target load, smoothing s, stabilisation s)
Outcome = tuple[float, float, float]  # (requests within the SLO, requests, worker-seconds)


class StabilisedRule:
    """Sizes on the highest `smoothing_s` mean rate of the last `stabilisation_s` decisions (one a
    second in the simulator)."""

    name = "stabilised_rule"

    def __init__(self, load: float, smoothing_s: int, stabilisation_s: int) -> None:
        self.load = load
        self._rates: deque[float] = deque(maxlen=smoothing_s)
        self._means: deque[float] = deque(maxlen=stabilisation_s)

    def decide(self, ctx: ScalingContext) -> int:
        self._rates.append(ctx.arrival_rate)
        self._means.append(sum(self._rates) / len(self._rates))
        demand = max(self._means) + ctx.queued_requests / BACKLOG_DRAIN_S
        return max(1, math.ceil(demand / (ctx.service_rate_per_replica * self.load)))


def score(setting: Setting, keys: list[tuple[str, int]]) -> dict[str, Outcome]:
    """Per shape: requests within the SLO, requests and worker-seconds under `setting`."""
    config, totals = EnvConfig(), {}
    for key in keys:
        log = run_episode(key, PolicySpec(policy=StabilisedRule(*setting)), config).log
        within, total, cost = totals.get(key[0], (0.0, 0.0, 0.0))
        totals[key[0]] = (
            within + float(np.dot(log.arrivals, log.within_slo)),
            total + float(sum(log.arrivals)),
            cost + log.worker_seconds,
        )
    return totals


def pareto(points: list[tuple[Outcome, Setting]]) -> list[tuple[Outcome, Setting]]:
    """The settings no other beats on both attainment and cost, cheapest first."""
    front, best = [], -1.0
    for outcome, setting in sorted(points, key=lambda p: p[0][2]):
        if outcome[0] / outcome[1] > best:
            best = outcome[0] / outcome[1]
            front.append((outcome, setting))
    return front


def cheapest_meeting_goal(
    choices: list[list[tuple[Outcome, Setting]]],
) -> tuple[float, float, list[Setting]] | None:
    """(worker-seconds, pooled attainment, one setting per group) of the cheapest combination
    with >= SLO_GOAL pooled, or None."""
    best = None
    for combo in itertools.product(*choices):
        within = sum(o[0] for o, _ in combo)
        total = sum(o[1] for o, _ in combo)
        cost = sum(o[2] for o, _ in combo)
        if within / total >= SLO_GOAL and (best is None or cost < best[0]):
            best = (cost, within / total, [s for _, s in combo])
    return best


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scaler_oracle",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--split", choices=["test", "validation"], default="test")
    parser.add_argument("--hpa-target", type=float, default=0.5)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, help="also write every setting's outcome as JSON")
    args = parser.parse_args(argv)
    keys = traces.test_set() if args.split == "test" else traces.validation_set()
    shapes = [s for s in traces.SHAPES if any(k[0] == s for k in keys)]
    settings = list(itertools.product(LOADS, SMOOTHING_S, STABILISATION_S))
    with ProcessPoolExecutor(args.jobs) as pool:
        scored = dict(zip(settings, pool.map(score, settings, itertools.repeat(keys)), strict=True))
    hpa_cost = sum(
        run_episode(
            k, PolicySpec("hpa", {"target": args.hpa_target}), EnvConfig()
        ).log.worker_seconds
        for k in keys
    )
    print(
        f"{args.split} traces: {len(keys)}; HPA (target {args.hpa_target:g}): "
        f"{hpa_cost:.0f} worker-seconds"
    )
    for label, allowed in (
        ("without stabilisation (D = 1)", lambda st: st[2] == 1),
        ("with stabilisation", lambda st: True),
    ):
        choices = [pareto([(scored[st][s], st) for st in settings if allowed(st)]) for s in shapes]
        best = cheapest_meeting_goal(choices)
        if best is None:
            print(f"oracle per shape, {label}: no combination reaches {SLO_GOAL:.0%}")
            continue
        picks = ", ".join(
            f"{s} L={st[0]:g} w={st[1]} D={st[2]}" for s, st in zip(shapes, best[2], strict=True)
        )
        print(
            f"oracle per shape, {label}: {best[1]:.2%} within SLO, {best[0]:.0f} "
            f"worker-seconds, {best[0] / hpa_cost:.3f}x HPA ({picks})"
        )
    single = [
        (
            sum(o[2] for o in out.values()),
            st,
            sum(o[0] for o in out.values()) / sum(o[1] for o in out.values()),
        )
        for st, out in scored.items()
    ]
    meeting = [s for s in single if s[2] >= SLO_GOAL]
    if meeting:
        cost, st, attained = min(meeting)
        print(
            f"best single setting for every shape: L={st[0]:g} w={st[1]} D={st[2]}, "
            f"{attained:.2%}, {cost / hpa_cost:.3f}x HPA"
        )
    if args.out:
        args.out.write_text(
            json.dumps(
                [{"setting": list(st), "shapes": out} for st, out in scored.items()], indent=1
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
