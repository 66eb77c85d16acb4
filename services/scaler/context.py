"""What every scaling policy decides on (`ScalingContext`) and the interface it implements
(`ScalingPolicy`).

A module of its own, below both the rule policies' registry (`services.scaler.policies`) and the
learned policy's observation (`services.scaler.learning.observation`), so that each can import
them without importing the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ScalingContext:
    """One snapshot of the cluster as the scaler sees it (from the balancer's stream)."""

    now: float  # monotonic seconds
    current_replicas: int  # ready + starting
    ready_replicas: int
    arrival_rate: float  # requests/s over the most recent window
    queued_requests: int
    ongoing_requests: float  # queued + in service, cluster-wide
    latency_p99_s: float
    slo_s: float
    utilisation: float  # busy fraction of ready workers, 0..1
    service_rate_per_replica: float  # requests/s one replica sustains within the SLO


class ScalingPolicy(Protocol):
    name: str

    def decide(self, ctx: ScalingContext) -> int:
        """Propose a replica count for `ctx`. Deterministic given the contexts seen so far."""
        ...
