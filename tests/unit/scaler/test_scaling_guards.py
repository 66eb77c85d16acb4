"""Guards: bounds, the scale-down stabilisation window, cooldowns and max step, with injected
time."""

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
    guards = Guards(GuardConfig(min_replicas=1, max_replicas=50, up_cooldown_s=2.0, max_step_up=2))
    guards.config = GuardConfig(min_replicas=50, max_replicas=50, up_cooldown_s=2.0, max_step_up=2)
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
    [
        {"min_replicas": -1},
        {"min_replicas": 3, "max_replicas": 2},
        {"up_cooldown_s": -1.0},
        {"max_step_up": 0},
        {"down_stabilisation_s": -1.0},
    ],
)
def test_invalid_config_raises(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        GuardConfig(**kwargs)  # type: ignore[arg-type]


def test_a_dip_shorter_than_the_stabilisation_window_changes_nothing() -> None:
    guards = Guards(GuardConfig(max_replicas=10, down_stabilisation_s=3.0))
    assert guards.apply(4, 4, now=0.0)[0] == 4
    applied, reason = guards.apply(4, 3, now=1.0)
    assert (applied, reason) == (4, "down stabilisation: 4 proposed within 3 s")
    assert guards.apply(4, 4, now=2.0)[0] == 4
    # Low from t=3 on: held while t=2's proposal of 4 is within the window, then let go.
    assert [guards.apply(4, 3, now=t)[0] for t in (3.0, 4.0, 5.0)] == [4, 4, 4]
    assert guards.apply(4, 3, now=6.0) == (3, "down by 1")


def test_a_scale_down_goes_to_the_highest_proposal_in_the_window() -> None:
    guards = Guards(GuardConfig(max_replicas=10, down_stabilisation_s=2.0))
    assert guards.apply(8, 8, now=0.0)[0] == 8
    guards.apply(8, 5, now=1.0)
    guards.apply(8, 2, now=2.0)
    assert guards.apply(8, 2, now=3.0)[0] == 5
    assert guards.apply(5, 2, now=5.0)[0] == 2


def test_the_stabilisation_window_never_delays_a_scale_up() -> None:
    guards = Guards(GuardConfig(max_replicas=10, down_stabilisation_s=30.0))
    assert guards.apply(4, 4, now=0.0)[0] == 4
    assert guards.apply(4, 2, now=1.0)[0] == 4
    assert guards.apply(4, 7, now=2.0) == (7, "up by 3")


def test_a_lowered_maximum_is_not_held_up_by_the_window() -> None:
    guards = Guards(GuardConfig(max_replicas=10, down_stabilisation_s=30.0))
    assert guards.apply(8, 8, now=0.0)[0] == 8
    guards.config = GuardConfig(max_replicas=4, down_stabilisation_s=30.0)
    assert guards.apply(8, 8, now=1.0) == (4, "down by 4 (clamped to bounds)")


def test_without_a_window_a_one_second_dip_scales_down() -> None:
    guards = Guards(GuardConfig(max_replicas=10))
    assert guards.apply(4, 4, now=0.0)[0] == 4
    assert guards.apply(4, 3, now=1.0)[0] == 3
