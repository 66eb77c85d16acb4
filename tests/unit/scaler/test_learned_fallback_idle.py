"""The shipped learned policy is not trusted on an idle cluster: no training trace goes quiet."""

from __future__ import annotations

from services.scaler.learning.fallback import LearnedWithFallback
from services.scaler.policies import HpaPolicy, ScalingContext


def context(now: float, rate: float, replicas: int) -> ScalingContext:
    return ScalingContext(
        now=now, current_replicas=replicas, ready_replicas=replicas, arrival_rate=rate,
        queued_requests=0, ongoing_requests=0.0, latency_p99_s=0.25, slo_s=0.5,
        utilisation=0.5 if rate else 0.0, service_rate_per_replica=48.0,
    )


def test_no_arrivals_hands_the_decision_to_hpa_and_says_so() -> None:
    policy = LearnedWithFallback(HpaPolicy())
    assert policy.learned is not None, "the shipped policy loads"
    policy.decide(context(0.0, 60.0, 2))
    assert "no arrivals" not in policy.fallback_reason

    policy.decide(context(1.0, 0.0, 2))
    assert "no arrivals" in policy.fallback_reason


def test_an_idle_cluster_is_scaled_down_once_hpa_stabilisation_passes() -> None:
    policy = LearnedWithFallback(HpaPolicy(stabilisation_s=5.0))
    for second in range(10):
        policy.decide(context(float(second), 120.0, 3))
    decisions = [policy.decide(context(10.0 + second, 0.0, 3)) for second in range(8)]
    assert decisions[0] == 3, "within the window the busy recommendation still holds"
    assert decisions[-1] == 0, "after it, the rule asks for none (the guards keep the minimum)"
