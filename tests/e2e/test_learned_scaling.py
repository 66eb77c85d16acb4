"""End to end: the live scaler, driven by the shipped learned policy, scales the real local stack
up under load and back down after it, and no request fails on the way (scale-down drains first).

Workers run the default model padded to the shipped simulator profile's t(b)
(`--worker-service-profile`), so one worker cannot serve the load, the policy's decisions are
about real capacity, and that capacity is the profile's on any machine: with `--worker-slowdown`
it scaled with the machine's own speed, and a slower CI machine shed requests. Cooldowns are
short so the whole test takes about a minute."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from harness.stack import LocalStack
from services.scaler.planner import ServiceProfile
from services.worker.models import DEFAULT_MODEL
from tideserve_learning.sim.env import DEFAULT_PROFILE
from tideserve_tools.loadgen import arrival_times, open_loop

pytestmark = pytest.mark.integration

SLO_MS = 500.0
LOAD_S = 16


async def _load_and_watch(stack: LocalStack, rate: float) -> tuple[int, dict[str, int]]:
    """Drive `rate` req/s for LOAD_S seconds; return (most workers seen, failed requests by
    status)."""
    most = 0

    async def watch() -> None:
        nonlocal most
        while True:
            status = await asyncio.to_thread(stack.status)
            most = max(most, status.ready_replicas + status.starting_replicas)
            await asyncio.sleep(0.5)

    watcher = asyncio.create_task(watch())
    times = arrival_times([rate] * LOAD_S, seed=1)
    result = await open_loop(stack.address("batcher"), DEFAULT_MODEL, times=times)
    watcher.cancel()
    return most, result.errors


def test_learned_policy_scales_up_under_load_and_back_down(
    model_repository: Path, tmp_path: Path
) -> None:
    profile = ServiceProfile.load(DEFAULT_PROFILE)
    args = ["--policy", "learned", "--profile", str(DEFAULT_PROFILE), "--slo-ms", str(SLO_MS),
            "--min-replicas", "1", "--max-replicas", "3", "--tick-s", "0.5",
            "--up-cooldown-s", "1", "--down-cooldown-s", "2", "--max-step-down", "1",
            "--worker-threads", "1", "--worker-device", "cpu",
            "--worker-service-profile", str(DEFAULT_PROFILE),
            "--drain-timeout-s", "10"]
    stack = LocalStack(model_repository, tmp_path / "logs", args).start()
    try:
        stack.wait_ready_workers(1)
        # Idle: no training trace goes quiet, so the HPA rule decides, and the status says so.
        time.sleep(1.5)
        assert "no arrivals" in stack.status().fallback_reason
        # 1.3 workers' worth of SLO capacity: one is not enough for the SLO, two are. It stays
        # below one worker's peak throughput (77/s in batches of 64 on the profile's line), so
        # the backlog of the seconds before a second worker serves stays within the batcher's
        # queue bound: at 1.6x a slower machine's later scale-up filled its 256 rows, and that
        # shedding is the overload tests' subject, not this one's.
        rate = 1.3 * profile.rate_within_slo(SLO_MS / 1e3)
        most, failed = asyncio.run(_load_and_watch(stack, rate))
        assert most >= 2, "the learned policy did not scale up under load"
        assert failed == {}
        # Once the load stops the HPA rule decides (no arrivals); its 30 s scale-down
        # stabilisation window holds the count for that long.
        deadline = time.monotonic() + 60
        while (status := stack.status()).ready_replicas + status.starting_replicas > 1:
            assert time.monotonic() < deadline, f"did not scale back down after the load: {status}"
            time.sleep(0.5)
        assert status.policy == "learned"
        assert any(d.applied_replicas < d.current_replicas for d in status.recent_decisions)
    finally:
        stack.stop()
