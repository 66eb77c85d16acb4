"""What a scaling action costs in the simulator: every started worker is paid from its start, so
its cold start (the profile's measured one, or EnvConfig.cold_start_s) is worker-seconds that
serve nothing; a policy's actions are counted per hour."""

from __future__ import annotations

import math

import pytest

from tideserve_learning.sim.env import EnvConfig, ServingClusterEnv


def _one_start(config: EnvConfig) -> tuple[ServingClusterEnv, list[int]]:
    """Hold 5 s, add one worker, hold 10 s; the ready count after each step."""
    env = ServingClusterEnv(config, trace_keys=[("diurnal", 0)])
    env.reset(seed=0)
    base = env.replicas
    ready = []
    for second in range(16):
        env.step_to(base + 1 if second >= 5 else base)
        ready.append(env.ready)
    return env, ready


@pytest.mark.parametrize("cold_start_s", [None, 0.0, 6.5])
def test_a_started_worker_is_paid_through_its_cold_start(cold_start_s: float | None) -> None:
    env, ready = _one_start(EnvConfig(duration_s=60, cold_start_s=cold_start_s))
    cold = env.profile.cold_start_s if cold_start_s is None else cold_start_s
    paid_cold = math.ceil(cold)  # whole steps from the start until it serves
    assert env.log.starts == 1
    assert env.log.changes == 1
    assert env.log.cold_worker_seconds == paid_cold
    # It serves only after its cold start, but is paid from the step it started.
    assert ready[5 + paid_cold] == ready[0] + 1
    assert ready[5 + paid_cold - 1] == ready[0] or paid_cold == 0
    assert env.log.worker_seconds == 16 * ready[0] + 11


def test_the_default_profile_carries_a_measured_cold_start() -> None:
    env = ServingClusterEnv(EnvConfig())
    assert env.cold_start_s == env.profile.cold_start_s > 1.0


def test_actions_are_counted_per_hour() -> None:
    env, _ = _one_start(EnvConfig(duration_s=60))
    assert env.log.actions_per_hour() == pytest.approx(3600 / 16)
    assert env.log.actions_per_hour(step_s=2.0) == pytest.approx(3600 / 32)
