"""Rule policies against hand-computed cases."""

from __future__ import annotations

import dataclasses
import math

import pytest

from services.scaler.policies import (
    POLICIES,
    HpaPolicy,
    KpaPolicy,
    ScalingContext,
    TargetTrackingPolicy,
    create_policy,
)

BASE = ScalingContext(
    now=0.0, current_replicas=4, ready_replicas=4, arrival_rate=100.0, queued_requests=0,
    ongoing_requests=0.0, latency_p99_s=0.01, slo_s=0.05, utilisation=0.5,
    service_rate_per_replica=50.0,
)


def ctx(**changes: float) -> ScalingContext:
    return dataclasses.replace(BASE, **changes)


def test_registry_lists_names_on_unknown_policy() -> None:
    assert set(POLICIES) == {"static", "hpa", "kpa", "target_tracking", "learned"}
    with pytest.raises(ValueError, match="hpa, kpa, learned, static, target_tracking"):
        create_policy("nope")
    with pytest.raises(ValueError, match="bad parameters"):
        create_policy("hpa", windw=3.0)


def test_static_returns_its_count() -> None:
    assert create_policy("static", replicas=3).decide(ctx(utilisation=1.0)) == 3


def test_hpa_scales_by_metric_over_target() -> None:
    # ceil(4 * 0.9 / 0.6) = 6
    assert HpaPolicy(target=0.6).decide(ctx(utilisation=0.9)) == 6


def test_hpa_tolerance_holds_within_ten_percent() -> None:
    policy = HpaPolicy(target=0.6)
    assert policy.decide(ctx(utilisation=0.65)) == 4  # ratio 1.083
    assert policy.decide(ctx(now=1, utilisation=0.55)) == 4  # ratio 0.917
    assert policy.decide(ctx(now=2, utilisation=0.67)) == 5  # ratio 1.117: ceil(4.47)


def test_hpa_counts_starting_replicas_as_idle_on_scale_up() -> None:
    # 4 ready at 90%, 2 starting at 0%: 0.9 * 4 / (6 * 0.6) = 1.0, already enough.
    assert HpaPolicy(target=0.6).decide(ctx(current_replicas=6, utilisation=0.9)) == 6
    # at 100%: 4 / 3.6 = 1.11 > 1.1: ceil(6 * 1.11) = 7
    assert HpaPolicy(target=0.6).decide(ctx(current_replicas=6, utilisation=1.0)) == 7


def test_hpa_scale_down_waits_for_the_stabilisation_window() -> None:
    policy = HpaPolicy(target=0.6)  # window 300 s x 0.1 = 30 s
    assert policy.stabilisation_s == 30.0
    assert policy.decide(ctx(now=0, utilisation=0.9)) == 6
    # 6 ready at 30%: recommends ceil(6 * 0.5) = 3, but 6 was recommended 10 s ago.
    assert policy.decide(ctx(now=10, current_replicas=6, ready_replicas=6, utilisation=0.3)) == 6
    assert policy.decide(ctx(now=41, current_replicas=6, ready_replicas=6, utilisation=0.3)) == 3


def test_hpa_production_time_base() -> None:
    assert HpaPolicy(time_scale=1.0).stabilisation_s == 300.0
    assert HpaPolicy(stabilisation_s=5.0).stabilisation_s == 5.0


def test_kpa_stable_window_average() -> None:
    policy = KpaPolicy(target=10)  # stable 6 s, panic 0.6 s
    assert (policy.stable_window_s, policy.panic_window_s) == (6.0, pytest.approx(0.6))
    for t in range(6):
        decided = policy.decide(ctx(now=t, current_replicas=2, ready_replicas=2,
                                    ongoing_requests=10.0 + 2 * t))
    # mean of 10, 12, ..., 20 over [0, 5] = 15 -> ceil(1.5) = 2
    assert decided == 2
    assert not policy.in_panic


def test_kpa_panics_at_twice_ready_and_never_scales_down_in_panic() -> None:
    policy = KpaPolicy(target=10)
    for t in range(6):
        policy.decide(ctx(now=t, current_replicas=2, ready_replicas=2, ongoing_requests=15.0))
    # panic window sees 50 -> 5 replicas wanted, 5 / 2 ready >= 2: panic, jump to 5.
    assert policy.decide(ctx(now=6, current_replicas=2, ready_replicas=2,
                             ongoing_requests=50.0)) == 5
    assert policy.in_panic
    # load gone, but still in panic for a stable window after the last over-threshold tick
    for t in range(7, 12):
        assert policy.decide(ctx(now=t, current_replicas=5, ready_replicas=5,
                                 ongoing_requests=15.0)) == 5
    # t=12: 6 s since the last panic tick: back to the stable window's mean 15 -> 2,
    # limited by the max scale-down rate to floor(5 / 2) = 2.
    assert policy.decide(ctx(now=12, current_replicas=5, ready_replicas=5,
                             ongoing_requests=15.0)) == 2
    assert not policy.in_panic


def test_kpa_max_scale_down_rate() -> None:
    policy = KpaPolicy(target=10)
    # wants 1 replica, but may drop at most half of 10 ready in one decision
    assert policy.decide(ctx(current_replicas=10, ready_replicas=10, ongoing_requests=5.0)) == 5


def test_target_tracking_waits_for_upscale_delay() -> None:
    policy = TargetTrackingPolicy(target=2)  # up 3 s, down 60 s, look-back 3 s
    for t in range(3):
        assert policy.decide(ctx(now=t, current_replicas=2, ongoing_requests=10.0)) == 2
    assert policy.decide(ctx(now=3, current_replicas=2, ongoing_requests=10.0)) == 5


def test_target_tracking_downscale_delay_and_reset() -> None:
    policy = TargetTrackingPolicy(target=2, look_back_s=0.0)
    assert policy.decide(ctx(now=0, ongoing_requests=2.0)) == 4  # wants 1, waits 60 s
    assert policy.decide(ctx(now=30, ongoing_requests=8.0)) == 4  # wants 4: resets the clock
    assert policy.decide(ctx(now=31, ongoing_requests=2.0)) == 4
    assert policy.decide(ctx(now=90, ongoing_requests=2.0)) == 4
    assert policy.decide(ctx(now=91, ongoing_requests=2.0)) == 1


@pytest.mark.parametrize("params", [{"target": 0.0}, {"time_scale": -1.0}])
def test_invalid_parameters_raise(params: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        create_policy("hpa", **params)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_hpa_holds_on_a_utilisation_that_is_not_a_number(bad: float) -> None:
    policy = HpaPolicy(target=0.5)
    assert policy.decide(ctx(now=0.0, utilisation=bad)) == BASE.current_replicas
    assert policy.decide(ctx(now=1.0, utilisation=1.0)) == 8, "and decides on the next reading"


@pytest.mark.parametrize("name", ["kpa", "target_tracking"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_non_finite_reading_does_not_poison_the_window(name: str, bad: float) -> None:
    policy = create_policy(name, target=2.0)
    for second in range(5):
        policy.decide(ctx(now=float(second), ongoing_requests=8.0, current_replicas=4,
                          ready_replicas=4))
    policy.decide(ctx(now=5.0, ongoing_requests=bad, current_replicas=4, ready_replicas=4))
    # The next decisions still size on the finite readings around the bad one.
    assert policy.decide(ctx(now=6.0, ongoing_requests=8.0, current_replicas=4,
                             ready_replicas=4)) == 4
