"""ScalerController with a fake WorkerRuntime and a fake Drainer: the reconcile loop (min
replicas, replacing dead workers), operator overrides (pin, bounds, pause, policy, drain) and
scale-down that drains before it stops. The policies and guards themselves are tested in
test_scaling_policies.py and test_scaling_guards.py."""

from __future__ import annotations

import asyncio
import itertools
import math

import pytest

from services.scaler.controller import DEFAULT_REPLICA_CEILING, ScalerController
from services.scaler.guards import GuardConfig
from services.scaler.runtime import ManagedWorker
from tideserve.errors import FailedPrecondition, InvalidArgument, NotFound
from tideserve.v1 import cluster_pb2

MIN, MAX = 2, 5


class FakeClock:
    def __init__(self, now: float = 500.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeRuntime:
    """Starts workers instantly with increasing start times; `kill` makes one die."""

    name = "fake"

    def __init__(self, events: list[tuple[str, str]]) -> None:
        self.events = events
        self.running: dict[str, ManagedWorker] = {}
        self.dead: list[ManagedWorker] = []
        self.stop_graces: list[float] = []
        self.closed = False
        self._pids = itertools.count(1000)

    async def start(self, worker_id: str) -> ManagedWorker:
        pid = next(self._pids)
        worker = ManagedWorker(worker_id, str(pid), started_unix=float(pid))
        self.running[worker_id] = worker
        self.events.append(("start", worker_id))
        return worker

    async def stop(self, worker: ManagedWorker, grace_s: float) -> None:
        self.running.pop(worker.worker_id)
        self.stop_graces.append(grace_s)
        self.events.append(("stop", worker.worker_id))

    async def list(self) -> list[ManagedWorker]:
        return list(self.running.values())

    async def reap(self) -> list[ManagedWorker]:
        dead, self.dead = self.dead, []
        return dead

    async def close(self) -> None:
        self.closed = True

    def kill(self, worker_id: str) -> None:
        self.dead.append(self.running.pop(worker_id))


class FakeDrainer:
    def __init__(self, events: list[tuple[str, str]]) -> None:
        self.events = events
        self.result = True
        self.waits: list[float] = []

    async def drain(self, worker_id: str, wait_s: float) -> bool:
        self.events.append(("drain", worker_id))
        self.waits.append(wait_s)
        await asyncio.sleep(0)
        return self.result


class Rig:
    def __init__(
        self,
        replicas: int = MIN,
        guards: GuardConfig | None = None,
        replica_ceiling: int = DEFAULT_REPLICA_CEILING,
    ) -> None:
        self.events: list[tuple[str, str]] = []
        self.runtime = FakeRuntime(self.events)
        self.drainer = FakeDrainer(self.events)
        self.clock = FakeClock()
        self.controller = ScalerController(
            self.runtime,
            self.drainer,
            guards or GuardConfig(min_replicas=MIN, max_replicas=MAX),
            policy="static",
            policy_parameters={"replicas": replicas},
            drain_timeout_s=7.0,
            stop_grace_s=3.0,
            replica_ceiling=replica_ceiling,
            clock=self.clock,
        )

    async def tick(self) -> None:
        await self.controller.tick()
        for _ in range(10):
            await asyncio.sleep(0)

    def mark_ready(self, *worker_ids: str) -> None:
        ids = worker_ids or tuple(self.controller.workers)
        snapshot = cluster_pb2.ClusterSnapshot()
        for worker_id in ids:
            snapshot.workers.add(
                worker_id=worker_id,
                address=f"{worker_id}:7000",
                phase=cluster_pb2.WorkerState.READY,
            )
        self.controller.observe(snapshot)

    def states(self) -> dict[str, str]:
        return {w.worker_id: w.state for w in self.controller.workers.values()}

    def started(self) -> list[str]:
        return [worker_id for action, worker_id in self.events if action == "start"]


@pytest.fixture
def rig() -> Rig:
    return Rig()


async def test_first_tick_starts_min_replicas(rig: Rig) -> None:
    await rig.tick()

    assert len(rig.runtime.running) == MIN
    assert set(rig.states().values()) == {"starting"}
    assert rig.controller.desired == MIN
    assert rig.controller.started_total == MIN


async def test_policy_below_min_is_held_at_min() -> None:
    rig = Rig(replicas=0)

    await rig.tick()
    await rig.tick()

    assert len(rig.runtime.running) == MIN
    assert rig.controller.stopped_total == 0


async def test_workers_become_ready_once_registered(rig: Rig) -> None:
    await rig.tick()
    first, second = rig.controller.workers

    rig.mark_ready(first)
    await rig.tick()

    assert rig.states() == {first: "ready", second: "starting"}


async def test_dead_worker_is_replaced(rig: Rig) -> None:
    await rig.tick()
    victim = next(iter(rig.controller.workers))

    rig.runtime.kill(victim)
    await rig.tick()

    assert victim not in rig.controller.workers
    assert len(rig.controller.workers) == MIN
    assert len(rig.runtime.running) == MIN
    assert rig.controller.started_total == MIN + 1


async def test_steady_state_changes_nothing(rig: Rig) -> None:
    await rig.tick()
    events = list(rig.events)
    decisions = len(rig.controller.decisions)

    await rig.tick()

    assert rig.events == events
    assert len(rig.controller.decisions) == decisions


async def test_scale_to_pins_the_count_and_release_returns_to_policy(rig: Rig) -> None:
    await rig.tick()
    rig.controller.scale_to(4)
    await rig.tick()
    assert len(rig.runtime.running) == 4
    assert rig.controller.decisions[-1].reason == "pinned by operator; up by 2"

    rig.mark_ready()
    rig.controller.scale_to(None)
    await rig.tick()

    assert len(rig.runtime.running) == MIN
    assert rig.controller.stopped_total == 2


async def test_scale_to_outside_bounds_is_refused(rig: Rig) -> None:
    for replicas in (MIN - 1, MAX + 1):
        with pytest.raises(InvalidArgument, match="outside bounds"):
            rig.controller.scale_to(replicas)
    assert rig.controller.pinned is None


async def test_scale_down_drains_before_stopping(rig: Rig) -> None:
    await rig.tick()
    rig.controller.scale_to(3)
    await rig.tick()
    rig.mark_ready()
    rig.controller.scale_to(2)
    rig.events.clear()

    await rig.tick()

    assert len(rig.events) == 2
    (drain, drained_id), (stop, stopped_id) = rig.events
    assert (drain, stop) == ("drain", "stop")
    assert drained_id == stopped_id
    assert rig.drainer.waits == [7.0]
    assert rig.runtime.stop_graces == [3.0]
    assert drained_id not in rig.controller.workers


async def test_scale_down_retires_starting_workers_then_the_newest(rig: Rig) -> None:
    await rig.tick()
    rig.controller.scale_to(5)
    await rig.tick()
    oldest, second, third, fourth, newest = rig.started()
    rig.mark_ready(oldest, second, third, newest)
    await rig.tick()
    assert rig.states()[fourth] == "starting"

    rig.controller.scale_to(3)
    await rig.tick()

    assert set(rig.runtime.running) == {oldest, second, third}


async def test_drain_timeout_still_stops_the_worker(rig: Rig) -> None:
    await rig.tick()
    rig.controller.scale_to(3)
    await rig.tick()
    rig.drainer.result = False
    rig.controller.scale_to(2)

    await rig.tick()

    assert len(rig.runtime.running) == 2
    assert rig.controller.stopped_total == 1


async def test_pause_holds_the_count_but_still_replaces_dead_workers() -> None:
    rig = Rig(replicas=MIN)
    await rig.tick()
    rig.controller.paused = True
    rig.controller.set_policy("static", {"replicas": 4})

    await rig.tick()
    assert len(rig.runtime.running) == MIN, "paused: the policy's new proposal is not applied"

    rig.runtime.kill(next(iter(rig.runtime.running)))
    await rig.tick()
    assert len(rig.runtime.running) == MIN

    rig.controller.paused = False
    await rig.tick()
    assert len(rig.runtime.running) == 4


async def test_set_bounds_validates_and_clamps_the_pin(rig: Rig) -> None:
    rig.controller.scale_to(5)

    rig.controller.set_bounds(1, 3)

    assert rig.controller.pinned == 3
    assert rig.controller.status("fake").max_replicas == 3
    with pytest.raises(InvalidArgument, match="max_replicas"):
        rig.controller.set_bounds(4, 2)
    assert rig.controller.guard_config.max_replicas == 3


async def test_raised_min_bound_applies_at_the_next_tick() -> None:
    rig = Rig(replicas=0)
    await rig.tick()

    rig.controller.set_bounds(4, 5)
    await rig.tick()

    assert len(rig.runtime.running) == 4


async def test_set_policy_refuses_unknown_names_and_parameters(rig: Rig) -> None:
    with pytest.raises(InvalidArgument, match="unknown scaling policy"):
        rig.controller.set_policy("magic", {})
    with pytest.raises(InvalidArgument, match="bad parameters"):
        rig.controller.set_policy("static", {"nonsense": 1.0})
    assert rig.controller.policy.name == "static"


async def test_drain_worker_drains_stops_and_is_replaced(rig: Rig) -> None:
    await rig.tick()
    victim = next(iter(rig.controller.workers))

    response = await rig.controller.drain_worker(victim)

    assert response.drained
    assert rig.events[-2:] == [("drain", victim), ("stop", victim)]
    await rig.tick()
    assert len(rig.runtime.running) == MIN
    assert victim not in rig.runtime.running


async def test_drain_worker_refuses_unknown_and_already_draining(rig: Rig) -> None:
    await rig.tick()
    with pytest.raises(NotFound, match="ghost"):
        await rig.controller.drain_worker("ghost")
    worker = next(iter(rig.controller.workers.values()))
    worker.state = "draining"

    with pytest.raises(FailedPrecondition, match="already draining"):
        await rig.controller.drain_worker(worker.worker_id)


async def test_status_reports_counts_and_overrides(rig: Rig) -> None:
    await rig.tick()
    first, _ = rig.controller.workers
    rig.mark_ready(first)
    await rig.tick()
    rig.controller.scale_to(3)
    rig.controller.paused = True

    status = rig.controller.status("fake")

    assert status.desired_replicas == MIN
    assert (status.ready_replicas, status.starting_replicas) == (1, 1)
    assert (status.min_replicas, status.max_replicas) == (MIN, MAX)
    assert status.policy == "static"
    assert dict(status.policy_parameters) == {"replicas": MIN}
    assert status.paused
    assert status.HasField("pinned_replicas")
    assert status.pinned_replicas == 3
    assert status.runtime == "fake"
    assert status.recent_decisions[-1].applied_replicas == MIN

    rig.controller.scale_to(None)
    assert not rig.controller.status("fake").HasField("pinned_replicas")


async def test_list_workers_includes_addresses_from_the_snapshot(rig: Rig) -> None:
    await rig.tick()
    first, second = rig.controller.workers
    rig.mark_ready(first)

    listed = {w.worker_id: w for w in rig.controller.list_workers()}

    assert set(listed) == {first, second}
    assert listed[first].address == f"{first}:7000"
    assert listed[second].address == ""
    assert listed[first].runtime_id == rig.runtime.running[first].runtime_id


async def test_adopt_takes_over_running_workers(rig: Rig) -> None:
    await rig.runtime.start("survivor-1")
    await rig.runtime.start("survivor-2")

    await rig.controller.adopt()
    await rig.tick()

    assert set(rig.controller.workers) == {"survivor-1", "survivor-2"}
    assert rig.started() == ["survivor-1", "survivor-2"], "no extra worker started"


async def test_close_with_stop_workers_drains_and_stops_all(rig: Rig) -> None:
    await rig.tick()

    await rig.controller.close(stop_workers=True)

    assert rig.runtime.running == {}
    assert [action for action, _ in rig.events].count("drain") == MIN
    assert rig.runtime.closed


async def test_close_without_stop_leaves_workers_running(rig: Rig) -> None:
    await rig.tick()

    await rig.controller.close(stop_workers=False)

    assert len(rig.runtime.running) == MIN
    assert rig.runtime.closed


# The live scaler's defaults: +2 / -1 per decision, 2 s / 10 s cooldowns.
LIVE_GUARDS = GuardConfig(min_replicas=1, max_replicas=16, up_cooldown_s=2.0,
                          down_cooldown_s=10.0, max_step_up=2, max_step_down=1)
CEILING = 16


async def run_ticks(rig: Rig, seconds: int) -> list[int]:
    """Tick once a second for `seconds`, marking workers ready; the running count after each."""
    counts = []
    for _ in range(seconds):
        await rig.tick()
        rig.mark_ready()
        counts.append(len(rig.runtime.running))
        rig.clock.now += 1.0
    return counts


def steps(counts: list[int]) -> list[int]:
    return [after - before for before, after in itertools.pairwise(counts)]


@pytest.mark.parametrize("value", [CEILING + 1, 10_000, 2**32 - 1])
async def test_nothing_an_operator_sends_goes_above_the_ceiling(value: int) -> None:
    rig = Rig(replicas=1, guards=LIVE_GUARDS, replica_ceiling=CEILING)
    for call in (lambda: rig.controller.set_bounds(1, value),
                 lambda: rig.controller.set_bounds(value, value),
                 lambda: rig.controller.scale_to(value)):
        with pytest.raises(InvalidArgument, match=rf"{value} is above the replica ceiling 16.*"
                                                  "replica_ceiling"):
            call()
    assert (rig.controller.guard_config.min_replicas,
            rig.controller.guard_config.max_replicas) == (1, 16)
    assert rig.controller.pinned is None


@pytest.mark.parametrize(
    ("low", "high", "message"),
    [(-1, 4, "min_replicas must be >= 0"), (1, -1, "max_replicas must be >= 0"),
     (0, 0, "max_replicas must be >= 1"), (5, 3, "min_replicas 5 is above max_replicas 3")],
)
async def test_set_bounds_refuses_bad_pairs_and_keeps_the_old_ones(
    low: int, high: int, message: str
) -> None:
    rig = Rig()
    with pytest.raises(InvalidArgument, match=message):
        rig.controller.set_bounds(low, high)
    assert (rig.controller.guard_config.min_replicas,
            rig.controller.guard_config.max_replicas) == (MIN, MAX)


async def test_scale_to_refuses_a_negative_count(rig: Rig) -> None:
    with pytest.raises(InvalidArgument, match="replicas must be >= 0"):
        rig.controller.scale_to(-1)


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
async def test_set_policy_refuses_parameters_that_are_not_finite(rig: Rig, value: float) -> None:
    with pytest.raises(InvalidArgument, match="'replicas' must be a finite number"):
        rig.controller.set_policy("static", {"replicas": value})
    assert rig.controller.policy_parameters == {"replicas": MIN}


def test_bounds_above_the_ceiling_are_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="above the replica ceiling 4"):
        Rig(guards=GuardConfig(min_replicas=1, max_replicas=5), replica_ceiling=4)


