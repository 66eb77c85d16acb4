"""Planner: Erlang C against known values, the seed's example, the batching estimate."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.scaler import planner
from tideserve_learning.sim.env import DEFAULT_PROFILE
from tideserve_tools import plan


@pytest.mark.parametrize(
    ("m", "a", "expected"),
    # C(1, a) = a (M/M/1); C(2, 1) = 1/3; C(3, 2) = 4/9; C(10, 8) = 0.4092 (tables)
    [(1, 0.5, 0.5), (2, 1.0, 1 / 3), (3, 2.0, 4 / 9), (10, 8.0, 0.4092)],
)
def test_erlang_c_known_values(m: int, a: float, expected: float) -> None:
    assert planner.erlang_c(m, a) == pytest.approx(expected, abs=1e-4)


def test_erlang_c_rejects_unstable_load() -> None:
    with pytest.raises(ValueError, match="a < m"):
        planner.erlang_c(2, 2.0)


def test_mm1_reduces_to_textbook_latency() -> None:
    # M/M/1: T = 1 / (mu - lambda)
    assert planner.mmm_mean_latency(1, 50.0, 100.0) == pytest.approx(1 / 50)


def test_seed_example_needs_six_replicas() -> None:
    # 500 req/s, 100 req/s per GPU, 200 ms mean: a = 5, so 6 is the smallest stable count
    assert planner.replicas_for_mean_latency(500, 100, 0.2) == 6
    assert planner.mmm_mean_latency(6, 500, 100) == pytest.approx(0.01588, abs=1e-5)


def test_seed_formula_overstates_latency() -> None:
    # At a 20 ms target Erlang C still says 6; the seed's formula says no count will do.
    assert planner.replicas_for_mean_latency(500, 100, 0.02) == 6
    assert all(planner.seed_mm1_latency(m, 500, 100) > 0.02 for m in range(6, 1000))


def test_wait_quantile() -> None:
    m = planner.replicas_for_wait_quantile(500, 100, 0.01, 0.01)
    assert planner.mmm_wait_exceeds(m, 500, 100, 0.01) <= 0.01
    assert planner.mmm_wait_exceeds(m - 1, 500, 100, 0.01) > 0.01


def test_batching_estimate_uses_the_fluid_model() -> None:
    profile = planner.ServiceProfile.load(DEFAULT_PROFILE)
    alpha, beta = profile.fit
    per_replica = profile.rate_within_slo(0.5)
    tau = alpha / (1 - per_replica * beta)
    assert planner.P99_OVER_TAU * tau == pytest.approx(0.5)
    assert planner.replicas_for_batching(profile, 3 * per_replica - 1, 0.5) == 3
    with pytest.raises(ValueError, match="unreachable"):
        planner.replicas_for_batching(profile, 100, 0.01)


def test_latency_shape_matches_its_quantiles() -> None:
    assert planner.batch_latency_cdf(planner.P99_OVER_TAU, 1.0) == pytest.approx(0.99)
    assert planner.batch_latency_cdf(1.0, 1.0) == 0.0


def test_cli_prints_the_seed_answer(capsys: pytest.CaptureFixture[str]) -> None:
    code = plan.main(["--rate", "500", "--service-rate", "100", "--slo-ms", "200",
                      "--profile", str(Path(DEFAULT_PROFILE).with_name("tiny_cnn_cpu.json"))])
    out = capsys.readouterr().out
    assert code == 0
    assert "mean latency <= 200 ms: 6 replicas" in out
    assert "batching-aware" in out
