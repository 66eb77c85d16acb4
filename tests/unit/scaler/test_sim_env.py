"""Simulator: the gymnasium contract, determinism, traces and rule policies in the loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from services.scaler.learning import actions, observation
from services.scaler.policies import ScalingContext, create_policy
from tideserve_learning.sim import traces
from tideserve_learning.sim.env import EnvConfig, ServingClusterEnv


def test_env_passes_the_checker() -> None:
    check_env(ServingClusterEnv(), skip_render_check=True)


def _rollout(seed: int) -> tuple[list[np.ndarray], list[float]]:
    env = ServingClusterEnv()
    obs, _ = env.reset(seed=seed)
    chosen = np.random.default_rng(0).integers(0, actions.N_ACTIONS, 200)
    observations, rewards = [obs], []
    for action in chosen:
        obs, reward, _, _, _ = env.step(int(action))
        observations.append(obs)
        rewards.append(reward)
    return observations, rewards


def test_same_seed_same_episode() -> None:
    first, second, other = _rollout(7), _rollout(7), _rollout(8)
    assert all(np.array_equal(a, b) for a, b in zip(first[0], second[0], strict=True))
    assert first[1] == second[1]
    assert first[1] != other[1]


def test_traces_are_seeded_and_split() -> None:
    assert np.array_equal(traces.generate("mmpp", 3).rates, traces.generate("mmpp", 3).rates)
    assert not set(traces.train_set()) & set(traces.test_set())
    assert not set(traces.validation_set()) & (set(traces.train_set()) | set(traces.test_set()))
    assert {shape for shape, _ in traces.validation_set()} == set(traces.TRAIN_SHAPES)
    assert {shape for shape, _ in traces.train_set()}.isdisjoint(traces.HELD_OUT_SHAPES)
    for shape in traces.SHAPES:
        trace = traces.generate(shape, 0)
        assert trace.rates.mean() == pytest.approx(1.0)
        assert 1.2 < trace.peak_to_mean < 6.0
        assert 1.0 <= trace.cv <= 4.0
    with pytest.raises(ValueError, match="diurnal"):
        traces.generate("weekly", 0)


def test_episode_runs_to_the_trace_end_with_bounded_replicas() -> None:
    env = ServingClusterEnv(EnvConfig(max_replicas=4, duration_s=50))
    env.reset(seed=0)
    truncated, steps = False, 0
    while not truncated:
        _, _, terminated, truncated, info = env.step(actions.N_ACTIONS - 1)
        assert not terminated
        assert 1 <= info["replicas"] <= 4
        steps += 1
    assert steps == 50
    assert env.log.worker_seconds <= 4 * 50


def test_rule_policy_runs_in_the_simulator() -> None:
    env = ServingClusterEnv(trace_keys=[("diurnal", 1000)])
    env.reset(seed=1000)
    policy = create_policy("hpa", target=0.6)
    truncated = False
    while not truncated:
        _, _, _, truncated, _ = env.step_to(policy.decide(env.scaling_context()))
    assert env.log.slo_attainment() > 0.99
    assert env.log.worker_seconds < 10 * 600
    assert env.log.latency_quantile(0.99) < env.config.slo_s


def test_cold_start_delays_new_capacity() -> None:
    env = ServingClusterEnv()
    env.reset(seed=0)
    ready = env.ready
    env.step_to(env.replicas + 1)
    assert (env.ready, len(env.starting)) == (ready, 1)
    for _ in range(math.ceil(env.profile.cold_start_s)):
        env.step(actions.HOLD)
    assert env.ready == ready + 1


def _context(now: float, rate: float, replicas: int = 2) -> ScalingContext:
    return ScalingContext(now=now, current_replicas=replicas, ready_replicas=replicas,
                          arrival_rate=rate, queued_requests=0, ongoing_requests=0.0,
                          latency_p99_s=0.1, slo_s=0.5, utilisation=0.5,
                          service_rate_per_replica=10.0)


def test_observation_spread_and_recent_peak() -> None:
    builder = observation.ObservationBuilder(max_replicas=10)
    spread, peak = (observation.FEATURES.index(f) for f in ("rate_spread", "peak_per_replica"))
    for t in range(30):
        steady = builder.update(_context(float(t), 10.0))
    assert steady[spread] == 0.0
    assert steady[peak] == pytest.approx(0.5)  # 10 req/s over 2 replicas x 10 req/s
    burst = builder.update(_context(30.0, 40.0))
    assert burst[spread] > 0.4
    assert burst[peak] == pytest.approx(2.0)
    # The burst is remembered for 30 s, then forgotten.
    later = [builder.update(_context(31.0 + t, 10.0)) for t in range(30)]
    assert later[28][peak] == pytest.approx(2.0)
    assert later[29][peak] == pytest.approx(0.5)
    assert later[29][spread] == 0.0


def test_live_guards_hold_the_training_env_to_the_live_steps_and_cooldowns() -> None:
    guarded = ServingClusterEnv(EnvConfig(duration_s=40, live_guards=True))
    guarded.reset(seed=0)
    counts = [guarded.replicas]
    # The action of the lowest target load asks for many more replicas than the demand needs.
    for _ in range(6):
        guarded.step(1)
        counts.append(guarded.replicas)
    moves = [b - a for a, b in zip(counts, counts[1:], strict=False)]
    assert max(moves) <= 2  # max_step_up
    # After a move up, the next one waits out the 2 s up cooldown.
    assert all(moves[i + 1] == 0 for i, m in enumerate(moves[:-1]) if m > 0)
    assert sum(moves) > 0
