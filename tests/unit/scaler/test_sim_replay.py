"""Simulator replaying given arrivals (one realization shared with a real load generator) and
measuring utilisation over the live scaler's window."""

from __future__ import annotations

import pytest

from tideserve_learning.sim.env import EnvConfig, ServingClusterEnv
from tideserve_tools.loadgen import arrival_times, per_second

SECONDS = 30


def _env(**config: float) -> ServingClusterEnv:
    env = ServingClusterEnv(
        EnvConfig(max_replicas=3, duration_s=SECONDS, peak_load=(0.7, 0.7), **config),
        trace_keys=[("diurnal", 0)],
    )
    env.reset(seed=0)
    return env


def _replay(env: ServingClusterEnv, counts: list[int], seed: int) -> list[float]:
    env.reset(seed=seed, options={"arrivals": counts})
    truncated = False
    while not truncated:
        _, _, _, truncated, _ = env.step_to(2)
    return env.log.within_slo


def test_given_arrivals_are_replayed_whatever_the_seed() -> None:
    env = _env()
    rates = env.trace.rates[:SECONDS] * env.rate_scale
    counts = per_second(arrival_times(rates, cv=env.trace.cv, seed=3), SECONDS)
    assert sum(counts) > 0

    first = _replay(env, counts, seed=1)
    assert env.log.arrivals == [float(c) for c in counts]
    assert _replay(env, counts, seed=2) == first


def test_too_few_or_negative_arrivals_are_refused() -> None:
    env = _env()
    with pytest.raises(ValueError, match="one per step"):
        env.reset(seed=0, options={"arrivals": [5] * (SECONDS - 1)})
    with pytest.raises(ValueError, match="one per step"):
        env.reset(seed=0, options={"arrivals": [5] * (SECONDS - 1) + [-1]})


def test_without_given_arrivals_they_are_drawn() -> None:
    env = _env()
    env.reset(seed=0, options={"arrivals": None})
    env.step_to(2)
    assert env.log.arrivals[0] != env.trace.rates[0] * env.rate_scale  # a draw, not the mean


@pytest.mark.parametrize("window_s", [1.0, 2.0])
def test_utilisation_is_the_windowed_throughput_over_the_ready_workers(window_s: float) -> None:
    env = _env(util_window_s=window_s)
    env.reset(seed=0, options={"arrivals": [10] * 10 + [20] * (SECONDS - 10)})
    for _ in range(11):
        env.step_to(env.replicas)
    capacity = env.ready * env.peak_throughput
    expected = (20 if window_s == 1.0 else 15) / capacity
    assert env.scaling_context().utilisation == pytest.approx(expected)


def test_shipped_cluster_keeps_one_step_windows() -> None:
    config = EnvConfig()
    assert (config.rate_window_s, config.util_window_s) == (config.step_s, config.step_s)
    with pytest.raises(ValueError, match="util_window_s"):
        EnvConfig(util_window_s=0.5)


def test_arrival_times_follow_the_rates_per_second() -> None:
    times = arrival_times([0.0, 50.0, 200.0], cv=1.0, seed=0)
    assert times == sorted(times)
    assert arrival_times([0.0, 50.0, 200.0], cv=1.0, seed=0) == times
    counts = per_second(times, 3)
    assert counts[0] == 0
    assert sum(counts) == len(times)
    assert 20 < counts[1] < 80
    assert 150 < counts[2] < 250


def test_observation_delay_shows_the_policy_an_older_step() -> None:
    counts = [10] * 10 + [40] * (SECONDS - 10)
    prompt, late = _env(), _env(observation_delay_steps=1)
    seen = {}
    for name, env in (("prompt", prompt), ("late", late)):
        env.reset(seed=0, options={"arrivals": counts})
        rates = []
        for _ in range(12):
            rates.append(env.scaling_context().arrival_rate)
            env.step_to(env.replicas)
        seen[name] = rates
    assert seen["prompt"][11] == pytest.approx(40.0)
    assert seen["late"][11] == pytest.approx(10.0)
    assert seen["late"][1:] == seen["prompt"][:-1]
    assert prompt.log.within_slo == late.log.within_slo  # the cluster itself is unchanged


def test_windows_start_full_of_the_first_rate() -> None:
    env = _env(rate_window_s=5.0, util_window_s=2.0)
    first = env.trace.rates[0] * env.rate_scale
    env.reset(seed=0, options={"arrivals": [0] * SECONDS})
    env.step_to(env.replicas)
    ctx = env.scaling_context()
    assert ctx.arrival_rate == pytest.approx(first * 4 / 5)
    assert ctx.utilisation == pytest.approx(first / 2 / (env.ready * env.peak_throughput))
