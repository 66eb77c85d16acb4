"""Routing policies: given the workers that can take a batch, pick one.

Every policy implements `choose(candidates, rows)`; `create_policy(name)` builds one by name.
  round_robin         blind rotation; fine only for identical workers under light load
  least_load          fewest outstanding rows (the seed's policy); good for identical workers
  power_of_two        two random workers, the one that would finish sooner (P2C); O(1), robust
  shortest_expected_delay  every worker's expected completion time, the smallest; best with
                      uneven workers because it weighs backlog by each worker's measured speed
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


POLICIES: dict[str, Callable[[], RoutingPolicy]] = {
    RoundRobin.name: RoundRobin,
    LeastLoad.name: LeastLoad,
    PowerOfTwo.name: PowerOfTwo,
    ShortestExpectedDelay.name: ShortestExpectedDelay,
}


def create_policy(name: str) -> RoutingPolicy:
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(
            f"unknown routing policy {name!r}; choose one of {sorted(POLICIES)}"
        ) from None
