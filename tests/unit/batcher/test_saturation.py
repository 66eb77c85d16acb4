"""ClosedLoop on a fake clock: the front door reads as saturated when a large share of its
clients stays outside the queue, not while nearly all of them are in it."""

from __future__ import annotations

import pytest

from services.batcher.saturation import (
    ENTER_OUTSIDE,
    ENTER_SHARE,
    LEAVE_SHARE,
    WINDOW_S,
    ClosedLoop,
)


def closed_loop_cycles(
    loop: ClosedLoop,
    start: float,
    clients: int,
    outside: int,
    *,
    cycle_s: float = 0.005,
    outside_s: float = 0.0025,
    seconds: float = 2 * WINDOW_S,
) -> float:
    """`clients` clients in a closed loop: each cycle `outside` of them are answered and stay
    out for `outside_s` of the `cycle_s`, then come back one by one. Returns the time after."""
    now = start
    while now < start + seconds:
        loop.changed(clients - outside, now)
        back = now + outside_s
        for index in range(outside):
            loop.changed(clients - outside + index + 1, back + index * 1e-6)
        now += cycle_s
    return now


def test_nearly_all_clients_inside_is_not_saturated() -> None:
    loop = ClosedLoop()
    # mlp at concurrency 16: a few answered clients come back within a fraction of a cycle.
    closed_loop_cycles(loop, 0.0, clients=16, outside=4, outside_s=0.0005)

    assert loop.outside_share < ENTER_SHARE
    assert not loop.saturated


def test_half_the_clients_outside_is_saturated() -> None:
    loop = ClosedLoop()
    # mlp at concurrency 64: about half the requests wait outside while a batch is served.
    closed_loop_cycles(loop, 0.0, clients=64, outside=40, outside_s=0.004)

    assert loop.outside_share >= ENTER_SHARE
    assert loop.saturated


def test_too_few_clients_never_saturate() -> None:
    loop = ClosedLoop()
    # Concurrency 16 on a crowded machine: half the clients outside, but only 8 of them.
    closed_loop_cycles(loop, 0.0, clients=16, outside=10, outside_s=0.004)

    assert loop.outside_share >= ENTER_SHARE
    assert loop.outside < ENTER_OUTSIDE
    assert not loop.saturated


def test_saturation_holds_until_the_share_falls_below_the_lower_threshold() -> None:
    loop = ClosedLoop()
    now = closed_loop_cycles(loop, 0.0, clients=64, outside=40, outside_s=0.004)
    assert loop.saturated
    # Between the two thresholds: still saturated.
    now = closed_loop_cycles(loop, now, clients=64, outside=32, outside_s=0.0025)
    assert LEAVE_SHARE <= loop.outside_share < ENTER_SHARE
    assert loop.saturated

    closed_loop_cycles(loop, now, clients=64, outside=8, outside_s=0.0025)
    assert loop.outside_share < LEAVE_SHARE
    assert not loop.saturated


def test_an_idle_spell_ends_saturation() -> None:
    loop = ClosedLoop()
    now = closed_loop_cycles(loop, 0.0, clients=64, outside=40, outside_s=0.004)
    assert loop.saturated

    loop.changed(1, now + 5.0)  # the first request after seconds without any
    assert not loop.saturated


def test_a_window_must_be_positive() -> None:
    with pytest.raises(ValueError, match="window_s must be > 0"):
        ClosedLoop(window_s=0.0)
