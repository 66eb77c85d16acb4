"""The live scaler's controller run against the simulator.

Evaluation, training checks and sim-to-real comparisons decide through `ScalerController.step`,
the step the live scaler's loop takes each tick: the policy (the learned one falling back to its
HPA rule where it is not trusted, and on a cluster without traffic), then the guards (cooldowns,
steps) and the bounds. Only what is around it is simulated: the clock (the simulator's seconds),
the runtime (workers are counts; the simulator models their cold start) and the drain (a fluid
model holds no batch at a worker). The guards and the fallback's HPA target are the live scaler's
defaults (`services.scaler.settings.ScalerSettings`), so what is evaluated is what runs.
"""

from __future__ import annotations

import asyncio
import builtins
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from services.scaler.context import ScalingContext, ScalingPolicy
from services.scaler.controller import ScalerController
from services.scaler.guards import GuardConfig
from services.scaler.runtime import ManagedWorker
from tideserve_learning.sim import traces
from tideserve_learning.sim.env import EnvConfig, EpisodeLog, ServingClusterEnv, live_guards


@dataclass(frozen=True)
class PolicySpec:
    """What the controller runs: a registered policy with its parameters (for `learned`, those of
    its HPA fallback: none gives the live default) and, for `learned`, its policy file. `policy`
    runs that object instead (a rule outside the registry, e.g. a benchmark's oracle)."""

    name: str = "hpa"
    parameters: dict[str, float] = field(default_factory=dict)
    policy_file: str = ""
    policy: ScalingPolicy | None = None


class SimulatedClock:
    """The controller's clock: the simulator's current second."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class SimulatedRuntime:
    """A `WorkerRuntime` whose workers are only counted: the simulator starts and stops them."""

    name = "simulated"

    def __init__(self, clock: SimulatedClock) -> None:
        self.clock = clock
        self.running: dict[str, ManagedWorker] = {}
        self._ids = itertools.count()

    async def start(self, worker_id: str) -> ManagedWorker:
        worker = ManagedWorker(worker_id, f"sim-{next(self._ids)}", started_unix=self.clock())
        self.running[worker_id] = worker
        return worker

    async def stop(self, worker: ManagedWorker, grace_s: float) -> None:
        self.running.pop(worker.worker_id, None)

    async def list(self) -> builtins.list[ManagedWorker]:
        return list(self.running.values())

    async def reap(self) -> builtins.list[ManagedWorker]:
        return []

    async def close(self) -> None:
        self.running.clear()


class InstantDrainer:
    """The fluid model keeps no batch at a worker, so a drain is done at once."""

    async def drain(self, worker_id: str, wait_s: float) -> bool:
        return True


class SimulatedScaler:
    """A ScalerController with the live defaults on a simulated clock and runtime. `guards`
    replaces the live default guards (to mirror a scaler started with other settings)."""

    def __init__(
        self, spec: PolicySpec, config: EnvConfig, guards: GuardConfig | None = None
    ) -> None:
        self.clock = SimulatedClock()
        self.runtime = SimulatedRuntime(self.clock)
        self.controller = ScalerController(
            self.runtime,
            InstantDrainer(),
            guards or live_guards(config.min_replicas, config.max_replicas),
            policy=spec.name,
            policy_parameters=spec.parameters,
            slo_s=config.slo_s,
            policy_file=spec.policy_file,
            clock=self.clock,
        )
        if spec.policy is not None:
            self.controller.policy = spec.policy
        self.fallbacks = 0

    async def adopt(self, replicas: int) -> None:
        """Start with `replicas` workers already running, as a restarted scaler adopts them."""
        for i in range(replicas):
            await self.runtime.start(f"worker-sim-{i}")
        await self.controller.adopt()

    @property
    def replicas(self) -> int:
        return len(self.controller.active())

    async def step(self, context: ScalingContext) -> int:
        """One tick of the controller on `context`; returns the count now running."""
        self.clock.now = context.now
        await self.controller.step(context)
        if self.controller.fallback_reason:
            self.fallbacks += 1
        # Let the retirements the step began (drain, then stop) finish.
        await asyncio.sleep(0)
        return self.replicas


@dataclass
class Episode:
    log: EpisodeLog
    fallbacks: int  # decisions the learned policy left to its fallback rule
    contexts: list[ScalingContext]  # what the controller decided on, each second


def run_episode(
    key: tuple[str, int],
    spec: PolicySpec,
    config: EnvConfig,
    *,
    preload: Iterable[traces.Trace] = (),
    options: dict[str, Any] | None = None,
) -> Episode:
    """The trace `key` (reset with its seed) under the live controller running `spec`.
    `preload`: traces to use instead of generated ones (an operator's, a compressed one)."""
    env = ServingClusterEnv(config, trace_keys=[key], preloaded=list(preload))
    return asyncio.run(drive(env, spec, key[1], options))


async def drive(
    env: ServingClusterEnv,
    spec: PolicySpec,
    seed: int,
    options: dict[str, Any] | None = None,
    guards: GuardConfig | None = None,
) -> Episode:
    """Reset `env` with `seed` (and `options`, e.g. given arrivals) and run its trace to the end
    under the live controller (with `guards` instead of the live defaults, if given)."""
    env.reset(seed=seed, options=options)
    scaler = SimulatedScaler(spec, env.config, guards)
    await scaler.adopt(env.replicas)
    truncated, contexts = False, []
    while not truncated:
        contexts.append(env.scaling_context())
        replicas = await scaler.step(contexts[-1])
        _, _, _, truncated, _ = env.step_to(replicas)
    return Episode(env.log, scaler.fallbacks, contexts)


def replay(contexts: Iterable[ScalingContext], spec: PolicySpec, config: EnvConfig) -> list[int]:
    """The counts the live controller runs after each of `contexts`, a recorded observation
    sequence. Each context's replica counts are replaced by those the controller runs then
    (ready: at most the recorded ready), so its own decisions carry through the sequence."""

    async def run() -> list[int]:
        contexts_list = list(contexts)
        scaler = SimulatedScaler(spec, config)
        await scaler.adopt(contexts_list[0].current_replicas if contexts_list else 0)
        counts = []
        for context in contexts_list:
            counts.append(await scaler.step(as_seen_by(context, scaler.replicas)))
        return counts

    return asyncio.run(run())


def as_seen_by(context: ScalingContext, replicas: int) -> ScalingContext:
    """`context` with the replica counts of a controller running `replicas` workers."""
    return replace(
        context, current_replicas=replicas, ready_replicas=min(context.ready_replicas, replicas)
    )
