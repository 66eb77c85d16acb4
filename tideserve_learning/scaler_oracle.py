"""A reference point for the learned scaler: how cheap a scaling rule can be on the policy-eval
traces if it is told each trace's shape, and which settings an oracle with the outcomes in hand
would pick. `python -m bench.scaler_oracle` runs the grid and prints the result; the rule and the
oracle's choice live here, beside the simulator they run in, so that they are tested without the
benchmark.

The rules size on the highest `w`-second mean arrival rate of the last `D` seconds, plus queued
requests / 5 s, at target load L: ceil(demand / (L x per-replica rate within the SLO)). A rise is
followed at once, a fall only once D seconds of lower rates have passed (HPA's scale-down
stabilisation; D = 1 is none). Each setting runs in the simulator through the live controller
(`tideserve_learning.sim.scaler`)."""

from __future__ import annotations

import itertools
import math
from collections import deque

import numpy as np

from services.scaler.policies import ScalingContext
from tideserve_learning.evaluate import SLO_GOAL
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
