"""The learned policy's observation, built from ScalingContexts only.

The simulator and the live scaler both feed ScalingContexts through one ObservationBuilder, so the
policy sees in production exactly the features it was trained on. Loads are expressed in replica
capacities (requests/s over the per-replica rate that meets the SLO) and latencies in SLOs, which
makes the observation independent of the model being served and of its absolute speed.

Two features look ahead rather than at the present, because a new replica serves only after a cold
start and the count has to be right for the next few seconds, not this one:

* rate_spread: the coefficient of variation of the 1 s arrival rates over the last 30 s. It
  separates smooth load (diurnal, ramp: CV well under 0.3) from bursty load (MMPP state switches
  and heavy within-second burstiness), which needs headroom the mean rate does not show.
* peak_per_replica: the highest 1 s rate of the last 30 s over what the current count serves
  within the SLO. Above 1 the count would not have absorbed a burst already seen once.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from services.scaler.context import ScalingContext

FEATURES = (
    "rate_1s",  # arrival rate over the last window / (max replicas x per-replica rate)
    "rate_5s",  # the same, mean over 5 s
    "rate_30s",  # the same, mean over 30 s
    "demand_per_replica",  # arrival rate / (replicas ready + starting x per-replica rate)
    "queue",  # queued requests / what the ready replicas serve in one SLO
    "p99_over_slo",
    "ready",  # ready replicas / max replicas
    "starting",  # starting replicas / max replicas
    "utilisation",
    "rate_spread",  # std / mean of the 1 s arrival rates over 30 s
    "peak_per_replica",  # highest 1 s rate in 30 s / (replicas ready + starting x per-replica rate)
)
HIGH = np.array([4.0, 4.0, 4.0, 4.0, 10.0, 5.0, 1.0, 1.0, 1.0, 3.0, 6.0], dtype=np.float32)
LOW = np.zeros_like(HIGH)
_WINDOWS_S = (5.0, 30.0)


class ObservationBuilder:
    """Turns successive ScalingContexts into observation vectors (keeps 30 s of arrival rates)."""

    def __init__(self, max_replicas: int) -> None:
        if max_replicas < 1:
            raise ValueError(f"max_replicas must be >= 1, got {max_replicas}")
        self.max_replicas = max_replicas
        self._rates: deque[tuple[float, float]] = deque()

    def reset(self) -> None:
        self._rates.clear()

    def update(self, ctx: ScalingContext) -> np.ndarray:
        """Add `ctx` to the rate history and return its unclipped features (for range checks).

        A NaN or infinite arrival rate is not kept: it makes this observation's rate features
        non-finite, so the caller falls back for this decision, but would otherwise poison every
        30 s window and the decisions of the next 30 s with it."""
        if math.isfinite(ctx.arrival_rate):
            self._rates.append((ctx.now, ctx.arrival_rate))
        while self._rates and self._rates[0][0] <= ctx.now - _WINDOWS_S[-1]:
            self._rates.popleft()
        mu = max(ctx.service_rate_per_replica, 1e-9)
        capacity = mu * self.max_replicas
        windows = [
            np.mean([r for t, r in self._rates if t > ctx.now - w] or [ctx.arrival_rate])
            for w in _WINDOWS_S
        ]
        recent = np.array([r for _, r in self._rates] or [ctx.arrival_rate])
        spread = float(recent.std() / recent.mean()) if recent.mean() > 0 else 0.0
        serving = mu * max(ctx.current_replicas, 1)
        return np.array(
            [
                ctx.arrival_rate / capacity,
                windows[0] / capacity,
                windows[1] / capacity,
                ctx.arrival_rate / serving,
                ctx.queued_requests / (mu * max(ctx.ready_replicas, 1) * ctx.slo_s),
                ctx.latency_p99_s / ctx.slo_s,
                ctx.ready_replicas / self.max_replicas,
                (ctx.current_replicas - ctx.ready_replicas) / self.max_replicas,
                ctx.utilisation,
                spread,
                recent.max() / serving,
            ],
            dtype=np.float64,
        )


def clip(features: np.ndarray) -> np.ndarray:
    """Features clipped to the observation space [LOW, HIGH], as the policy network takes them."""
    return np.clip(features, LOW, HIGH).astype(np.float32)
