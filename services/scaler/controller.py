"""The scaler's control loop, without gRPC: each tick it reconciles the workers a runtime runs
with the count that the policy proposes and the guards allow, honouring operator overrides.

Scale-down never drops a request: a worker leaving is first drained through the balancer (it
gets no new batches and finishes what it holds), and only then stopped by its runtime.

Whatever asks for a count (the policy, an operator's pin, the count held while paused), the
guards decide how far to move towards it each tick, so an operator's request is approached through
the same cooldowns and steps as the policy's. No operator action can go above the replica ceiling,
which only the scaler's settings set: a stolen admin token cannot make it start thousands of
workers.

A policy with a fallback (the learned one) reports why it is not deciding itself in
`fallback_reason`; the controller logs each change of it, puts it in the recorded decision and in
the admin status."""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from services.scaler.context import ScalingContext
from services.scaler.guards import GuardConfig, Guards
from services.scaler.observe import ClusterObserver
from services.scaler.planner import ServiceProfile
from services.scaler.policies import ScalingPolicy, create_policy
from services.scaler.runtime import ManagedWorker, WorkerRuntime
from tideserve.errors import FailedPrecondition, InvalidArgument, NotFound
from tideserve.v1 import cluster_pb2

logger = logging.getLogger(__name__)

DECISIONS_KEPT = 50
DEFAULT_REPLICA_CEILING = 64
# Where an operator raises the ceiling: named in every refusal so the fix is one step away.
CEILING_SETTING = "replica_ceiling (--replica-ceiling, TIDESERVE_SCALER_REPLICA_CEILING)"


class Drainer(Protocol):
    async def drain(self, worker_id: str, wait_s: float) -> bool:
        """Drain a worker through every balancer; True once it holds no batch."""
        ...


