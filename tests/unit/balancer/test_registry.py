"""WorkerTable on a fake clock: registration, staleness, the circuit breaker (ejection after
consecutive failures, growing back-off, half-open probe, re-admission), smoothed error rate and
service times."""

from __future__ import annotations

import pytest

from services.balancer.registry import (
    ERROR_SMOOTHING,
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
    assert record.reported_times == {1: pytest.approx(0.002), 8: pytest.approx(0.01)}
    assert record.service_time(8) == pytest.approx(0.01), "reports stand in until we observe"


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


def fail(table: WorkerTable, record: WorkerRecord, times: int = 1) -> None:
    for _ in range(times):
        table.begin(record, 1)
        table.finish(record, 1, None)


def succeed(table: WorkerTable, record: WorkerRecord, clock: FakeClock) -> None:
    table.begin(record, 1)
    clock.advance(0.01)
    table.finish(record, 1, 0.01)


def test_ejected_after_consecutive_failures_and_readmitted_after_backoff(
    table: WorkerTable, clock: FakeClock
) -> None:
    record = table.register(registration("w1", "a"))
    table.register(registration("w2", "a"))
    fail(table, record, 2)
    assert table.is_routable(record), "two failures are below the threshold"

    fail(table, record)

    assert not table.is_routable(record)
    assert [w.worker_id for w in table.candidates("a")] == ["w2"]
    assert table.phase(record) == cluster_pb2.WorkerState.EJECTED
    assert record.failed_batches == 3
    clock.advance(EJECTION_S / 2)
    table.report("w1", load())
    assert not table.is_routable(record), "still backing off, heartbeats or not"

    clock.advance(EJECTION_S / 2)
    table.report("w1", load())

    assert table.is_routable(record)
    assert table.phase(record) == cluster_pb2.WorkerState.READY


def test_half_open_worker_takes_one_probe_at_a_time_and_closes_on_success(
    table: WorkerTable, clock: FakeClock
) -> None:
    record = table.register(registration("w1", "a"))
    table.register(registration("w2", "a"))
    fail(table, record, 3)
    clock.advance(EJECTION_S)
    table.report("w1", load())

    table.begin(record, 1)
    assert not table.is_routable(record), "one probe in flight: no second batch"
    clock.advance(0.01)
    table.finish(record, 1, 0.01)

    assert record.ejections == 0, "the probe succeeded: breaker closed"
    table.begin(record, 1)
    assert table.is_routable(record), "closed again: batches may overlap"


def test_failed_probe_re_ejects_at_once_with_a_doubled_backoff(
    table: WorkerTable, clock: FakeClock
) -> None:
    record = table.register(registration("w1", "a"))
    table.register(registration("w2", "a"))
    fail(table, record, 3)
    clock.advance(EJECTION_S)
    table.report("w1", load())
    table.report("w2", load())

    fail(table, record)

    assert record.ejected_until == pytest.approx(clock() + 2 * EJECTION_S)
    clock.advance(2 * EJECTION_S)
    table.report("w1", load())
    table.report("w2", load())
    fail(table, record)
    assert record.ejected_until == pytest.approx(clock() + 4 * EJECTION_S)


def test_backoff_is_capped(clock: FakeClock) -> None:
    table = WorkerTable(eject_after_failures=1, ejection_s=5.0, max_ejection_s=8.0, clock=clock)
    record = table.register(registration("w1", "a"))
    table.register(registration("w2", "a"))
    for _ in range(4):
        fail(table, record)
        clock.advance(record.ejected_until - clock())
        table.report("w1", load())
        table.report("w2", load())

    fail(table, record)
    assert record.ejected_until - clock() == pytest.approx(8.0)


def test_failures_of_batches_sent_before_the_ejection_do_not_extend_it(
    table: WorkerTable, clock: FakeClock
) -> None:
    record = table.register(registration("w1", "a"))
    table.register(registration("w2", "a"))
    for _ in range(5):
        table.begin(record, 1)
    for _ in range(5):
        table.finish(record, 1, None)

    assert record.ejections == 1
    assert record.ejected_until == pytest.approx(clock() + EJECTION_S)


def test_last_worker_of_a_model_is_never_ejected(table: WorkerTable) -> None:
    record = table.register(registration("w1", "a"))
    table.register(registration("w2", "b"))

    fail(table, record, 5)

    assert table.is_routable(record), "ejecting it would leave model a with no worker"


def test_breaker_settings_are_validated(clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="eject_after_failures"):
        WorkerTable(eject_after_failures=0, clock=clock)
    with pytest.raises(ValueError, match="ejection_s"):
        WorkerTable(ejection_s=10.0, max_ejection_s=5.0, clock=clock)


def test_a_success_resets_the_failure_count(table: WorkerTable, clock: FakeClock) -> None:
    record = table.register(registration("w1", "a"))
    table.register(registration("w2", "a"))
    expected = 0.0
    for outcome in (None, None, 0.01, None, None):
        table.begin(record, 1)
        clock.advance(0.01)
        table.finish(record, 1, outcome)
        target = 1.0 if outcome is None else 0.0
        expected += ERROR_SMOOTHING * (target - expected)

    assert table.is_routable(record)
    assert record.error_rate == pytest.approx(expected)


def test_neutral_release_leaves_the_breaker_alone(table: WorkerTable) -> None:
    record = table.register(registration("w1", "a"))
    table.begin(record, 2)

    table.release(record, 2)

    assert (record.outstanding_batches, record.outstanding_rows) == (0, 0)
    assert (record.completed_batches, record.failed_batches, record.error_rate) == (0, 0, 0.0)


def test_begin_and_finish_track_outstanding_work(table: WorkerTable) -> None:
    record = table.register(registration("w1", "a"))
    table.begin(record, 4)
    table.begin(record, 2)

    assert (record.outstanding_batches, record.outstanding_rows) == (2, 6)
    table.finish(record, 4, 0.01)
    assert (record.outstanding_batches, record.outstanding_rows) == (1, 2)
    assert record.completed_batches == 1


def test_service_times_are_smoothed(table: WorkerTable, clock: FakeClock) -> None:
    record = table.register(registration("w1", "a"))
    table.begin(record, 4)
    clock.advance(0.010)
    table.finish(record, 4, 0.010)
    assert record.service_times[4] == pytest.approx(0.010)

    table.begin(record, 4)
    clock.advance(0.020)
    table.finish(record, 4, 0.020)

    assert record.service_times[4] == pytest.approx(0.010 + SMOOTHING * 0.010)


def test_queueing_behind_our_previous_batch_is_not_counted_as_service(
    table: WorkerTable, clock: FakeClock
) -> None:
    """Two batches sent together to a worker serving 10 ms each: the second's round trip is
    20 ms, but its service began when the first came back."""
    record = table.register(registration("w1", "a"))
    table.begin(record, 1)
    table.begin(record, 1)
    clock.advance(0.010)
    table.finish(record, 1, 0.010)
    clock.advance(0.010)
    table.finish(record, 1, 0.020)

    assert record.service_times[1] == pytest.approx(0.010)


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
