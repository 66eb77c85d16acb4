"""tideserve_learning.scaler_oracle: the stabilised rule's arithmetic and the oracle's choice."""

from __future__ import annotations

import pytest

from services.scaler.policies import ScalingContext
from tideserve_learning.scaler_oracle import StabilisedRule, cheapest_meeting_goal, pareto


def _context(rate: float, queued: int = 0) -> ScalingContext:
    return ScalingContext(now=0.0, current_replicas=2, ready_replicas=2, arrival_rate=rate,
                          queued_requests=queued, ongoing_requests=0.0, latency_p99_s=0.1,
                          slo_s=0.5, utilisation=0.5, service_rate_per_replica=10.0)


def test_rule_follows_a_rise_at_once_and_a_fall_after_its_window() -> None:
    rule = StabilisedRule(load=1.0, smoothing_s=2, stabilisation_s=3)
    assert rule.decide(_context(20.0)) == 2
    assert rule.decide(_context(60.0)) == 4  # 2 s mean (20 + 60) / 2
    assert rule.decide(_context(60.0)) == 6
    # The 60 req/s means leave the 3-decision window one by one.
    assert [rule.decide(_context(10.0)) for _ in range(4)] == [6, 6, 4, 1]
    assert rule.decide(_context(10.0, queued=50)) == 2  # (10 + 50 / 5) / 10


def test_oracle_picks_the_cheapest_combination_meeting_the_goal() -> None:
    # (within SLO, requests, worker-seconds) per setting, for two shapes of 100 requests each.
    smooth = [((99.5, 100, 10.0), "hot"), ((100.0, 100, 14.0), "safe"), ((99.0, 100, 15.0), "bad")]
    bursty = [((97.0, 100, 8.0), "hot"), ((98.5, 100, 12.0), "safe")]
    assert [s for _, s in pareto(smooth)] == ["hot", "safe"]
    cost, attained, picks = cheapest_meeting_goal([pareto(smooth), pareto(bursty)])
    assert (cost, picks) == (22.0, ["hot", "safe"])  # 99.0% pooled; safe + hot is 98.5%
    assert attained == pytest.approx(0.99)
    assert cheapest_meeting_goal([[((90.0, 100, 1.0), "x")]]) is None