class ScalerController:
    def __init__(
        self,
        runtime: WorkerRuntime,
        drainer: Drainer,
        guards: GuardConfig,
        *,
        policy: str = "hpa",
        policy_parameters: dict[str, float] | None = None,
        slo_s: float = 0.1,
        policy_file: str = "",
        profile: ServiceProfile | None = None,
        drain_timeout_s: float = 30.0,
        stop_grace_s: float = 10.0,
        replica_ceiling: int = DEFAULT_REPLICA_CEILING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if guards.max_replicas > replica_ceiling:
            raise ValueError(
                f"max_replicas {guards.max_replicas} is above the replica ceiling {replica_ceiling}"
            )
        self.replica_ceiling = replica_ceiling
        self.runtime = runtime
        self.drainer = drainer
        self.guard_config = guards
        self.guards = Guards(guards)
        self.policy_parameters = dict(policy_parameters or {})
        # Where the learned policy is read from ("" = the shipped default).
        self.policy_file = policy_file
        self.policy: ScalingPolicy = self._create_policy(policy, self.policy_parameters)
        self.observer = ClusterObserver(slo_s, profile)
        self.drain_timeout_s = drain_timeout_s
        self.stop_grace_s = stop_grace_s
        self.clock = clock
        # The count being steered to (the proposal, pin or held count within the bounds); the
        # guards move the running count towards it a step at a time.
        self.desired = guards.min_replicas
        self.paused = False
        self.pinned: int | None = None
        self.fallback_reason = ""
        self._note_fallback()
        self.decisions: deque[cluster_pb2.ScalingDecision] = deque(maxlen=DECISIONS_KEPT)
        self.workers: dict[str, ManagedWorker] = {}
        self.snapshot = cluster_pb2.ClusterSnapshot()
        self._retiring: set[asyncio.Task] = set()
        self.started_total = 0
        self.stopped_total = 0
        # Recorded decisions by (policy, "up" | "down" | "hold"), for the metrics.
        self.decision_counts: Counter[tuple[str, str]] = Counter()

    # -- operator actions -------------------------------------------------------------------

    def set_policy(self, name: str, parameters: dict[str, float]) -> None:
        for key, value in parameters.items():
            if not math.isfinite(value):
                raise InvalidArgument(
                    f"policy parameter {key!r} must be a finite number, got {value}"
                )
        try:
            self.policy = self._create_policy(name, parameters)
        except (TypeError, ValueError) as error:
            raise InvalidArgument(str(error)) from error
        self.policy_parameters = dict(parameters)
        self.fallback_reason = ""
        self._note_fallback()
        logger.info("policy set", extra={"policy": name, "parameters": parameters})

    def scale_to(self, replicas: int | None) -> None:
        """Pin the count (None releases the pin back to the policy). The count is reached step
        by step through the guards, not started at once."""
        if replicas is not None:
            self._check_count("replicas", replicas)
            low, high = self.guard_config.min_replicas, self.guard_config.max_replicas
            if not low <= replicas <= high:
                raise InvalidArgument(
                    f"replicas {replicas} outside bounds {low}..{high}; change them with "
                    "SetBounds first"
                )
        self.pinned = replicas
        logger.info(
            "replicas pinned" if replicas is not None else "pin released",
            extra={"replicas": replicas},
        )

    def set_bounds(self, min_replicas: int, max_replicas: int) -> None:
        """New bounds for the policy and the pin; a count outside them is brought back step by
        step through the guards."""
        self._check_count("min_replicas", min_replicas)
        self._check_count("max_replicas", max_replicas)
        if max_replicas < 1:
            raise InvalidArgument(
                "max_replicas must be >= 1; to run no workers, set min_replicas 0 and ScaleTo 0"
            )
        if min_replicas > max_replicas:
            raise InvalidArgument(
                f"min_replicas {min_replicas} is above max_replicas {max_replicas}"
            )
        config = replace(self.guard_config, min_replicas=min_replicas, max_replicas=max_replicas)
        self.guard_config = config
        self.guards.config = config
        if self.pinned is not None:
            self.pinned = min(max(self.pinned, min_replicas), max_replicas)

    def _check_count(self, name: str, value: int) -> None:
        """A replica count from an operator: a whole number from 0 to the ceiling. A protobuf
        uint32 cannot be negative, but a client's -1 arrives as 4294967295, which this refuses."""
        if value < 0:
            raise InvalidArgument(f"{name} must be >= 0, got {value}")
        if value > self.replica_ceiling:
            raise InvalidArgument(
                f"{name} {value} is above the replica ceiling {self.replica_ceiling}, which no "
                f"admin call can raise; it is the scaler's setting {CEILING_SETTING}"
            )

    async def drain_worker(self, worker_id: str) -> cluster_pb2.DrainWorkerResponse:
        """Drain and stop one worker; the next tick replaces it if the count falls short."""
        worker = self.workers.get(worker_id)
        if worker is None:
            raise NotFound(f"scaler manages no worker {worker_id!r}")
        if worker.state in ("draining", "stopping"):
            raise FailedPrecondition(f"worker {worker_id!r} is already {worker.state}")
        await self._retire(worker)
        return cluster_pb2.DrainWorkerResponse(drained=True)

    # -- the loop ---------------------------------------------------------------------------

    def observe(self, snapshot: cluster_pb2.ClusterSnapshot) -> None:
        self.snapshot = snapshot
        self.observer.observe(snapshot)

    def active(self) -> list[ManagedWorker]:
        return [w for w in self.workers.values() if w.state in ("starting", "ready")]

    async def adopt(self) -> None:
        """Take over the workers the runtime already runs for us (after a scaler restart)."""
        for worker in await self.runtime.list():
            self.workers[worker.worker_id] = worker
        if self.workers:
            logger.info("adopted workers", extra={"workers": sorted(self.workers)})

    async def tick(self) -> None:
        """Measure, decide and reconcile: one turn of the live loop."""
        for dead in await self.runtime.reap():
            if self.workers.pop(dead.worker_id, None) is not None:
                logger.warning("worker died; will replace", extra={"worker_id": dead.worker_id})
        registered = {
            w.worker_id for w in self.snapshot.workers if w.phase == cluster_pb2.WorkerState.READY
        }
        for worker in self.workers.values():
            if worker.state == "starting" and worker.worker_id in registered:
                worker.state = "ready"
        active = self.active()
        ready = sum(1 for w in active if w.state == "ready")
        await self.step(self.observer.context(self.snapshot, self.clock(), len(active), ready))

    async def step(self, context: ScalingContext) -> int:
        """Decide on `context` and start or retire workers to the applied count; returns it.

        The live loop measures `context` from the balancer's snapshots; the simulator
        (`tideserve_learning.sim.scaler`) computes it, with a simulated runtime and clock, so an
        evaluation runs this very step rather than a copy of it."""
        active = self.active()
        current = len(active)
        applied = self.decide(context)
        for _ in range(applied - current):
            await self._start()
        if applied < current:
            # Workers still starting go first (they hold nothing), then the newest.
            victims = sorted(active, key=lambda w: (w.state == "ready", -w.started_unix))
            for worker in victims[: current - applied]:
                task = asyncio.create_task(self._retire(worker))
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)
        return applied

    def decide(self, context: ScalingContext) -> int:
        """The decision step, without I/O: what asks for a count (the operator's pin, the count
        held while paused, else the policy, which falls back to its rule where it is not
        trusted), then the guards (cooldowns and steps, timed by `context.now`) and the bounds.
        Returns the count to run from `context.current_replicas`; records any change."""
        current = context.current_replicas
        if self.pinned is not None:
            proposed, override = self.pinned, "pinned by operator"
        elif self.paused:
            proposed, override = self.desired, "paused"
        else:
            proposed, override = self.policy.decide(context), ""
        applied, reason = self.guards.apply(current, proposed, context.now)
        if override:
            reason = f"{override}; {reason}"
        elif self._note_fallback():
            reason = f"{reason}; fallback: {self.fallback_reason}"
        target = self.guards.bounded(proposed)
        if target != self.desired or applied != current:
            self._record(current, proposed, applied, reason, context)
        self.desired = target
        return applied

    def _create_policy(self, name: str, parameters: dict[str, float]) -> ScalingPolicy:
        extra = {"policy_file": self.policy_file} if name == "learned" and self.policy_file else {}
        return create_policy(name, **parameters, **extra)

    def _note_fallback(self) -> str:
        """Take the policy's current fallback reason ("" when it decides itself); log when it
        starts and stops falling back (not every tick it stays so)."""
        reason = str(getattr(self.policy, "fallback_reason", ""))
        if bool(reason) != bool(self.fallback_reason):
            if reason:
                logger.warning("policy falling back", extra={"policy": self.policy.name,
                                                             "fallback_reason": reason})
            else:
                logger.info("policy deciding again", extra={"policy": self.policy.name})
        self.fallback_reason = reason
        return reason

    def _record(
        self, current: int, proposed: int, applied: int, reason: str, context: ScalingContext
    ) -> None:
        inputs = {k: float(v) for k, v in vars(context).items() if isinstance(v, int | float)}
        decision = cluster_pb2.ScalingDecision(
            timestamp_unix=time.time(),
            policy=self.policy.name,
            current_replicas=current,
            proposed_replicas=proposed,
            applied_replicas=applied,
            reason=reason,
            inputs=inputs,
        )
        self.decisions.append(decision)
        direction = "up" if applied > current else "down" if applied < current else "hold"
        self.decision_counts[(self.policy.name, direction)] += 1
        logger.info(
            "scaling decision",
            extra={
                "policy": self.policy.name,
                "current": current,
                "proposed": proposed,
                "applied": applied,
                "reason": reason,
            },
        )

    async def _start(self) -> None:
        worker_id = f"worker-{secrets.token_hex(3)}"
        worker = await self.runtime.start(worker_id)
        self.workers[worker_id] = worker
        self.started_total += 1

    async def _retire(self, worker: ManagedWorker) -> None:
        worker.state = "draining"
        drained = await self.drainer.drain(worker.worker_id, self.drain_timeout_s)
        if not drained:
            logger.warning(
                "drain timed out; stopping anyway", extra={"worker_id": worker.worker_id}
            )
        worker.state = "stopping"
        await self.runtime.stop(worker, self.stop_grace_s)
        self.workers.pop(worker.worker_id, None)
        self.stopped_total += 1

    async def close(self, stop_workers: bool) -> None:
        """Stop ticking work; with `stop_workers`, drain and stop every worker first (otherwise
        they keep serving and the next scaler adopts them)."""
        if stop_workers:
            await asyncio.gather(*self._retiring, return_exceptions=True)
            await asyncio.gather(*(self._retire(w) for w in self.active()), return_exceptions=True)
        await self.runtime.close()

    # -- reporting --------------------------------------------------------------------------

    def status(self, runtime_name: str) -> cluster_pb2.ScalerStatus:
        states = [w.state for w in self.workers.values()]
        status = cluster_pb2.ScalerStatus(
            desired_replicas=self.desired,
            ready_replicas=states.count("ready"),
            starting_replicas=states.count("starting"),
            draining_replicas=states.count("draining") + states.count("stopping"),
            min_replicas=self.guard_config.min_replicas,
            max_replicas=self.guard_config.max_replicas,
            policy=self.policy.name,
            policy_parameters=self.policy_parameters,
            paused=self.paused,
            recent_decisions=list(self.decisions),
            runtime=runtime_name,
            fallback_reason=self.fallback_reason,
        )
        if self.pinned is not None:
            status.pinned_replicas = self.pinned
        return status

    def list_workers(self) -> list[cluster_pb2.ManagedWorker]:
        return [
            cluster_pb2.ManagedWorker(
                worker_id=w.worker_id,
                runtime_id=w.runtime_id,
                state=w.state,
                started_unix=w.started_unix,
                address=next(
                    (s.address for s in self.snapshot.workers if s.worker_id == w.worker_id), ""
                ),
            )
            for w in self.workers.values()
        ]
