"""What `tideserve policy eval` evaluates is what the live scaler runs: one recorded observation
sequence (fixtures/observations.json: a spike with a NaN and an infinite report and a stretch
without traffic) fed to the live controller, built and ticked as the scaler's server builds and
ticks it, and to the evaluator's simulated controller gives the same count at every second."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path

from services.scaler.context import ScalingContext
from services.scaler.controller import ScalerController
from services.scaler.guards import GuardConfig
from services.scaler.runtime import ManagedWorker
from services.scaler.settings import ScalerSettings
from tideserve.v1 import cluster_pb2
from tideserve_learning.sim.env import EnvConfig
from tideserve_learning.sim.scaler import PolicySpec, replay

FIXTURE = Path(__file__).parent / "fixtures" / "observations.json"
# The simulated cluster the sequence was recorded on, and the policy's training bounds.
MIN_REPLICAS, MAX_REPLICAS = 1, 10


def recorded() -> list[ScalingContext]:
    return [ScalingContext(**row) for row in json.loads(FIXTURE.read_text())["contexts"]]


class CountingRuntime:
    name = "counting"

    def __init__(self) -> None:
        self.running: dict[str, ManagedWorker] = {}

    async def start(self, worker_id: str) -> ManagedWorker:
        worker = ManagedWorker(worker_id, worker_id, started_unix=float(len(self.running)))
        self.running[worker_id] = worker
        return worker

    async def stop(self, worker: ManagedWorker, grace_s: float) -> None:
        self.running.pop(worker.worker_id)

    async def list(self) -> list[ManagedWorker]:
        return list(self.running.values())

    async def reap(self) -> list[ManagedWorker]:
        return []

    async def close(self) -> None:
        return None


class Drained:
    async def drain(self, worker_id: str, wait_s: float) -> bool:
        return True


class ReplayObserver:
    """Stands in for the measurements: the recorded context at the controller's clock, with the
    replica counts the controller runs."""

    def __init__(self, contexts: list[ScalingContext]) -> None:
        self.by_time = {c.now: c for c in contexts}

    def observe(self, snapshot: cluster_pb2.ClusterSnapshot) -> None:
        return None

    def context(
        self, snapshot: cluster_pb2.ClusterSnapshot, now: float, current: int, ready: int
    ) -> ScalingContext:
        seen = self.by_time[now]
        return replace(
            seen, current_replicas=current, ready_replicas=min(seen.ready_replicas, current)
        )


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def settings_guards(settings: ScalerSettings) -> GuardConfig:
    """The guards `services.scaler.server` builds from `settings`."""
    return GuardConfig(
        min_replicas=settings.min_replicas,
        max_replicas=settings.max_replicas,
        up_cooldown_s=settings.up_cooldown_s,
        down_cooldown_s=settings.down_cooldown_s,
        down_stabilisation_s=settings.down_stabilisation_s,
        max_step_up=settings.max_step_up,
        max_step_down=settings.max_step_down,
    )


def live_counts(contexts: list[ScalingContext], guards: GuardConfig | None = None) -> list[int]:
    """Each tick's count under a ScalerController set up as `services.scaler.server` sets it up
    from the default settings (within the recording's bounds)."""
    settings = ScalerSettings(min_replicas=MIN_REPLICAS, max_replicas=MAX_REPLICAS)

    async def run() -> list[int]:
        runtime, clock = CountingRuntime(), Clock()
        for i in range(contexts[0].current_replicas):
            await runtime.start(f"adopted-{i}")
        controller = ScalerController(
            runtime,
            Drained(),
            guards or settings_guards(settings),
            policy=settings.policy,
            policy_parameters=settings.parsed_policy_parameters(),
            slo_s=contexts[0].slo_s,
            policy_file=settings.policy_file,
            clock=clock,
        )
        controller.observer = ReplayObserver(contexts)  # type: ignore[assignment]
        await controller.adopt()
        counts = []
        for context in contexts:
            clock.now = context.now
            await controller.tick()
            await asyncio.sleep(0)  # the retirements the tick began run
            counts.append(len(controller.active()))
        return counts

    return asyncio.run(run())


def test_eval_and_live_controller_decide_identically() -> None:
    contexts = recorded()
    live = live_counts(contexts)
    evaluated = replay(
        contexts,
        PolicySpec("learned"),
        EnvConfig(min_replicas=MIN_REPLICAS, max_replicas=MAX_REPLICAS),
    )
    assert evaluated == live
    # The sequence exercises the whole path: scaling both ways, in steps the guards cap.
    steps = [b - a for a, b in zip([contexts[0].current_replicas, *live], live, strict=False)]
    assert max(steps) == ScalerSettings.max_step_up
    assert min(steps) == -ScalerSettings.max_step_down


def test_the_sequence_tells_guarded_decisions_from_bounds_only_ones() -> None:
    """Bounds alone (what the evaluator once applied) decide otherwise on this sequence, so the
    identity above holds because both sides run the live guards."""
    contexts = recorded()
    bounds_only = live_counts(contexts, GuardConfig(MIN_REPLICAS, MAX_REPLICAS))
    assert bounds_only != live_counts(contexts)


def test_the_sequence_exercises_the_stabilisation_window() -> None:
    """Without the live scale-down stabilisation window the learned policy's proposals dip and
    come back on this sequence, and the count follows them down and straight back up; with it
    (as both sides above run) the count only comes down."""
    contexts = recorded()
    settings = ScalerSettings(min_replicas=MIN_REPLICAS, max_replicas=MAX_REPLICAS)
    assert settings.down_stabilisation_s > 0
    without = live_counts(contexts, settings_guards(replace(settings, down_stabilisation_s=0.0)))
    live = live_counts(contexts)

    def reversals(counts: list[int]) -> int:
        moves = [b - a for a, b in zip(counts, counts[1:], strict=False) if b != a]
        return sum(1 for a, b in zip(moves, moves[1:], strict=False) if a < 0 < b)

    assert reversals(without) > 0
    assert reversals(live) == 0
