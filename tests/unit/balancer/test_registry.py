"""WorkerTable on a fake clock: registration, staleness, ejection after consecutive failures and
re-admission after the back-off, and smoothed service times."""

from __future__ import annotations

import pytest

from services.balancer.registry import (
    SMOOTHING,
    UNKNOWN_SERVICE_TIME_S,
    WorkerRecord,
    WorkerTable,
)
from tideserve.v1 import cluster_pb2

TIMEOUT_S = 1.0
EJECTION_S = 5.0


class FakeClock:
    def __init__(self, now: float = 10.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def registration(worker_id: str, *models: str) -> cluster_pb2.WorkerRegistration:
    message = cluster_pb2.WorkerRegistration(
        worker_id=worker_id, address=f"{worker_id}:9000", device="cpu"
    )
    for model in models:
        message.models.add(versions=["1"]).config.name = model
    return message


def load(**service_times: float) -> cluster_pb2.LoadReport:
    report = cluster_pb2.LoadReport(
        queued_batches=2, inflight_batches=1, memory_bytes=1024, busy_seconds=3.5
    )
    for size, seconds in service_times.items():
        report.service_times.add(batch_size=int(size.removeprefix("b")), seconds=seconds)
    return report


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def table(clock: FakeClock) -> WorkerTable:
    return WorkerTable(
        heartbeat_timeout_s=TIMEOUT_S, eject_after_failures=3, ejection_s=EJECTION_S, clock=clock
    )


def test_register_records_worker_and_its_models(table: WorkerTable, clock: FakeClock) -> None:
    record = table.register(registration("w1", "a", "b"))

    assert record.worker_id == "w1"
    assert record.address == "w1:9000"
    assert record.device == "cpu"
    assert record.models == frozenset({"a", "b"})
    assert record.last_heartbeat == clock()
    assert set(table.models) == {"a", "b"}
    assert [w.worker_id for w in table.candidates("a")] == ["w1"]
    assert table.candidates("c") == []


def test_remove_forgets_models_no_one_serves(table: WorkerTable) -> None:
    table.register(registration("w1", "a", "b"))
    table.register(registration("w2", "b"))

    assert table.remove("w1") is not None
    assert set(table.models) == {"b"}
    assert table.remove("w1") is None


def test_report_refreshes_heartbeat_and_load(table: WorkerTable, clock: FakeClock) -> None:
    table.register(registration("w1", "a"))
    clock.advance(0.5)

    table.report("w1", load(b1=0.002, b8=0.01))

    record = table.workers["w1"]
    assert record.last_heartbeat == clock()
    assert (record.queued_batches, record.inflight_batches) == (2, 1)
    assert record.memory_bytes == 1024
    assert record.busy_seconds == 3.5
    assert record.service_times == {1: pytest.approx(0.002), 8: pytest.approx(0.01)}


def test_report_from_unknown_worker_is_ignored(table: WorkerTable) -> None:
    table.report("ghost", load())

    assert table.workers == {}


def test_worker_goes_stale_after_the_heartbeat_timeout(
    table: WorkerTable, clock: FakeClock
) -> None:
    table.register(registration("w1", "a"))
    table.register(registration("w2", "a"))
    clock.advance(TIMEOUT_S)
    table.report("w2", load())

    assert table.stale() == []
    assert len(table.candidates("a")) == 2

    clock.advance(0.001)

    assert [w.worker_id for w in table.stale()] == ["w1"]
    assert [w.worker_id for w in table.candidates("a")] == ["w2"]


def test_heartbeat_timeout_must_be_positive(clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="heartbeat_timeout_s"):
        WorkerTable(heartbeat_timeout_s=0, clock=clock)


def test_candidates_exclude_draining_and_excluded_workers(table: WorkerTable) -> None:
    table.register(registration("w1", "a"))
    table.register(registration("w2", "a"))
    table.register(registration("w3", "a"))
    table.workers["w2"].draining = True

    assert [w.worker_id for w in table.candidates("a", exclude=["w3"])] == ["w1"]
    assert table.phase(table.workers["w2"]) == cluster_pb2.WorkerState.DRAINING


def test_ejected_after_consecutive_failures_and_readmitted_after_backoff(
    table: WorkerTable, clock: FakeClock
) -> None:
    record = table.register(registration("w1", "a"))
    for _ in range(2):
        table.begin(record, 1)
        table.finish(record, 1, None)
    assert table.is_routable(record), "two failures are below the threshold"

    table.begin(record, 1)
    table.finish(record, 1, None)

    assert not table.is_routable(record)
    assert table.candidates("a") == []
    assert table.phase(record) == cluster_pb2.WorkerState.EJECTED
    assert record.failed_batches == 3
    clock.advance(EJECTION_S / 2)
    table.report("w1", load())
    assert not table.is_routable(record), "still backing off, heartbeats or not"

    clock.advance(EJECTION_S / 2)
    table.report("w1", load())

    assert table.is_routable(record)
    assert table.phase(record) == cluster_pb2.WorkerState.READY


def test_a_success_resets_the_failure_count(table: WorkerTable) -> None:
    record = table.register(registration("w1", "a"))
    for outcome in (None, None, 0.01, None, None):
        table.begin(record, 1)
        table.finish(record, 1, outcome)

    assert table.is_routable(record)
    assert record.error_rate == pytest.approx(4 / 5)


def test_begin_and_finish_track_outstanding_work(table: WorkerTable) -> None:
    record = table.register(registration("w1", "a"))
    table.begin(record, 4)
    table.begin(record, 2)

    assert (record.outstanding_batches, record.outstanding_rows) == (2, 6)
    table.finish(record, 4, 0.01)
    assert (record.outstanding_batches, record.outstanding_rows) == (1, 2)
    assert record.completed_batches == 1


def test_service_times_are_smoothed(table: WorkerTable) -> None:
    record = table.register(registration("w1", "a"))
    table.begin(record, 4)
    table.finish(record, 4, 0.010)
    assert record.service_times[4] == pytest.approx(0.010)

    table.begin(record, 4)
    table.finish(record, 4, 0.020)

    assert record.service_times[4] == pytest.approx(0.010 + SMOOTHING * 0.010)


def make_record(**service_times: float) -> WorkerRecord:
    return WorkerRecord(
        "w",
        "w:1",
        "cpu",
        frozenset({"a"}),
        0.0,
        service_times={int(k.removeprefix("b")): v for k, v in service_times.items()},
    )


def test_service_time_unknown_without_measurements() -> None:
    assert make_record().service_time(4) == UNKNOWN_SERVICE_TIME_S


def test_service_time_interpolates_and_extrapolates() -> None:
    record = make_record(b2=0.004, b8=0.010)

    assert record.service_time(2) == pytest.approx(0.004)
    assert record.service_time(4) == pytest.approx(0.006)
    assert record.service_time(16) == pytest.approx(0.020)
    assert record.service_time(1) == pytest.approx(0.004)


def test_expected_backlog_and_completion() -> None:
    record = make_record(b4=0.008)
    assert record.expected_backlog() == 0.0
    record.outstanding_batches = 2
    record.outstanding_rows = 8

    assert record.expected_backlog() == pytest.approx(0.016)
    assert record.expected_completion(4) == pytest.approx(0.024)
