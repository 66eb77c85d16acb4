"""The balancer's logic without gRPC: worker sessions, routing with retry, draining and cluster
snapshots. The network is behind `WorkerTransport`, so all of it runs in unit tests on fakes."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from services.balancer.registry import Clock, WorkerRecord, WorkerTable
from services.balancer.routing import RoutingPolicy, create_policy
from tideserve.errors import (
    AlreadyExists,
    BatchLost,
    DeadlineExceeded,
    InvalidArgument,
    NoReadyWorker,
    NotFound,
    TideserveError,
    Unavailable,
    error_for_code,
)
from tideserve.v1 import cluster_pb2

logger = logging.getLogger(__name__)

# Frontend reports older than this are left out of snapshots.
FRONTEND_REPORT_TTL_S = 5.0
# Status codes a worker answers with that mean the worker, not the batch, is at fault: the batch
# is retried elsewhere and the failure counts toward the worker's ejection.
WORKER_FAULT_CODES = frozenset({"INTERNAL", "RESOURCE_EXHAUSTED"})


class WorkerLost(Exception):
    """The worker did not answer (died, unreachable, timed out). Inference is idempotent, so the
    batch may be sent to another worker."""


class WorkerTransport(Protocol):
    async def execute(
        self, address: str, payload: bytes, timeout: float | None, *, key: str
    ) -> bytes:
        """Send serialized Batch bytes to a worker, presenting the Execute `key` it registered
        with, and return its serialized BatchResult. Raises WorkerLost, or a TideserveError the
        worker answered with."""
        ...

    def forget(self, address: str) -> None:
        """Release whatever is held for a worker that left."""
        ...


@dataclass
class WorkerSession:
    record: WorkerRecord
    # Commands to send down the heartbeat stream; None ends the stream (the worker then
    # reconnects and registers afresh, e.g. after it was expired for missed heartbeats).
    commands: asyncio.Queue[cluster_pb2.BalancerCommand | None] = field(
        default_factory=asyncio.Queue
    )


class BalancerCore:
    def __init__(
        self,
        table: WorkerTable,
        transport: WorkerTransport,
        *,
        policy: str = "least_load",
        max_attempts: int = 2,
        batch_timeout_s: float = 30.0,
        batch_timeout_multiplier: float = 5.0,
        batch_timeout_floor_s: float = 0.5,
        no_worker_wait_s: float = 2.0,
        clock: Clock = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.table = table
        self.transport = transport
        self.policy: RoutingPolicy = create_policy(policy)
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if batch_timeout_multiplier <= 1 or not 0 < batch_timeout_floor_s <= batch_timeout_s:
            raise ValueError(
                "need batch_timeout_multiplier > 1 and 0 < batch_timeout_floor_s <= batch_timeout_s"
            )
        self.max_attempts = max_attempts
        self.batch_timeout_s = batch_timeout_s
        self.batch_timeout_multiplier = batch_timeout_multiplier
        self.batch_timeout_floor_s = batch_timeout_floor_s
        self.no_worker_wait_s = no_worker_wait_s
        self.clock = clock
        self.wall_clock = wall_clock
        self.sessions: dict[str, WorkerSession] = {}
        self.frontends: dict[str, tuple[float, cluster_pb2.FrontendReport]] = {}
        self.dispatched_batches = 0
        self.dispatched_rows = 0
        self.failed_batches = 0
        self.retried_batches = 0
        self.batch_sizes: Counter[int] = Counter()
        self._changed = asyncio.Condition()
        # Models loaded (True) or unloaded (False) through ControlModel: a worker that registers
        # later is told the same, so a scaled-up worker serves what the running ones serve.
        self.model_plan: dict[str, bool] = {}
        self._control_ids = itertools.count(1)
        # The operator's split of each model's unversioned requests between its versions
        # (SetCanaryWeights), sent to the batchers with the served models.
        self.canary_weights: dict[str, dict[str, int]] = {}
        # Answers awaited from workers, by (worker id, control id).
        self._controls: dict[tuple[str, int], asyncio.Future[cluster_pb2.ModelUpdate]] = {}

    # -- worker sessions ------------------------------------------------------------------------

    async def connect(self, registration: cluster_pb2.WorkerRegistration) -> WorkerSession:
        """Register a worker's heartbeat stream. While a worker of that id still heartbeats, a
        second registration is refused and the first stays as it is: whoever else claims a live
        worker's id (a stray copy, a confused deployment, an impostor) must not evict it. A
        session that went silent is replaced, so a worker whose stream broke unseen gets back in
        once its old session is stale."""
        previous = self.sessions.get(registration.worker_id)
        if previous is not None:
            if previous.record not in self.table.stale():
                logger.warning(
                    "refused a second registration of a live worker",
                    extra={"worker_id": registration.worker_id, "address": registration.address},
                )
                raise AlreadyExists(
                    f"worker {registration.worker_id!r} is registered and heartbeating; a worker "
                    "id must be unique (pick another --worker-id), or wait until the worker "
                    "holding it stops"
                )
            await self.disconnect(previous, "replaced by a new registration after going silent")
        session = WorkerSession(self.table.register(registration))
        self.sessions[registration.worker_id] = session
        for name, load in self.model_plan.items():
            if load != (name in session.record.models):
                session.commands.put_nowait(self._model_command(name, load, 0))
        logger.info(
            "worker registered",
            extra={
                "worker_id": registration.worker_id,
                "address": registration.address,
                "models": sorted(session.record.models),
            },
        )
        await self._notify()
        return session

    async def disconnect(self, session: WorkerSession, reason: str) -> None:
        worker_id = session.record.worker_id
        if self.sessions.get(worker_id) is not session:
            return
        del self.sessions[worker_id]
        session.commands.put_nowait(None)
        for (waiting_on, _), waiter in self._controls.items():
            if waiting_on == worker_id:
                # Gone: it serves nothing now, so it has nothing to answer.
                waiter.cancel()
        self.table.remove(worker_id)
        self.transport.forget(session.record.address)
        logger.warning("worker removed", extra={"worker_id": worker_id, "reason": reason})
        await self._notify()

    def report(self, session: WorkerSession, load: cluster_pb2.LoadReport) -> None:
        self.table.report(session.record.worker_id, load)

    async def model_update(self, session: WorkerSession, update: cluster_pb2.ModelUpdate) -> None:
        """A worker's models changed (a load or unload, ours or another balancer's)."""
        self.table.set_models(session.record.worker_id, update)
        waiter = self._controls.pop((session.record.worker_id, update.control_id), None)
        if waiter is not None and not waiter.done():
            waiter.set_result(update)
        await self._notify()

    # -- model control --------------------------------------------------------------------------

    @staticmethod
    def _model_command(name: str, load: bool, control_id: int) -> cluster_pb2.BalancerCommand:
        action = cluster_pb2.BalancerCommand
        return action(
            action=action.LOAD_MODEL if load else action.UNLOAD_MODEL,
            model_name=name,
            control_id=control_id,
            reason="load" if load else "unload",
        )

    async def control_model(
        self, name: str, load: bool, timeout_s: float
    ) -> cluster_pb2.ControlModelResponse:
        """Have every connected worker that is not draining load or unload `name`, and answer
        once each has (or left): with the model's states on them, or the error of the first
        worker that failed (a worker that failed to load keeps serving what it served).
        Workers that do not answer within `timeout_s` make it Unavailable."""
        sessions = [s for s in self.sessions.values() if not s.record.draining]
        if not sessions:
            raise Unavailable(f"no worker is connected to load or unload model {name!r} on")
        self.model_plan[name] = load
        waiters = []
        for session in sessions:
            control_id = next(self._control_ids)
            waiter = asyncio.get_running_loop().create_future()
            self._controls[(session.record.worker_id, control_id)] = waiter
            waiters.append(waiter)
            session.commands.put_nowait(self._model_command(name, load, control_id))
        done, pending = await asyncio.wait(waiters, timeout=timeout_s)
        for waiter in pending:
            waiter.cancel()
        self._controls = {k: w for k, w in self._controls.items() if not w.done()}
        answers = [w.result() for w in done if not w.cancelled()]
        for answer in answers:
            if answer.error_code:
                raise error_for_code(answer.error_code, answer.error)
        if pending:
            raise Unavailable(
                f"{len(pending)} of {len(waiters)} workers did not answer within {timeout_s:g} s "
                f"whether they {'loaded' if load else 'unloaded'} model {name!r}"
            )
        response = cluster_pb2.ControlModelResponse(workers=len(answers))
        for answer in answers:
            response.statuses.extend(s for s in answer.statuses if s.name == name)
        logger.info(
            "model loaded on every worker" if load else "model unloaded on every worker",
            extra={"model": name, "workers": len(answers)},
        )
        return response

    def set_canary_weights(self, name: str, weights: dict[str, int]) -> dict[str, int]:
        """Split `name`'s unversioned requests by `weights` (version -> weight) from now on;
        empty: back to the config's canary_weights. Returns the weights in force. NotFound if
        no worker serves the model; InvalidArgument if all weights are 0 or a weighted version
        is not served (load it first: a version_policy serving both)."""
        served = self.table.models.get(name)
        if served is None:
            raise NotFound(
                f"no worker serves model {name!r}; served models are {sorted(self.table.models)}"
            )
        if not weights:
            self.canary_weights.pop(name, None)
            logger.info("canary weights cleared", extra={"model": name})
            return {}
        if not any(weights.values()):
            raise InvalidArgument(
                f"canary weights for model {name!r} are all 0: give some version a weight "
                "above 0, or send no weights to go back to the config's"
            )
        unserved = sorted(v for v, w in weights.items() if w and v not in served.versions)
        if unserved:
            raise InvalidArgument(
                f"model {name!r} versions {unserved} are not served (served: "
                f"{list(served.versions)}); load them first with a version_policy that serves "
                "every version given a weight"
            )
        self.canary_weights[name] = dict(weights)
        logger.info("canary weights set", extra={"model": name, "weights": weights})
        return dict(weights)

    async def expire_stale(self) -> list[str]:
        expired = []
        for record in self.table.stale():
            session = self.sessions.get(record.worker_id)
            if session is not None:
                await self.disconnect(session, "missed heartbeats")
                expired.append(record.worker_id)
        return expired

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -- data path ------------------------------------------------------------------------------

    async def dispatch(
        self, model: str, rows: int, payload: bytes, deadline: float | None
    ) -> bytes:
        """Route a serialized batch to a worker, retrying on another worker if it is lost.

        `deadline` is on this core's clock; None means no deadline. Each attempt gets the
        adaptive timeout of `batch_timeout`, so a worker that hangs while still heartbeating
        costs a few expected service times, not the whole deadline."""
        tried: list[str] = []
        last_worker, last_error = "", "no attempt made"
        for _ in range(self.max_attempts):
            record = await self._pick(model, rows, tried, deadline)
            if record is None:
                break
            timeout = self.batch_timeout(record, rows)
            if deadline is not None:
                timeout = min(timeout, deadline - self.clock())
            if timeout <= 0:
                break
            self.table.begin(record, rows)
            started = self.clock()
            try:
                result = await self.transport.execute(
                    record.address, payload, timeout, key=record.execute_key
                )
            except (WorkerLost, TideserveError) as error:
                answered = isinstance(error, TideserveError)
                if answered and error.code not in WORKER_FAULT_CODES:
                    # The worker judged the batch itself (invalid, expired): retrying cannot help.
                    await self._finish(record, rows, None, counts=False)
                    self.failed_batches += 1
                    raise
                # The request's own deadline running out says nothing against the worker.
                counts = deadline is None or self.clock() < deadline
                await self._finish(record, rows, None, counts=counts)
                tried.append(record.worker_id)
                last_worker, last_error = f"{record.worker_id} at {record.address}", str(error)
                self.retried_batches += 1
                logger.warning(
                    "batch failed on worker; retrying elsewhere",
                    extra={"worker_id": record.worker_id, "error": str(error)},
                )
                continue
            await self._finish(record, rows, self.clock() - started)
            self.dispatched_batches += 1
            self.dispatched_rows += rows
            self.batch_sizes[rows] += 1
            return result
        self.failed_batches += 1
        if deadline is not None and self.clock() >= deadline:
            raise DeadlineExceeded(
                f"deadline passed before a worker could serve the batch for {model!r}"
                + (f" (lost on {tried})" if tried else "")
            )
        if not tried:
            raise NoReadyWorker(
                f"no ready worker serves model {model!r} (waited {self.no_worker_wait_s:g} s "
                "for one to register or leave draining/ejection)"
            )
        raise BatchLost(
            f"worker {last_worker} died with the batch for model {model!r} or stopped answering "
            f"({last_error}); workers tried: {tried}"
        )

    def batch_timeout(self, record: WorkerRecord, rows: int) -> float:
        """How long to wait for `record` to answer a batch of `rows` sent now: a multiple of its
        expected completion time (backlog plus this batch), at least the floor (which absorbs
        scheduling hiccups), at most `batch_timeout_s`. A queue that is long by measure gets a
        long timeout; only a worker far slower than it has been measured to be times out. A
        worker not measured yet gets the longest timeout: nothing says what is slow for it."""
        if not (record.service_times or record.reported_times):
            return self.batch_timeout_s
        expected = record.expected_completion(rows) * self.batch_timeout_multiplier
        return min(max(expected, self.batch_timeout_floor_s), self.batch_timeout_s)

    async def _pick(
        self, model: str, rows: int, tried: list[str], deadline: float | None
    ) -> WorkerRecord | None:
        """Choose a worker, waiting (bounded) for one to register if none can take the batch."""
        wait_until = self.clock() + self.no_worker_wait_s
        if deadline is not None:
            wait_until = min(wait_until, deadline)
        while True:
            candidates = self.table.candidates(model, exclude=tried)
            if candidates:
                return self.policy.choose(candidates, rows)
            remaining = wait_until - self.clock()
            if remaining <= 0:
                return None
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), min(remaining, 0.05))

    async def _finish(
        self, record: WorkerRecord, rows: int, seconds: float | None, *, counts: bool = True
    ) -> None:
        """Book a batch's end: a round trip, a failure against the worker, or (not `counts`) an
        end that says nothing about the worker's health."""
        if counts:
            self.table.finish(record, rows, seconds)
        else:
            self.table.release(record, rows)
        if record.draining and record.outstanding_batches == 0:
            self._release(record)
        await self._notify()

    # -- draining -------------------------------------------------------------------------------

    async def drain(self, worker_id: str, wait_s: float | None) -> cluster_pb2.DrainWorkerResponse:
        """Stop routing to a worker; tell it to drain; release it once it holds nothing of ours.
        With `wait_s`, answer when drained or when `wait_s` has passed."""
        session = self.sessions.get(worker_id)
        if session is None:
            # Gone already: nothing of ours can be on it.
            return cluster_pb2.DrainWorkerResponse(drained=True)
        record = session.record
        if not record.draining:
            record.draining = True
            session.commands.put_nowait(
                cluster_pb2.BalancerCommand(
                    action=cluster_pb2.BalancerCommand.DRAIN, reason="drain"
                )
            )
            logger.info("draining worker", extra={"worker_id": worker_id})
            if record.outstanding_batches == 0:
                self._release(record)
        if wait_s:
            until = self.clock() + wait_s
            async with self._changed:
                while record.outstanding_batches > 0 and self.clock() < until:
                    try:
                        await asyncio.wait_for(self._changed.wait(), until - self.clock())
                    except TimeoutError:
                        break
        return cluster_pb2.DrainWorkerResponse(
            drained=record.outstanding_batches == 0, outstanding_batches=record.outstanding_batches
        )

    def _release(self, record: WorkerRecord) -> None:
        session = self.sessions.get(record.worker_id)
        if session is not None:
            session.commands.put_nowait(
                cluster_pb2.BalancerCommand(
                    action=cluster_pb2.BalancerCommand.RELEASE, reason="drained"
                )
            )

    # -- observation ----------------------------------------------------------------------------

    def set_policy(self, name: str) -> None:
        self.policy = create_policy(name)
        logger.info("routing policy changed", extra={"policy": name})

    def frontend_report(self, report: cluster_pb2.FrontendReport) -> None:
        self.frontends[report.batcher_id] = (self.clock(), report)

    def models(self) -> list[cluster_pb2.ServedModel]:
        """The served models, each with the operator's canary weights if any."""
        models = []
        for name, served in self.table.models.items():
            weights = self.canary_weights.get(name)
            if weights:
                served = cluster_pb2.ServedModel(
                    config=served.config, versions=served.versions, version_weights=weights
                )
            models.append(served)
        return models

    def snapshot(self) -> cluster_pb2.ClusterSnapshot:
        now = self.clock()
        snapshot = cluster_pb2.ClusterSnapshot(
            timestamp_unix=self.wall_clock(),
            models=self.models(),
            routing_policy=self.policy.name,
            dispatched_batches=self.dispatched_batches,
            dispatched_rows=self.dispatched_rows,
            failed_batches=self.failed_batches,
            retried_batches=self.retried_batches,
            frontends=[
                r for seen, r in self.frontends.values() if now - seen < FRONTEND_REPORT_TTL_S
            ],
            batch_size_counts=dict(self.batch_sizes),
        )
        for record in self.table.workers.values():
            snapshot.workers.add(
                worker_id=record.worker_id,
                address=record.address,
                device=record.device,
                models=sorted(record.models),
                phase=self.table.phase(record),
                outstanding_batches=record.outstanding_batches,
                outstanding_rows=record.outstanding_rows,
                expected_backlog_seconds=record.expected_backlog(),
                heartbeat_age_seconds=now - record.last_heartbeat,
                error_rate=record.error_rate,
                completed_batches=record.completed_batches,
                memory_bytes=record.memory_bytes,
                busy_seconds=record.busy_seconds,
                service_times=record.reported_service_times,
                metrics_address=record.metrics_address,
                shared_memory_domain=record.shared_memory_domain,
                model_statuses=record.model_statuses,
            )
        return snapshot
