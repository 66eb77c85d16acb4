"""Routing policies on hand-built load tables."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from services.balancer.registry import WorkerRecord
from services.balancer.routing import (
    POLICIES,
    LeastLoad,
    PowerOfTwo,
    RoundRobin,
    ShortestExpectedDelay,
    WeightedRoundRobin,
    create_policy,
)


def worker(
    worker_id: str, *, batches: int = 0, rows: int = 0, per_row_s: float | None = None
) -> WorkerRecord:
    """A worker holding `batches` outstanding batches of `rows` rows in all; with `per_row_s`,
    a measured service time that is linear in batch size."""
    times = {} if per_row_s is None else {1: per_row_s, 8: 8 * per_row_s}
    return WorkerRecord(
        worker_id,
        f"{worker_id}:1",
        "cpu",
        frozenset({"m"}),
        0.0,
        outstanding_batches=batches,
        outstanding_rows=rows,
        service_times=times,
    )


def test_round_robin_rotates_in_id_order_whatever_the_list_order() -> None:
    policy = RoundRobin()
    workers = [worker("c"), worker("a"), worker("b")]

    picks = [policy.choose(workers, 1).worker_id for _ in range(6)]

    assert picks == ["a", "b", "c", "a", "b", "c"]


def test_least_load_picks_fewest_outstanding_rows() -> None:
    workers = [worker("a", batches=1, rows=8), worker("b", batches=3, rows=3), worker("c", rows=5)]

    assert LeastLoad().choose(workers, 1).worker_id == "b"


def test_least_load_breaks_ties_on_batches_then_id() -> None:
    tied = [worker("b", batches=1, rows=4), worker("a", batches=1, rows=4)]

    assert LeastLoad().choose(tied, 1).worker_id == "a"
    fewer = [worker("a", batches=2, rows=4), worker("b", batches=1, rows=4)]
    assert LeastLoad().choose(fewer, 1).worker_id == "b"


def test_shortest_expected_delay_weighs_backlog_by_measured_speed() -> None:
    # The fast worker holds more rows but would still finish a new batch sooner.
    slow = worker("slow", batches=1, rows=4, per_row_s=0.010)
    fast = worker("fast", batches=2, rows=8, per_row_s=0.001)

    assert ShortestExpectedDelay().choose([slow, fast], 4).worker_id == "fast"
    assert LeastLoad().choose([slow, fast], 4).worker_id == "slow", "least_load ignores speed"


def test_shortest_expected_delay_prefers_idle_worker() -> None:
    busy = worker("a", batches=3, rows=12, per_row_s=0.001)
    idle = worker("b", per_row_s=0.001)

    assert ShortestExpectedDelay().choose([busy, idle], 4).worker_id == "b"


def test_power_of_two_picks_the_better_of_its_two_samples() -> None:
    workers = [
        worker("a", batches=5, rows=40, per_row_s=0.001),
        worker("b", per_row_s=0.001),
        worker("c", batches=1, rows=8, per_row_s=0.001),
    ]
    policy = PowerOfTwo(random.Random(7))

    picks = Counter(policy.choose(workers, 1).worker_id for _ in range(300))

    assert picks["a"] == 0, "the most loaded worker loses every pair it is drawn into"
    assert picks["b"] > picks["c"] > 0


def test_power_of_two_with_one_candidate() -> None:
    only = worker("only")

    assert PowerOfTwo(random.Random(0)).choose([only], 1) is only


def test_weighted_round_robin_weights_are_measured_throughput() -> None:
    fast = worker("fast", per_row_s=0.001)
    slow = worker("slow", per_row_s=0.003)
    new = worker("new")

    weights = WeightedRoundRobin.weights([fast, slow, new], 1)

    assert weights["fast"] == pytest.approx(1000.0)
    assert weights["slow"] == pytest.approx(1000.0 / 3)
    assert weights["new"] == pytest.approx((1000.0 + 1000.0 / 3) / 2), "unmeasured: the mean"


def test_weighted_round_robin_shares_picks_by_weight_and_interleaves() -> None:
    workers = [worker(name, per_row_s=0.001) for name in ("a", "b", "c")]
    workers.append(worker("slow", per_row_s=0.003))
    policy = WeightedRoundRobin()

    picks = [policy.choose(workers, 1).worker_id for _ in range(100)]

    assert Counter(picks) == {"a": 30, "b": 30, "c": 30, "slow": 10}
    assert max(len(run) for run in "".join(p[0] for p in picks).split("s")) <= 12, (
        "the slow worker's turns are spread out, not bunched"
    )


def test_weighted_round_robin_ignores_queues() -> None:
    """By design: it spreads by speed alone, so a burst queued on one worker does not divert it."""
    busy = worker("a", batches=9, rows=9, per_row_s=0.001)
    idle = worker("b", per_row_s=0.001)
    policy = WeightedRoundRobin()

    assert {policy.choose([busy, idle], 1).worker_id for _ in range(2)} == {"a", "b"}


def test_weighted_round_robin_follows_a_changing_candidate_set() -> None:
    a, b, c = (worker(name, per_row_s=0.001) for name in "abc")
    policy = WeightedRoundRobin()
    for _ in range(5):
        policy.choose([a, b, c], 1)

    picks = Counter(policy.choose([a, c], 1).worker_id for _ in range(10))

    assert set(picks) == {"a", "c"}
    assert min(picks.values()) >= 4, "credit carried over shifts a pick or two, no more"


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_create_policy_by_name(name: str) -> None:
    policy = create_policy(name)

    assert policy.name == name
    assert policy.choose([worker("a")], 1).worker_id == "a"


def test_create_policy_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown routing policy 'fastest'.*least_load"):
        create_policy("fastest")
