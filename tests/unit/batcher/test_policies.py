"""Batching policies: the arithmetic of each, and which one a model config selects."""

from __future__ import annotations

import pytest

from services.batcher.policies import (
    POLICIES,
    AimdPolicy,
    ArrivalRate,
    FixedPolicy,
    MeasuredCurve,
    QueueLengthPolicy,
    SloPolicy,
    create_policy,
    fit_affine,
    register,
    throughput_cap,
)
from tideserve.errors import InvalidArgument
from tideserve.modelconfig import ModelSpec
from tideserve.v1 import model_config_pb2 as mc


def spec(**parameters: str) -> ModelSpec:
    config = mc.ModelConfig(name="m", max_batch_size=32)
    config.input.add(name="x", data_type=mc.TYPE_FP32, dims=[4])
    config.output.add(name="y", data_type=mc.TYPE_FP32, dims=[1])
    config.dynamic_batching.max_queue_delay_microseconds = 2000
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    return ModelSpec.from_config(config)


def test_arrival_rate_settles_on_a_steady_stream() -> None:
    rate = ArrivalRate(tau_s=1.0)
    for step in range(5000):
        rate.add(1, step * 0.001)
    assert rate.rate(4.999) == pytest.approx(1000, rel=0.01)
    # With no arrivals it decays by e per time constant.
    assert rate.rate(5.999) == pytest.approx(1000 / 2.718281828, rel=0.01)


def test_fit_affine_recovers_fixed_and_per_row_cost() -> None:
    fixed, per_row = fit_affine({1: 0.0012, 8: 0.0026, 32: 0.0074})
    assert fixed == pytest.approx(0.001, abs=1e-6)
    assert per_row == pytest.approx(0.0002, abs=1e-7)
    assert fit_affine({}) is None
    assert fit_affine({4: 0.008}) == (0.0, 0.002)


def test_slo_policy_does_not_make_a_lone_request_wait() -> None:
    policy = SloPolicy(32, slo_s=0.05, curve=lambda: {1: 0.002, 32: 0.0095})
    policy.arrived(1, 0.0)  # one request in the last second: rate ~1/s
    rows, wait = policy.target(1, 0.0)
    assert rows == 1
    assert wait == 0.0


def steady(policy: SloPolicy, rows_per_s: float, seconds: float = 8.0) -> float:
    """Feed `rows_per_s` single-row arrivals until the rate estimate has settled; returns now."""
    step = 1.0 / rows_per_s
    count = int(seconds * rows_per_s)
    for index in range(count):
        policy.arrived(1, index * step)
    return (count - 1) * step


# t(b) = 1 ms + 0.25 ms * b; an SLO of 20 ms leaves a 10 ms compute budget: b <= 36, which
# serves up to 36 / 10 ms = 3,600 rows/s.
CURVE = {1: 0.00125, 33: 0.00925}


def test_slo_policy_never_waits_and_caps_batches_at_the_budget() -> None:
    policy = SloPolicy(64, slo_s=0.02, curve=lambda: CURVE)
    now = steady(policy, 2000)
    assert policy.target(20, now) == (20, 0.0)
    assert policy.target(50, now) == (36, 0.0)


def test_slo_policy_lifts_the_cap_when_budget_sized_batches_cannot_keep_up() -> None:
    """Above 3,600 rows/s, 36-row batches would let the queue grow without end: the backlog
    leaves in batches as large as the model takes."""
    policy = SloPolicy(64, slo_s=0.02, curve=lambda: CURVE)
    now = steady(policy, 5000)
    assert policy.target(50, now) == (50, 0.0)
    assert policy.target(500, now) == (64, 0.0)


def test_slo_policy_without_a_usable_budget_takes_what_is_queued() -> None:
    assert SloPolicy(16, slo_s=0.05, curve=dict).target(5, 0.0) == (5, 0.0)
    # A budget below the fixed cost of a batch affords no size at all: nothing to cap with.
    tight = SloPolicy(16, slo_s=0.001, curve=lambda: CURVE)
    assert tight.target(40, 0.0) == (16, 0.0)


def test_aimd_adds_one_while_within_budget_and_cuts_ten_percent_on_a_miss() -> None:
    policy = AimdPolicy(8, slo_s=0.02)  # budget 10 ms
    for _ in range(5):
        policy.observe(int(policy.size), queue_seconds=0.001, service_seconds=0.002)
    assert policy.target(0, 0.0)[0] == 6
    policy.observe(6, queue_seconds=0.0, service_seconds=0.012)
    assert policy.size == pytest.approx(5.4)
    policy.observe(5, queue_seconds=0.0, service_seconds=0.006)
    assert policy.target(0, 0.0) == (6, pytest.approx(0.004))
    for _ in range(10):
        policy.observe(int(policy.size), queue_seconds=0.0, service_seconds=0.001)
    assert policy.target(0, 0.0)[0] == 8, "never beyond the max batch size"


def test_aimd_does_not_shrink_batches_for_a_backlog() -> None:
    """Requests that queued long behind a backlog are no reason for smaller batches: those
    would serve fewer rows a second and the backlog would only grow."""
    policy = AimdPolicy(8, slo_s=0.02)  # budget 10 ms
    for _ in range(3):
        policy.observe(int(policy.size), queue_seconds=0.050, service_seconds=0.004)
    assert policy.size == 4.0