async def test_a_pin_is_approached_through_the_step_and_cooldown() -> None:
    rig = Rig(replicas=1, guards=LIVE_GUARDS, replica_ceiling=CEILING)
    await run_ticks(rig, 1)
    rig.controller.scale_to(CEILING)

    counts = await run_ticks(rig, 20)

    # At most +2 per decision and one decision per 2 s up cooldown (the first tick after the pin
    # is still within the cooldown of the worker started before it).
    assert counts[:16] == [1, 3, 3, 5, 5, 7, 7, 9, 9, 11, 11, 13, 13, 15, 15, 16]
    assert counts[16:] == [CEILING] * 4
    assert rig.controller.decisions[-1].reason == "pinned by operator; up by 1"
    assert rig.controller.status("fake").desired_replicas == CEILING


async def test_raised_bounds_are_approached_a_step_at_a_time() -> None:
    rig = Rig(replicas=1, guards=LIVE_GUARDS, replica_ceiling=CEILING)
    await run_ticks(rig, 1)

    rig.controller.set_bounds(CEILING, CEILING)
    counts = await run_ticks(rig, 20)

    assert counts[-1] == CEILING
    assert max(steps([1, *counts])) == 2


async def test_narrowed_bounds_come_down_one_step_per_down_cooldown() -> None:
    rig = Rig(replicas=6, guards=LIVE_GUARDS, replica_ceiling=CEILING)
    await run_ticks(rig, 10)
    assert len(rig.runtime.running) == 6

    rig.controller.set_bounds(1, 3)
    counts = await run_ticks(rig, 40)

    assert counts[-1] == 3
    assert min(steps([6, *counts])) == -1
    assert rig.controller.stopped_total == 3


async def test_pause_keeps_its_count_while_the_guards_hold_a_replacement() -> None:
    rig = Rig(replicas=4, guards=LIVE_GUARDS, replica_ceiling=CEILING)
    await run_ticks(rig, 6)
    rig.controller.paused = True
    victims = list(rig.runtime.running)[:3]
    for victim in victims:
        rig.runtime.kill(victim)

    counts = await run_ticks(rig, 6)

    assert counts[0] == 3, "one replacement step of +2"
    assert counts[-1] == 4
    assert rig.controller.status("fake").desired_replicas == 4
