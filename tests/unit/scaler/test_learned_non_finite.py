"""A NaN or infinite input hands the decision to the fallback rule, says so, and does not stay in
the learned policy's rate windows (where it would make every decision of the next 30 s fall back
or, before, fail)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from services.scaler.learning.fallback import LearnedWithFallback
from services.scaler.learning.observation import ObservationBuilder
from services.scaler.learning.policy import LearnedPolicy, NonFiniteObservation
from services.scaler.policies import HpaPolicy, ScalingContext

FLOAT_INPUTS = [
    f.name for f in dataclasses.fields(ScalingContext) if f.type == "float" and f.name != "now"
]


def context(now: float, rate: float = 60.0, **changes: float) -> ScalingContext:
    base = ScalingContext(
        now=now,
        current_replicas=3,
        ready_replicas=3,
        arrival_rate=rate,
        queued_requests=2,
        ongoing_requests=6.0,
        latency_p99_s=0.3,
        slo_s=0.5,
        utilisation=0.7,
        service_rate_per_replica=48.0,
    )
    return dataclasses.replace(base, **changes)


def steady(policy: LearnedWithFallback | LearnedPolicy, seconds: int) -> None:
    for second in range(seconds):
        policy.decide(context(float(second), rate=55.0 + second % 3))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("name", FLOAT_INPUTS)
def test_a_non_finite_input_is_decided_by_the_fallback(name: str, bad: float) -> None:
    policy, twin = LearnedWithFallback(HpaPolicy()), HpaPolicy()
    assert policy.learned is not None
    for second in range(5):
        ctx = context(float(second))
        twin.decide(ctx)
        policy.decide(ctx)
    assert policy.fallback_reason == ""

    bad_ctx = context(5.0, **{name: bad})
    assert policy.decide(bad_ctx) == twin.decide(bad_ctx)
    assert f"{name}={bad} is not a finite number" in policy.fallback_reason
    assert "hpa decided" in policy.fallback_reason
    assert isinstance(policy.learned.last_untrusted, NonFiniteObservation)

    policy.decide(context(6.0))
    assert policy.fallback_reason == "", "the next finite observation is the policy's again"


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_non_finite_rate_is_not_kept_in_the_windows(bad: float) -> None:
    seen, clean = ObservationBuilder(10), ObservationBuilder(10)
    for second in range(12):
        ctx = context(float(second), rate=40.0 + 3 * second)
        seen.update(ctx)
        clean.update(ctx)
    assert not np.isfinite(seen.update(context(12.0, rate=bad))).all()
    for second in range(13, 50):
        ctx = context(float(second), rate=40.0 + second % 7)
        assert np.array_equal(seen.update(ctx), clean.update(ctx))


def test_a_non_finite_rate_first_of_all_falls_back_without_error() -> None:
    builder = ObservationBuilder(10)
    assert np.isnan(builder.update(context(0.0, rate=math.nan))[0])
    assert np.isfinite(builder.update(context(1.0))).all()


def test_scaling_goes_on_after_a_nan() -> None:
    policy = LearnedWithFallback(HpaPolicy())
    steady(policy, 20)
    policy.decide(context(20.0, rate=math.nan))
    reasons = []
    for second in range(21, 25):
        policy.decide(context(float(second), rate=56.0))
        reasons.append(policy.fallback_reason)
    assert reasons == ["", "", "", ""]