def test_queue_length_takes_what_is_queued_without_waiting() -> None:
    policy = QueueLengthPolicy(16)
    assert policy.target(5, 0.0) == (5, 0.0)
    assert policy.target(40, 0.0) == (16, 0.0)
    assert policy.target(0, 0.0) == (1, 0.0)


def test_model_config_selects_the_policy() -> None:
    assert isinstance(create_policy(spec(), dict), FixedPolicy)
    assert create_policy(spec(), dict).target(0, 0.0) == (32, 0.002)
    assert isinstance(create_policy(spec(slo_ms="50"), dict), SloPolicy)
    assert isinstance(create_policy(spec(slo_ms="50", batching_policy="aimd"), dict), AimdPolicy)
    assert isinstance(create_policy(spec(batching_policy="queue_length"), dict), QueueLengthPolicy)


def test_every_policy_is_registered_under_its_name() -> None:
    assert sorted(POLICIES) == ["aimd", "fixed", "queue_length", "slo"]
    for name in POLICIES:
        chosen = create_policy(spec(batching_policy=name, slo_ms="50"), dict)
        assert chosen.name == name


def test_an_unknown_policy_name_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown batching_policy 'magic'") as refused:
        create_policy(spec(batching_policy="magic"), dict)
    assert "['aimd', 'fixed', 'queue_length', 'slo']" in str(refused.value)


@pytest.mark.parametrize("name", ["slo", "aimd"])
def test_an_slo_policy_without_slo_ms_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match=f"batching_policy {name} needs parameters.slo_ms"):
        create_policy(spec(batching_policy=name), dict)


def test_a_registered_policy_can_be_chosen_and_names_are_not_reused() -> None:
    register("test_only", lambda s, curve: QueueLengthPolicy(s.max_batch_size, curve))
    try:
        assert isinstance(create_policy(spec(batching_policy="test_only"), dict), QueueLengthPolicy)
        with pytest.raises(ValueError, match="'test_only' is already registered"):
            register("test_only", lambda s, curve: FixedPolicy(1, 0.0))
    finally:
        del POLICIES["test_only"]


@pytest.mark.parametrize(
    ("parameters", "words"),
    [
        ({"slo_ms": "-5"}, "slo_ms must be a number > 0"),
        ({"instance_count": "two"}, "instance_count must be a number > 0"),
        ({"coalesce_window_us": "-1"}, "coalesce_window_us must be a number >= 0"),
    ],
)
def test_bad_policy_parameters_are_refused_when_the_config_is_read(
    parameters: dict[str, str], words: str
) -> None:
    with pytest.raises(InvalidArgument, match=words):
        spec(**parameters)


# The default profile's tiny_cnn on one CPU worker (tideserve_learning/sim/profiles/default.json):
# rows per second peak at batches of 24 (91/s) and fall to 70/s at 64.
SUPERLINEAR = {1: 0.103, 8: 0.183, 16: 0.223, 24: 0.262, 32: 0.422, 48: 0.612, 64: 0.920}


def test_coalescing_window_comes_from_the_model_config() -> None:
    assert spec(coalesce_window_us="8000").coalesce_window_s == pytest.approx(0.008)
    assert spec(coalesce_window_us="0").coalesce_window_s == 0.0
    assert spec().coalesce_window_s is None, "unset: the batcher chooses the window"


def test_batches_stop_where_the_measured_curve_serves_rows_fastest() -> None:
    assert throughput_cap(SUPERLINEAR, 64) == 24
    assert FixedPolicy(64, 0.002, lambda: SUPERLINEAR).target(100, 0.0) == (24, 0.002)
    assert QueueLengthPolicy(64, lambda: SUPERLINEAR).target(100, 0.0) == (24, 0.0)
    assert QueueLengthPolicy(64, lambda: SUPERLINEAR).target(10, 0.0) == (10, 0.0)


def test_no_cap_without_evidence_that_larger_batches_are_slower() -> None:
    # Rows get cheaper with size (mlp, cnn): the max batch size stays.
    assert throughput_cap({1: 0.001, 16: 0.004, 64: 0.010}, 64) == 64
    # Nothing larger than the best size measured yet: it may still get better.
    assert throughput_cap({1: 0.103, 24: 0.262}, 64) == 64
    # Within the noise margin: no cap.
    assert throughput_cap({32: 0.100, 64: 0.210}, 64) == 64
    assert throughput_cap({}, 64) == 64
    # Sizes above the model's maximum (another config's) do not count.
    assert throughput_cap({8: 0.010, 128: 0.400}, 64) == 64


def test_a_measured_curve_is_refit_when_the_catalog_hands_over_a_new_one() -> None:
    curves = [{1: 0.003, 9: 0.011}]
    measured = MeasuredCurve(lambda: curves[-1])
    assert measured.fit() == pytest.approx((0.002, 0.001))
    assert measured.cap(64) == 64
    curves.append(SUPERLINEAR)
    assert measured.cap(64) == 24
    assert measured.fit() == fit_affine(SUPERLINEAR)
