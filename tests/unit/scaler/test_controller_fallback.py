"""The learned policy's guardrails in the controller: a missing policy file runs the HPA rule with
a fallback reason in the status; an observation outside the trained range hands that one decision
to the HPA rule; guards (bounds) hold whatever the learned policy proposes. Fakes stand in for the
runtime and the balancers, as in test_controller.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

from services.scaler.controller import ScalerController
from services.scaler.guards import GuardConfig
from services.scaler.planner import ServiceProfile
from services.scaler.runtime import ManagedWorker
from tideserve.v1 import cluster_pb2
from tideserve_learning.sim.env import DEFAULT_PROFILE

PROFILE = ServiceProfile.load(DEFAULT_PROFILE)
SLO_S = 0.5


class FakeRuntime:
    name = "fake"

    def __init__(self) -> None:
        self.running: dict[str, ManagedWorker] = {}

    async def start(self, worker_id: str) -> ManagedWorker:
        worker = ManagedWorker(worker_id, str(len(self.running)), float(len(self.running)))
        self.running[worker_id] = worker
        return worker

    async def stop(self, worker: ManagedWorker, grace_s: float) -> None:
        self.running.pop(worker.worker_id, None)

    async def list(self) -> list[ManagedWorker]:
        return list(self.running.values())

    async def reap(self) -> list[ManagedWorker]:
        return []

    async def close(self) -> None:
        pass


class FakeDrainer:
    async def drain(self, worker_id: str, wait_s: float) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def controller(policy_file: str = "", max_replicas: int = 6) -> ScalerController:
    return ScalerController(
        FakeRuntime(), FakeDrainer(), GuardConfig(min_replicas=2, max_replicas=max_replicas),
        policy="learned", policy_parameters={"target": 0.6}, slo_s=SLO_S,
        policy_file=policy_file, profile=PROFILE, clock=Clock(),
    )


def snapshot(
    c: ScalerController, t: float, rows: int, rate: float, queued: int = 0
) -> cluster_pb2.ClusterSnapshot:
    """Every worker of `c` READY, `rows` dispatched so far, batchers seeing `rate` requests/s and
    `queued` requests waiting."""
    snap = cluster_pb2.ClusterSnapshot(timestamp_unix=t, dispatched_rows=rows)
    for worker_id in c.workers:
        snap.workers.add(worker_id=worker_id, phase=cluster_pb2.WorkerState.READY)
    snap.frontends.add(batcher_id="b", arrival_rate=rate, queued_requests=queued,
                       latency_p99_seconds=0.3)
    return snap


async def tick(c: ScalerController) -> None:
    await c.tick()
    await asyncio.sleep(0)
    c.clock.now += 1.0  # type: ignore[attr-defined]


async def two_ready(
    c: ScalerController, rate: float, utilisation: float, queued: int = 0
) -> None:
    """Start the minimum, mark it ready, then feed two snapshots at `rate` and `utilisation`."""
    await tick(c)
    rows_per_s = utilisation * 2 * PROFILE.peak_throughput
    c.observe(snapshot(c, 10.0, 0, rate))
    c.observe(snapshot(c, 11.0, round(rows_per_s), rate, queued))


async def test_missing_policy_file_runs_hpa_and_says_so(tmp_path: Path) -> None:
    c = controller(policy_file=str(tmp_path / "gone.zip"))

    assert "missing" in c.fallback_reason
    assert "missing" in c.status("fake").fallback_reason
    await two_ready(c, rate=60.0, utilisation=0.9)
    await tick(c)

    # HPA: ceil(2 ready x 0.9 / 0.6) = 3.
    decision = c.decisions[-1]
    assert (decision.current_replicas, decision.proposed_replicas) == (2, 3)
    assert "fallback" in decision.reason
    assert c.status("fake").policy == "learned"


async def test_out_of_range_observation_hands_one_decision_to_hpa() -> None:
    c = controller()
    assert c.fallback_reason == ""

    # A queue far beyond anything seen in training; the queue is not averaged over windows, so
    # only this decision is affected.
    await two_ready(c, rate=60.0, utilisation=0.9, queued=10**7)
    await tick(c)

    assert "outside the trained range" in c.status("fake").fallback_reason
    decision = c.decisions[-1]
    assert decision.proposed_replicas == 3
    assert "fallback" in decision.reason

    c.observe(snapshot(c, 12.0, 2 * round(0.9 * 2 * PROFILE.peak_throughput), 60.0))
    await tick(c)
    assert c.fallback_reason == ""


async def test_guards_bound_the_learned_policy() -> None:
    c = controller(max_replicas=3)
    await two_ready(c, rate=PROFILE.rate_within_slo(SLO_S) * 8, utilisation=1.0)
    for _ in range(3):
        await tick(c)
    assert c.fallback_reason == ""
    assert len(c.active()) == 3


async def test_set_policy_can_select_learned_and_leave_it() -> None:
    c = controller()
    c.set_policy("hpa", {"target": 0.5})
    assert c.status("fake").policy == "hpa"
    c.set_policy("learned", {})
    assert c.status("fake").policy == "learned"
    assert c.fallback_reason == ""


async def test_nan_arrival_rate_hands_one_decision_to_hpa_and_scaling_goes_on() -> None:
    c = controller()
    await two_ready(c, rate=60.0, utilisation=0.9)
    rows = round(0.9 * 2 * PROFILE.peak_throughput)
    c.observe(snapshot(c, 12.0, 2 * rows, float("nan")))
    await tick(c)

    status = c.status("fake")
    assert "arrival_rate=nan is not a finite number" in status.fallback_reason
    decision = c.decisions[-1]
    assert decision.proposed_replicas == 3, "HPA: ceil(2 ready x 0.9 / 0.6)"
    assert "fallback" in decision.reason

    # The NaN is not kept in the policy's 30 s windows: the next finite snapshot is the policy's.
    c.observe(snapshot(c, 13.0, 3 * rows, 60.0))
    await tick(c)
    assert c.status("fake").fallback_reason == ""
