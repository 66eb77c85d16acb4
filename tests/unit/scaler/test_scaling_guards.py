"""Guards: bounds, cooldowns and max step, with injected time."""

from __future__ import annotations

import pytest

from services.scaler.guards import GuardConfig, Guards


def test_bounds_clamp_the_proposal() -> None:
    guards = Guards(GuardConfig(min_replicas=2, max_replicas=5))
    assert guards.apply(3, 9, now=0.0) == (5, "up by 2 (clamped to bounds)")
    assert guards.apply(5, 0, now=1.0) == (2, "down by 3 (clamped to bounds)")
    assert guards.apply(2, 2, now=2.0) == (2, "hold")


def test_up_cooldown_blocks_a_second_scale_up() -> None:
    guards = Guards(GuardConfig(max_replicas=10, up_cooldown_s=5.0))
    assert guards.apply(2, 4, now=0.0)[0] == 4
    applied, reason = guards.apply(4, 6, now=3.0)
    assert applied == 4
    assert reason.startswith("up cooldown")
    assert guards.apply(4, 6, now=5.0)[0] == 6


def test_down_cooldown_counts_from_any_change() -> None:
    guards = Guards(GuardConfig(max_replicas=10, down_cooldown_s=10.0))
    assert guards.apply(2, 4, now=0.0)[0] == 4
    assert guards.apply(4, 3, now=9.0)[0] == 4
    assert guards.apply(4, 3, now=10.0)[0] == 3
    assert guards.apply(3, 2, now=15.0)[0] == 3


def test_max_step_limits_each_decision() -> None:
    guards = Guards(GuardConfig(max_replicas=20, max_step_up=4, max_step_down=1))
    assert guards.apply(2, 12, now=0.0) == (6, "up by max step 4 of 10")
    assert guards.apply(6, 1, now=1.0) == (5, "down by max step 1 of 5")


def test_a_count_outside_new_bounds_returns_through_cooldown_and_steps() -> None:
    guards = Guards(GuardConfig(max_replicas=10, down_cooldown_s=60.0, max_step_down=2))
    assert guards.apply(2, 9, now=0.0)[0] == 9
    guards.config = GuardConfig(max_replicas=4, down_cooldown_s=60.0, max_step_down=2)
    assert guards.apply(9, 9, now=1.0) == (9, "down cooldown until t=60.0")
    assert guards.apply(9, 9, now=60.0) == (7, "down by max step 2 of 5")
    assert guards.apply(7, 9, now=119.0)[0] == 7
    assert guards.apply(7, 9, now=120.0)[0] == 5


def test_a_raised_minimum_is_reached_a_step_per_up_cooldown() -> None:
    guards = Guards(GuardConfig(min_replicas=1, max_replicas=50, up_cooldown_s=2.0,
                                max_step_up=2))
    guards.config = GuardConfig(min_replicas=50, max_replicas=50, up_cooldown_s=2.0,
                                max_step_up=2)
    counts, current, now = [], 1, 0.0
    while current < 50:
        applied, _ = guards.apply(current, 0, now)
        assert applied - current <= 2
        if applied != current:
            counts.append((now, applied))
        current, now = applied, now + 1.0
    assert counts[:3] == [(0.0, 3), (2.0, 5), (4.0, 7)]
    assert len(counts) == 25


def test_bounded_is_the_proposal_within_the_bounds() -> None:
    guards = Guards(GuardConfig(min_replicas=2, max_replicas=5))
    assert [guards.bounded(n) for n in (0, 3, 2**32 - 1)] == [2, 3, 5]


@pytest.mark.parametrize(
    "kwargs",
    [{"min_replicas": -1}, {"min_replicas": 3, "max_replicas": 2}, {"up_cooldown_s": -1.0},
     {"max_step_up": 0}],
)
def test_invalid_config_raises(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        GuardConfig(**kwargs)  # type: ignore[arg-type]
