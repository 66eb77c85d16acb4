"""The learned policy's action: hold, or a replica count sized for the current demand at one of a
few target loads. Shared by the simulator and the live LearnedPolicy, like the observation.

Why a target count rather than down/hold/up: a +-1 step action has to learn the arithmetic of
"how many replicas does this rate need" from reward alone, needs several decisions to follow a
fast rise, and a PPO policy trained on it dithered (23x the rule policies' scaling actions) and
kept more workers than the tuned HPA. Here the arithmetic is given and the policy learns only what
the rules fix by hand: how much headroom to keep for what the observation says is coming (a rise,
a burst, a backlog), and when to leave the count alone (HOLD), which is what saves churn.

    HOLD (0)        keep the current count
    level k (1..N)  ceil(demand / (service_rate_per_replica x TARGET_LOADS[k-1]))

demand = arrival rate + queued requests / BACKLOG_DRAIN_S, so that a backlog is drained within a
few seconds instead of being ignored because the arrival rate alone looks served.
"""

from __future__ import annotations

import math

from services.scaler.context import ScalingContext

HOLD = 0
# Load per replica as a share of the rate one replica serves within the SLO.
TARGET_LOADS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
BACKLOG_DRAIN_S = 5.0
N_ACTIONS = 1 + len(TARGET_LOADS)
# Recorded in the policy metadata: a policy file trained on another action cannot be misread.
ACTION_SCHEME = {"kind": "hold_or_target_load", "target_loads": list(TARGET_LOADS),
                 "backlog_drain_s": BACKLOG_DRAIN_S}


def replicas_for(action: int, ctx: ScalingContext) -> int:
    """The replica count `action` proposes in `ctx` (at least 1; the guards apply bounds)."""
    if not 0 <= action < N_ACTIONS:
        raise ValueError(f"action must be in 0..{N_ACTIONS - 1}, got {action!r}")
    if action == HOLD:
        return ctx.current_replicas
    mu = ctx.service_rate_per_replica
    if mu <= 0:
        return ctx.current_replicas
    demand = ctx.arrival_rate + ctx.queued_requests / BACKLOG_DRAIN_S
    return max(1, math.ceil(demand / (mu * TARGET_LOADS[action - 1])))
