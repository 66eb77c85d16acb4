"""BalancerCore with a fake WorkerTransport: routing, retry of lost batches on another worker,
errors that pass through, draining, waiting for a worker to register, and snapshots."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from services.balancer.core import BalancerCore, WorkerLost, WorkerSession
from services.balancer.registry import WorkerTable
from tideserve.errors import (
    AlreadyExists,
    BatchLost,
    InvalidArgument,
    NoReadyWorker,
    TideserveError,
)
from tideserve.v1 import cluster_pb2

MODEL = "m"
PAYLOAD = b"batch-bytes"
DRAIN = cluster_pb2.BalancerCommand.DRAIN
RELEASE = cluster_pb2.BalancerCommand.RELEASE


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeTransport:
    """Answers `result:<address>` unless told otherwise per address: an exception to raise, or
    an event to wait on first (a batch in flight). Advances the fake clock by `service_s`."""

    def __init__(self, clock: Callable[[], float], advance: Callable[[float], None] | None) -> None:
        self.clock = clock
        self.advance = advance
        self.service_s = 0.004
        self.errors: dict[str, Exception] = {}
        self.gates: dict[str, asyncio.Event] = {}
        self.calls: list[tuple[str, bytes, float | None]] = []
        # The Execute key each call presented, by address.
        self.keys: dict[str, list[str]] = {}
        self.forgotten: list[str] = []

    async def execute(
        self, address: str, payload: bytes, timeout: float | None, *, key: str
    ) -> bytes:
        self.calls.append((address, payload, timeout))
        self.keys.setdefault(address, []).append(key)
        gate = self.gates.get(address)
        if gate is not None:
            await gate.wait()
        if self.advance is not None:
            self.advance(self.service_s)
        error = self.errors.get(address)
        if error is not None:
            raise error
        return f"result:{address}".encode()

    def forget(self, address: str) -> None:
        self.forgotten.append(address)

    @property
    def addresses(self) -> list[str]:
        return [address for address, _, _ in self.calls]


def registration(worker_id: str, *models: str) -> cluster_pb2.WorkerRegistration:
    message = cluster_pb2.WorkerRegistration(
        worker_id=worker_id, address=f"{worker_id}:1", device="cpu"
    )
    for model in models or (MODEL,):
        message.models.add(versions=["1"]).config.name = model
    return message


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def transport(clock: FakeClock) -> FakeTransport:
    return FakeTransport(clock, clock.advance)


def make_core(
    transport: FakeTransport,
    clock: Callable[[], float],
    *,
    policy: str = "least_load",
    no_worker_wait_s: float = 0.0,
    max_attempts: int = 2,
) -> BalancerCore:
    table = WorkerTable(
        heartbeat_timeout_s=1.0, eject_after_failures=3, ejection_s=5.0, clock=clock
    )
    return BalancerCore(
        table,
        transport,
        policy=policy,
        max_attempts=max_attempts,
        batch_timeout_s=30.0,
        no_worker_wait_s=no_worker_wait_s,
        clock=clock,
        wall_clock=lambda: 1_800_000_000.0,
    )


@pytest.fixture
def core(transport: FakeTransport, clock: FakeClock) -> BalancerCore:
    return make_core(transport, clock)


def commands(session: WorkerSession) -> list[int]:
    found = []
    while not session.commands.empty():
        command = session.commands.get_nowait()
        if command is not None:
            found.append(command.action)
    return found


async def test_dispatch_routes_and_accounts(core: BalancerCore, transport: FakeTransport) -> None:
    session = await core.connect(registration("w1"))

    result = await core.dispatch(MODEL, 4, PAYLOAD, None)

    assert result == b"result:w1:1"
    assert transport.calls == [("w1:1", PAYLOAD, 30.0)], "unmeasured worker: the longest timeout"
    record = session.record
    assert (record.outstanding_batches, record.outstanding_rows) == (0, 0)
    assert record.completed_batches == 1
    assert record.service_times[4] == pytest.approx(transport.service_s)
    assert (core.dispatched_batches, core.dispatched_rows) == (1, 4)
    assert core.batch_sizes == {4: 1}


async def test_each_batch_carries_the_execute_key_its_worker_registered_with(
    transport: FakeTransport, clock: FakeClock
) -> None:
    core = make_core(transport, clock, policy="round_robin")
    for worker_id in ("w1", "w2"):
        message = registration(worker_id)
        message.execute_key = f"key-of-{worker_id}"
        await core.connect(message)

    for _ in range(4):
        await core.dispatch(MODEL, 1, PAYLOAD, None)

    assert transport.keys == {"w1:1": ["key-of-w1"] * 2, "w2:1": ["key-of-w2"] * 2}
    assert "key-of" not in str(core.snapshot()), "snapshots never show a worker's key"
    assert "key-of" not in repr(core.sessions["w1"]), "nor does a logged session or record"


async def test_deadline_bounds_the_worker_timeout(
    core: BalancerCore, transport: FakeTransport, clock: FakeClock
) -> None:
    await core.connect(registration("w1"))

    await core.dispatch(MODEL, 1, PAYLOAD, clock() + 0.5)

    assert transport.calls[0][2] == pytest.approx(0.5)


async def test_expired_deadline_never_reaches_a_worker(
    core: BalancerCore, transport: FakeTransport, clock: FakeClock
) -> None:
    await core.connect(registration("w1"))

    with pytest.raises(TideserveError):
        await core.dispatch(MODEL, 1, PAYLOAD, clock() - 0.1)
    assert transport.calls == []


async def test_lost_batch_is_retried_on_another_worker(
    core: BalancerCore, transport: FakeTransport
) -> None:
    first = await core.connect(registration("w1"))
    second = await core.connect(registration("w2"))
    transport.errors["w1:1"] = WorkerLost("connection reset")

    result = await core.dispatch(MODEL, 2, PAYLOAD, None)

    assert result == b"result:w2:1"
    assert transport.addresses == ["w1:1", "w2:1"], "least_load breaks the tie on id: w1 first"
    assert core.retried_batches == 1
    assert core.failed_batches == 0
    assert first.record.failed_batches == 1
    assert first.record.outstanding_batches == 0
    assert second.record.completed_batches == 1


async def test_all_workers_lost_is_unavailable(
    core: BalancerCore, transport: FakeTransport
) -> None:
    for worker_id in ("w1", "w2", "w3"):
        await core.connect(registration(worker_id))
        transport.errors[f"{worker_id}:1"] = WorkerLost("gone")

    with pytest.raises(BatchLost, match="workers tried: \\['w1', 'w2'\\]"):
        await core.dispatch(MODEL, 1, PAYLOAD, None)

    assert len(transport.calls) == 2, "max_attempts bounds the retries"
    assert core.failed_batches == 1
    assert core.dispatched_batches == 0


async def test_lost_on_the_only_worker_is_unavailable(
    core: BalancerCore, transport: FakeTransport
) -> None:
    await core.connect(registration("w1"))
    transport.errors["w1:1"] = WorkerLost("gone")

    with pytest.raises(BatchLost, match=r"worker w1 at w1:1 died with the batch") as lost:
        await core.dispatch(MODEL, 1, PAYLOAD, None)
    assert lost.value.reason == "worker-lost"
    assert transport.addresses == ["w1:1"], "never retried on the worker that lost it"


async def test_no_worker_for_the_model_is_unavailable(
    core: BalancerCore, transport: FakeTransport
) -> None:
    await core.connect(registration("w1", "other"))

    with pytest.raises(NoReadyWorker, match="no ready worker serves model 'm'") as none:
        await core.dispatch(MODEL, 1, PAYLOAD, None)
    assert none.value.reason == "no-ready-worker"
    assert transport.calls == []


async def test_worker_error_passes_through_without_retry(
    core: BalancerCore, transport: FakeTransport
) -> None:
    session = await core.connect(registration("w1"))
    await core.connect(registration("w2"))
    transport.errors["w1:1"] = InvalidArgument("bad tensor")

    with pytest.raises(InvalidArgument, match="bad tensor"):
        await core.dispatch(MODEL, 1, PAYLOAD, None)

    assert transport.addresses == ["w1:1"]
    assert core.retried_batches == 0
    assert core.failed_batches == 1
    assert session.record.outstanding_batches == 0
    assert session.record.consecutive_failures == 0, "the worker answered: it is healthy"


async def test_worker_ejected_after_repeated_losses_gets_no_batches(
    core: BalancerCore, transport: FakeTransport
) -> None:
    await core.connect(registration("w1"))
    await core.connect(registration("w2"))
    transport.errors["w1:1"] = WorkerLost("flaky")
    for _ in range(3):
        await core.dispatch(MODEL, 1, PAYLOAD, None)
    transport.calls.clear()

    await core.dispatch(MODEL, 1, PAYLOAD, None)

    assert transport.addresses == ["w2:1"]


async def test_waits_for_a_worker_to_register() -> None:
    transport = FakeTransport(time.monotonic, None)
    core = make_core(transport, time.monotonic, no_worker_wait_s=2.0)
    started = time.monotonic()

    pending = asyncio.create_task(core.dispatch(MODEL, 1, PAYLOAD, None))
    await asyncio.sleep(0.005)
    assert not pending.done()
    await core.connect(registration("late"))
    result = await asyncio.wait_for(pending, 1.0)

    assert result == b"result:late:1"
    assert time.monotonic() - started < 0.5, "registration wakes the waiting batch"


async def test_wait_for_a_worker_is_bounded() -> None:
    transport = FakeTransport(time.monotonic, None)
    core = make_core(transport, time.monotonic, no_worker_wait_s=0.01)

    with pytest.raises(NoReadyWorker):
        await asyncio.wait_for(core.dispatch(MODEL, 1, PAYLOAD, None), 1.0)


async def test_drain_idle_worker_is_released_at_once(core: BalancerCore) -> None:
    session = await core.connect(registration("w1"))

    response = await core.drain("w1", None)

    assert response.drained
    assert commands(session) == [DRAIN, RELEASE]
    assert core.table.candidates(MODEL) == []


async def test_drain_releases_when_outstanding_reaches_zero(
    core: BalancerCore, transport: FakeTransport
) -> None:
    session = await core.connect(registration("w1"))
    gate = transport.gates["w1:1"] = asyncio.Event()
    inflight = asyncio.create_task(core.dispatch(MODEL, 1, PAYLOAD, None))
    await asyncio.sleep(0)

    response = await core.drain("w1", None)

    assert not response.drained
    assert response.outstanding_batches == 1
    assert commands(session) == [DRAIN]
    assert core.table.candidates(MODEL) == [], "a draining worker gets no new batches"

    gate.set()
    assert await inflight == b"result:w1:1", "the batch it holds still completes"
    assert commands(session) == [RELEASE]


async def test_drain_twice_sends_one_drain_command(core: BalancerCore) -> None:
    session = await core.connect(registration("w1"))

    await core.drain("w1", None)
    await core.drain("w1", None)

    assert commands(session) == [DRAIN, RELEASE]


async def test_drain_with_wait_answers_once_drained() -> None:
    transport = FakeTransport(time.monotonic, None)
    core = make_core(transport, time.monotonic)
    await core.connect(registration("w1"))
    gate = transport.gates["w1:1"] = asyncio.Event()
    inflight = asyncio.create_task(core.dispatch(MODEL, 1, PAYLOAD, None))
    await asyncio.sleep(0)

    draining = asyncio.create_task(core.drain("w1", 5.0))
    await asyncio.sleep(0.002)
    assert not draining.done()
    gate.set()
    response = await asyncio.wait_for(draining, 1.0)

    assert response.drained
    assert response.outstanding_batches == 0
    await inflight


async def test_drain_unknown_worker_is_already_drained(core: BalancerCore) -> None:
    assert (await core.drain("ghost", 1.0)).drained


async def test_stale_workers_are_expired(
    core: BalancerCore, transport: FakeTransport, clock: FakeClock
) -> None:
    await core.connect(registration("w1"))
    fresh = await core.connect(registration("w2"))
    clock.advance(1.5)
    core.report(fresh, cluster_pb2.LoadReport())

    assert await core.expire_stale() == ["w1"]
    assert set(core.sessions) == {"w2"}
    assert set(core.table.workers) == {"w2"}
    assert transport.forgotten == ["w1:1"]


async def test_second_registration_of_a_live_worker_is_refused(
    core: BalancerCore, transport: FakeTransport
) -> None:
    live = await core.connect(registration("w1"))

    impostor = registration("w1")
    impostor.address = "impostor:1"
    with pytest.raises(AlreadyExists, match="w1"):
        await core.connect(impostor)

    assert core.sessions["w1"] is live
    assert core.table.workers["w1"].address == "w1:1"
    assert transport.forgotten == []
    assert live.commands.empty(), "the live worker's stream must not be ended"


async def test_silent_session_is_replaced_by_a_new_registration(
    core: BalancerCore, transport: FakeTransport, clock: FakeClock
) -> None:
    old = await core.connect(registration("w1"))
    clock.advance(1.5)
    new = await core.connect(registration("w1"))

    assert transport.forgotten == ["w1:1"]
    assert old.commands.get_nowait() is None, "the silent session's stream is ended"
    await core.disconnect(old, "old stream closed")
    assert core.sessions["w1"] is new, "a stale session's close must not remove its successor"
    await core.disconnect(new, "stream closed")
    assert core.sessions == {}
    assert core.models() == []


async def test_snapshot_describes_workers_and_counters(
    core: BalancerCore, transport: FakeTransport
) -> None:
    first = await core.connect(registration("w1"))
    draining = await core.connect(registration("w2"))
    draining.record.draining = True
    await core.dispatch(MODEL, 3, PAYLOAD, None)
    core.report(
        first,
        cluster_pb2.LoadReport(
            service_times=[cluster_pb2.ServiceTime(batch_size=8, seconds=0.02, model=MODEL)]
        ),
    )
    core.frontend_report(cluster_pb2.FrontendReport(batcher_id="b1", arrival_rate=5.0))

    snapshot = core.snapshot()

    assert snapshot.timestamp_unix == 1_800_000_000.0
    assert snapshot.routing_policy == "least_load"
    assert snapshot.dispatched_batches == 1
    assert snapshot.dispatched_rows == 3
    assert dict(snapshot.batch_size_counts) == {3: 1}
    assert [m.config.name for m in snapshot.models] == [MODEL]
    assert [f.batcher_id for f in snapshot.frontends] == ["b1"]
    phases = {w.worker_id: w.phase for w in snapshot.workers}
    assert phases == {"w1": cluster_pb2.WorkerState.READY, "w2": cluster_pb2.WorkerState.DRAINING}
    (w1,) = [w for w in snapshot.workers if w.worker_id == "w1"]
    assert w1.completed_batches == 1
    # The snapshot carries the compute times the worker reported, per model ...
    assert [(t.model, t.batch_size, t.seconds) for t in w1.service_times] == [(MODEL, 8, 0.02)]
    # ... while routing also learns from the round trips it observed.
    assert first.record.service_times[3] == pytest.approx(transport.service_s)


async def test_old_frontend_reports_leave_the_snapshot(
    core: BalancerCore, clock: FakeClock
) -> None:
    core.frontend_report(cluster_pb2.FrontendReport(batcher_id="b1"))
    clock.advance(10.0)

    assert list(core.snapshot().frontends) == []


async def test_batch_timeout_is_a_multiple_of_the_expected_completion(
    core: BalancerCore, transport: FakeTransport
) -> None:
    record = (await core.connect(registration("w1"))).record
    assert core.batch_timeout(record, 1) == core.batch_timeout_s, "not measured yet: no guess"
    record.service_times = {1: 0.001}
    assert core.batch_timeout(record, 1) == core.batch_timeout_floor_s, "fast worker: the floor"

    record.service_times = {1: 0.2}
    record.outstanding_batches = record.outstanding_rows = 2
    assert core.batch_timeout(record, 1) == pytest.approx(core.batch_timeout_multiplier * 0.6)

    record.service_times = {1: 100.0}
    assert core.batch_timeout(record, 1) == core.batch_timeout_s, "capped"


async def test_adaptive_timeout_is_what_the_worker_gets(
    core: BalancerCore, transport: FakeTransport, clock: FakeClock
) -> None:
    record = (await core.connect(registration("w1"))).record
    record.service_times = {1: 0.3}

    await core.dispatch(MODEL, 1, PAYLOAD, clock() + 10.0)

    assert transport.calls[0][2] == pytest.approx(core.batch_timeout_multiplier * 0.3)


def test_timeout_settings_are_validated(transport: FakeTransport, clock: FakeClock) -> None:
    table = WorkerTable(clock=clock)
    with pytest.raises(ValueError, match="batch_timeout_multiplier"):
        BalancerCore(table, transport, batch_timeout_multiplier=1.0, clock=clock)
    with pytest.raises(ValueError, match="batch_timeout_floor_s"):
        BalancerCore(table, transport, batch_timeout_floor_s=60.0, clock=clock)
    with pytest.raises(ValueError, match="max_attempts"):
        BalancerCore(table, transport, max_attempts=0, clock=clock)


async def test_hung_worker_is_timed_out_retried_elsewhere_and_ejected(
    core: BalancerCore, transport: FakeTransport, clock: FakeClock
) -> None:
    """A worker whose batches time out (its heartbeats may still arrive) loses each batch to
    another worker well inside the deadline and is ejected after three."""
    hung = (await core.connect(registration("w1"))).record
    await core.connect(registration("w2"))
    transport.errors["w1:1"] = WorkerLost("DEADLINE_EXCEEDED: per-batch timeout")
    deadline = clock() + 10.0

    for _ in range(3):
        assert await core.dispatch(MODEL, 1, PAYLOAD, deadline) == b"result:w2:1"

    assert core.table.phase(hung) == cluster_pb2.WorkerState.EJECTED
    assert hung.consecutive_failures == 0
    assert hung.ejections == 1
    assert core.failed_batches == 0


async def test_internal_error_counts_against_the_worker_and_is_retried(
    core: BalancerCore, transport: FakeTransport
) -> None:
    session = await core.connect(registration("w1"))
    await core.connect(registration("w2"))
    transport.errors["w1:1"] = TideserveError("CUDA error: device lost")

    assert await core.dispatch(MODEL, 1, PAYLOAD, None) == b"result:w2:1"

    assert session.record.consecutive_failures == 1
    assert core.retried_batches == 1


async def test_loss_after_the_request_deadline_does_not_count_against_the_worker(
    core: BalancerCore, transport: FakeTransport, clock: FakeClock
) -> None:
    session = await core.connect(registration("w1"))
    await core.connect(registration("w2"))
    transport.service_s = 1.0
    transport.errors["w1:1"] = WorkerLost("DEADLINE_EXCEEDED")

    with pytest.raises(TideserveError, match="deadline"):
        await core.dispatch(MODEL, 1, PAYLOAD, clock() + 0.5)

    assert session.record.consecutive_failures == 0
    assert session.record.outstanding_batches == 0


async def test_ejected_worker_is_probed_and_readmitted_after_the_backoff(
    core: BalancerCore, transport: FakeTransport, clock: FakeClock
) -> None:
    first = await core.connect(registration("w1"))
    second = await core.connect(registration("w2"))
    transport.errors["w1:1"] = WorkerLost("flaky")
    for _ in range(3):
        await core.dispatch(MODEL, 1, PAYLOAD, None)
    del transport.errors["w1:1"]
    clock.advance(core.table.ejection_s)
    for session in (first, second):
        core.report(session, cluster_pb2.LoadReport())
    transport.calls.clear()

    await core.dispatch(MODEL, 1, PAYLOAD, None)

    assert transport.addresses == ["w1:1"], "least_load: the idle half-open worker gets the probe"
    assert first.record.ejections == 0
    assert core.table.phase(first.record) == cluster_pb2.WorkerState.READY


async def test_set_policy_by_name(core: BalancerCore) -> None:
    core.set_policy("round_robin")
    assert core.snapshot().routing_policy == "round_robin"
    core.set_policy("weighted_round_robin")
    assert core.policy.name == "weighted_round_robin"
    with pytest.raises(ValueError, match="unknown routing policy"):
        core.set_policy("nope")
