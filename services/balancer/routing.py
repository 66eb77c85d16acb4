"""Routing policies: given the workers that can take a batch, pick one.

Every policy implements `choose(candidates, rows)`; `create_policy(name)` builds one by name. The
candidates are already filtered to routable workers (fresh heartbeat, not draining, not ejected).
When each is right (bench/balancer.py measures them side by side):

  round_robin               blind rotation. Right only for identical workers under light load and
                            as a baseline: with one slow worker it overloads that worker (each
                            worker gets 1/n of the load whatever its speed).
  least_load                fewest outstanding rows (the seed's policy). A slow worker keeps its
                            rows longer, so it is chosen less without any speed estimate: the
                            default, with the best p99 in bench/balancer.py (4 workers, one 3x
                            slower, 80% load: p99 100 ms vs round robin 2,744 ms).
  power_of_two              two random workers, the one that would finish sooner (P2C on expected
                            completion time). O(1) per pick and robust to stale load data, which
                            makes it the choice for many workers or several balancers sharing them.
  weighted_round_robin      smooth weighted rotation with weight = measured throughput
                            (batches per busy second, i.e. qps/utilisation as gRPC's ORCA-fed WRR).
                            Uses no queue state, so it suits balancers that see little of the load;
                            it does not react to bursts.
  shortest_expected_delay   every worker's expected completion time (backlog weighed by measured
                            speed, plus this batch), the smallest: join-shortest-queue with speeds.
                            In theory the best tail with uneven workers; in bench/balancer.py it
                            starved the slow worker and its p99 was ~4x least_load's (the speed
                            estimate is the suspect, not yet explained).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence
from typing import Protocol

from services.balancer.registry import WorkerRecord


class RoutingPolicy(Protocol):
    name: str

    def choose(self, candidates: Sequence[WorkerRecord], rows: int) -> WorkerRecord:
        """Pick one of a non-empty list of candidates for a batch of `rows`."""
        ...


class RoundRobin:
    name = "round_robin"

    def __init__(self) -> None:
        self._counter = itertools.count()

    def choose(self, candidates: Sequence[WorkerRecord], rows: int) -> WorkerRecord:
        ordered = sorted(candidates, key=lambda w: w.worker_id)
        return ordered[next(self._counter) % len(ordered)]


class LeastLoad:
    name = "least_load"

    def choose(self, candidates: Sequence[WorkerRecord], rows: int) -> WorkerRecord:
        return min(
            candidates, key=lambda w: (w.outstanding_rows, w.outstanding_batches, w.worker_id)
        )


class PowerOfTwo:
    name = "power_of_two"

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def choose(self, candidates: Sequence[WorkerRecord], rows: int) -> WorkerRecord:
        if len(candidates) == 1:
            return candidates[0]
        first, second = self._rng.sample(list(candidates), 2)
        return min((first, second), key=lambda w: w.expected_completion(rows))


class ShortestExpectedDelay:
    name = "shortest_expected_delay"

    def choose(self, candidates: Sequence[WorkerRecord], rows: int) -> WorkerRecord:
        return min(candidates, key=lambda w: (w.expected_completion(rows), w.worker_id))


class WeightedRoundRobin:
    """Smooth weighted round robin: every pick adds each candidate's weight to its credit, takes
    the highest credit and charges it the total, so picks interleave in proportion to weight.

    Weight is 1 / service time of a batch of this size, which is what qps/utilisation estimates;
    a worker not measured yet gets the mean weight of the others, as gRPC's WRR does."""

    name = "weighted_round_robin"

    def __init__(self) -> None:
        self._credit: dict[str, float] = {}

    @staticmethod
    def weights(candidates: Sequence[WorkerRecord], rows: int) -> dict[str, float]:
        measured = {
            w.worker_id: 1.0 / w.service_time(rows)
            for w in candidates
            if w.service_times or w.reported_times
        }
        default = sum(measured.values()) / len(measured) if measured else 1.0
        return {w.worker_id: measured.get(w.worker_id, default) for w in candidates}

    def choose(self, candidates: Sequence[WorkerRecord], rows: int) -> WorkerRecord:
        weights = self.weights(candidates, rows)
        # Credit of workers no longer among the candidates is dropped with them.
        self._credit = {i: self._credit.get(i, 0.0) + weight for i, weight in weights.items()}
        chosen = max(candidates, key=lambda w: (self._credit[w.worker_id], w.worker_id))
        self._credit[chosen.worker_id] -= sum(weights.values())
        return chosen


POLICIES: dict[str, Callable[[], RoutingPolicy]] = {
    RoundRobin.name: RoundRobin,
    LeastLoad.name: LeastLoad,
    PowerOfTwo.name: PowerOfTwo,
    WeightedRoundRobin.name: WeightedRoundRobin,
    ShortestExpectedDelay.name: ShortestExpectedDelay,
}


def create_policy(name: str) -> RoutingPolicy:
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(
            f"unknown routing policy {name!r}; choose one of {sorted(POLICIES)}"
        ) from None
