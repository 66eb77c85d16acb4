"""ModelScheduler and BatcherCore on an asyncio loop with a fake dispatcher that echoes each
batch's inputs back as outputs: rows split back to their requests in order, batches that grow
while dispatch capacity is busy, no waiting for a lone request, and expired requests that never
reach the dispatcher."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest
from google.protobuf import text_format

from services.batcher.admission import ADMISSION_MIN_BATCHES
from services.batcher.batching import PendingRequest
from services.batcher.catalog import CatalogEntry, ModelCatalog
from services.batcher.core import BatcherCore
from services.batcher.scheduler import ModelScheduler
from tideserve.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    TideserveError,
    Unavailable,
)
from tideserve.v1 import cluster_pb2
from tideserve.v1 import inference_pb2 as pb
from tideserve.v1 import model_config_pb2 as mc

MODEL = "echo"
WIDTH = 2


def model_config(max_batch_size: int = 8, delay_us: int = 0, queue_policy: str = "") -> str:
    return f"""
    name: "{MODEL}"
    max_batch_size: {max_batch_size}
    input [ {{ name: "x" data_type: TYPE_FP32 dims: [ {WIDTH} ] }} ]
    output [
      {{ name: "y" data_type: TYPE_FP32 dims: [ {WIDTH} ] }},
      {{ name: "z" data_type: TYPE_FP32 dims: [ {WIDTH} ] }}
    ]
    dynamic_batching {{ max_queue_delay_microseconds: {delay_us} {queue_policy} }}
    """


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class EchoDispatcher:
    """Answers every batch with outputs y = x and z = x + 100, row for row, as version 1. While
    `gate` is cleared, batches are held (a busy worker). `fail_with` makes every dispatch raise.
    With a `clock`, each batch advances it by `seconds_per_batch` (a worker that takes time)."""

    def __init__(self, clock: FakeClock | None = None, seconds_per_batch: float = 0.0) -> None:
        self.clock = clock
        self.seconds_per_batch = seconds_per_batch
        self.batches: list[cluster_pb2.Batch] = []
        self.timeouts: list[float | None] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_with: Exception | None = None

    @property
    def batch_rows(self) -> list[int]:
        return [batch.inputs[0].shape[0] for batch in self.batches]

    async def dispatch(
        self, model: str, rows: int, payload: bytes, timeout: float | None, batch_id: str = ""
    ) -> bytes:
        batch = cluster_pb2.Batch.FromString(payload)
        assert batch.model_name == model
        assert batch.inputs[0].shape[0] == rows
        self.batches.append(batch)
        self.timeouts.append(timeout)
        await self.gate.wait()
        if self.clock is not None:
            self.clock.advance(self.seconds_per_batch)
        if self.fail_with is not None:
            raise self.fail_with
        x = batch.inputs[0]
        plus = (np.frombuffer(x.raw, dtype="<f4") + 100).astype("<f4").tobytes()
        # As a worker serving version 1 alone: it computes the batches that name no version.
        result = cluster_pb2.BatchResult(
            batch_id=batch.batch_id, model_version=batch.model_version or "1"
        )
        result.outputs.add(name="y", datatype="FP32", shape=list(x.shape), raw=x.raw)
        result.outputs.add(name="z", datatype="FP32", shape=list(x.shape), raw=plus)
        return result.SerializeToString()


def rows_of(request_index: int, rows: int) -> np.ndarray:
    """Distinct values per request, so a misplaced row shows up."""
    return np.arange(rows * WIDTH, dtype="<f4").reshape(rows, WIDTH) + 10 * request_index


def infer_request(
    index: int, rows: int = 1, *, outputs: tuple[str, ...] = (), timeout_us: int = 0
) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=MODEL, id=f"req-{index}")
    request.inputs.add(name="x", datatype="FP32", shape=[rows, WIDTH])
    request.raw_input_contents.append(rows_of(index, rows).tobytes())
    for name in outputs:
        request.outputs.add(name=name)
    if timeout_us:
        request.parameters["timeout"].uint64_param = timeout_us
    return request


def catalog_with(config: str, workers: int = 1) -> ModelCatalog:
    catalog = ModelCatalog()
    served = cluster_pb2.ServedModel(versions=["1"])
    served.config.CopyFrom(text_format.Parse(config, mc.ModelConfig()))
    catalog.update([served])
    catalog.worker_counts = {MODEL: workers}
    return catalog


def output(response: pb.ModelInferResponse, name: str) -> np.ndarray:
    index = [o.name for o in response.outputs].index(name)
    tensor = response.outputs[index]
    return np.frombuffer(response.raw_output_contents[index], dtype="<f4").reshape(
        tuple(tensor.shape)
    )


async def settle() -> None:
    """Let every ready task run (the scheduler reacts to wake-ups in a few loop turns)."""
    for _ in range(20):
        await asyncio.sleep(0)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def dispatcher() -> EchoDispatcher:
    return EchoDispatcher()


class Harness:
    """A BatcherCore on a fake clock; closed at the end of the test."""

    def __init__(self, dispatcher: EchoDispatcher, clock: FakeClock) -> None:
        self.dispatcher = dispatcher
        self.clock = clock
        self.core: BatcherCore | None = None

    def start(
        self, config: str, *, workers: int = 1, inflight_per_instance: int = 1
    ) -> BatcherCore:
        self.core = BatcherCore(
            catalog_with(config, workers),
            self.dispatcher,
            inflight_per_instance=inflight_per_instance,
            clock=self.clock,
        )
        return self.core


@pytest.fixture
async def harness(dispatcher: EchoDispatcher, clock: FakeClock) -> AsyncIterator[Harness]:
    harness = Harness(dispatcher, clock)
    yield harness
    if harness.core is not None:
        harness.core.close()
        await settle()


async def gather(futures: list[asyncio.Future]) -> list[object]:
    return await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 1.0)


async def test_lone_request_is_dispatched_at_once_with_zero_delay(
    harness: Harness, dispatcher: EchoDispatcher
) -> None:
    core = harness.start(model_config(delay_us=0))

    (response,) = await gather([core.submit(infer_request(0), deadline=None)])

    assert dispatcher.batch_rows == [1]
    assert isinstance(response, pb.ModelInferResponse)
    assert response.id == "req-0"
    assert response.model_name == MODEL
    assert response.model_version == "1"
    np.testing.assert_array_equal(output(response, "y"), rows_of(0, 1))


async def test_lone_request_waits_for_company_with_a_delay(
    harness: Harness, dispatcher: EchoDispatcher
) -> None:
    core = harness.start(model_config(delay_us=10_000_000))

    future = core.submit(infer_request(0), deadline=None)
    await settle()

    assert dispatcher.batches == []
    assert not future.done()


async def test_rows_are_split_back_to_each_request_in_order(
    harness: Harness, dispatcher: EchoDispatcher
) -> None:
    # A full batch (1 + 3 + 2 = 6 rows) leaves at once, however long the delay.
    core = harness.start(model_config(max_batch_size=6, delay_us=10_000_000))
    sizes = [1, 3, 2]

    responses = await gather(
        [core.submit(infer_request(i, rows), deadline=None) for i, rows in enumerate(sizes)]
    )

    assert dispatcher.batch_rows == [6]
    sent = np.frombuffer(dispatcher.batches[0].inputs[0].raw, dtype="<f4").reshape(6, WIDTH)
    np.testing.assert_array_equal(
        sent, np.concatenate([rows_of(i, n) for i, n in enumerate(sizes)])
    )
    for index, (rows, response) in enumerate(zip(sizes, responses, strict=True)):
        assert isinstance(response, pb.ModelInferResponse)
        assert response.id == f"req-{index}"
        assert [list(o.shape) for o in response.outputs] == [[rows, WIDTH], [rows, WIDTH]]
        np.testing.assert_array_equal(output(response, "y"), rows_of(index, rows))
        np.testing.assert_array_equal(output(response, "z"), rows_of(index, rows) + 100)


async def test_each_request_gets_only_the_outputs_it_asked_for(
    harness: Harness, dispatcher: EchoDispatcher
) -> None:
    core = harness.start(model_config(max_batch_size=2, delay_us=10_000_000))

    only_z, both = await gather(
        [
            core.submit(infer_request(0, outputs=("z",)), deadline=None),
            core.submit(infer_request(1), deadline=None),
        ]
    )

    assert [o.name for o in only_z.outputs] == ["z"]
    assert len(only_z.raw_output_contents) == 1
    np.testing.assert_array_equal(output(only_z, "z"), rows_of(0, 1) + 100)
    assert [o.name for o in both.outputs] == ["y", "z"]
    assert list(dispatcher.batches[0].output_names) == [], "one request wants every output"


async def test_batches_grow_while_dispatch_capacity_is_busy(
    harness: Harness, dispatcher: EchoDispatcher
) -> None:
    core = harness.start(model_config(max_batch_size=8, delay_us=0), inflight_per_instance=1)
    dispatcher.gate.clear()

    futures = [core.submit(infer_request(0), deadline=None)]
    await settle()
    assert dispatcher.batch_rows == [1], "the first request leaves alone: nothing is busy yet"
    futures += [core.submit(infer_request(i), deadline=None) for i in range(1, 6)]
    await settle()
    assert dispatcher.batch_rows == [1], "capacity is taken: the queue must wait, not dispatch"

    dispatcher.gate.set()
    responses = await gather(futures)

    assert dispatcher.batch_rows == [1, 5]
    assert [r.id for r in responses] == [f"req-{i}" for i in range(6)]
    for index, response in enumerate(responses):
        np.testing.assert_array_equal(output(response, "y"), rows_of(index, 1))


async def test_next_batch_leaves_before_the_returned_batch_is_answered(
    harness: Harness, dispatcher: EchoDispatcher
) -> None:
    """Writing a batch's responses is the batcher's largest piece of work per batch; done before
    the queued batch leaves, it keeps the worker idle that long."""
    core = harness.start(model_config(max_batch_size=8, delay_us=0), inflight_per_instance=1)
    dispatcher.gate.clear()
    first = core.submit(infer_request(0), deadline=None)
    await settle()
    queued = [core.submit(infer_request(i), deadline=None) for i in range(1, 4)]
    await settle()
    assert dispatcher.batch_rows == [1]
    dispatched_when_answered: list[list[int]] = []
    first.add_done_callback(lambda _: dispatched_when_answered.append(dispatcher.batch_rows))

    dispatcher.gate.set()
    responses = await gather([first, *queued])

    assert dispatched_when_answered == [[1, 3]]
    assert [r.id for r in responses] == [f"req-{i}" for i in range(4)]
    assert core.schedulers[(MODEL, "")].inflight == 0, "each batch frees its slot once"


async def test_a_half_full_batch_leaves_before_the_returned_batch_is_answered(
    harness: Harness, dispatcher: EchoDispatcher, clock: FakeClock
) -> None:
    """Coalescing must not undo the rule above: on a stream the queue holds a large batch when
    one returns, and holding it for more company would put the responses first again."""
    coalesce = 'parameters { key: "coalesce_window_us" value { string_value: "1000000" } }'
    core = harness.start(model_config(max_batch_size=40, delay_us=0) + coalesce)
    dispatcher.gate.clear()
    first = core.submit(infer_request(0), deadline=None)
    await settle()
    # A saturated front door, where coalescing holds (saturation.py decides it from load).
    core.schedulers[(MODEL, "")].closed_loop.saturated = True
    queued = []
    for index in range(1, 26):  # 1 ms apart: dense once the mean gap forgets its start
        clock.advance(0.001)
        queued.append(core.submit(infer_request(index), deadline=None))
    await settle()
    coalescing = core.schedulers[(MODEL, "")].queue.coalescing
    assert coalescing.hold_until(clock(), clock(), 1, 40) is not None, "a small batch would stay"
    dispatched_when_answered: list[list[int]] = []
    first.add_done_callback(lambda _: dispatched_when_answered.append(dispatcher.batch_rows))

    dispatcher.gate.set()
    await gather([first, *queued])

    assert dispatched_when_answered == [[1, 25]]


async def test_capacity_scales_with_ready_workers(
    harness: Harness, dispatcher: EchoDispatcher
) -> None:
    core = harness.start(model_config(delay_us=0), workers=2, inflight_per_instance=1)
    dispatcher.gate.clear()

    futures = []
    for index in range(3):
        futures.append(core.submit(infer_request(index), deadline=None))
        await settle()

    assert dispatcher.batch_rows == [1, 1], "two workers take one batch each; the third waits"
    dispatcher.gate.set()
    await gather(futures)
    assert dispatcher.batch_rows == [1, 1, 1]


async def test_each_model_instance_gets_a_batch_in_flight(
    harness: Harness, dispatcher: EchoDispatcher
) -> None:
    instances = 'parameters { key: "instance_count" value { string_value: "2" } }'
    core = harness.start(model_config(delay_us=0) + instances, workers=1, inflight_per_instance=1)
    dispatcher.gate.clear()

    futures = []
    for index in range(4):
        futures.append(core.submit(infer_request(index), deadline=None))
        await settle()

    assert dispatcher.batch_rows == [1, 1], "one worker, two instances: two batches in flight"
    dispatcher.gate.set()
    await gather(futures)
    assert dispatcher.batch_rows == [1, 1, 2], "the rest waited and left as one batch"


async def test_request_timed_out_in_queue_never_reaches_dispatcher(
    harness: Harness, dispatcher: EchoDispatcher, clock: FakeClock
) -> None:
    overridable = "default_queue_policy { allow_timeout_override: true }"
    core = harness.start(
        model_config(delay_us=0, queue_policy=overridable), inflight_per_instance=1
    )
    dispatcher.gate.clear()
    blocker = core.submit(infer_request(0), deadline=None)
    await settle()

    late = core.submit(infer_request(1, timeout_us=1_000), deadline=None)
    on_time = core.submit(infer_request(2), deadline=None)
    await settle()
    clock.advance(0.002)
    dispatcher.gate.set()
    results = await gather([blocker, late, on_time])

    assert isinstance(results[1], DeadlineExceeded)
    assert "timed out in the queue" in str(results[1])
    assert isinstance(results[2], pb.ModelInferResponse)
    sent = [np.frombuffer(b.inputs[0].raw, dtype="<f4") for b in dispatcher.batches]
    assert dispatcher.batch_rows == [1, 1]
    np.testing.assert_array_equal(sent[1], rows_of(2, 1).ravel())


async def test_request_past_its_deadline_never_reaches_dispatcher(
    harness: Harness, dispatcher: EchoDispatcher, clock: FakeClock
) -> None:
    core = harness.start(model_config(delay_us=0), inflight_per_instance=1)
    dispatcher.gate.clear()
    blocker = core.submit(infer_request(0), deadline=None)
    await settle()

    expired = core.submit(infer_request(1), deadline=clock() + 0.5)
    await settle()
    clock.advance(1.0)
    dispatcher.gate.set()
    results = await gather([blocker, expired])

    assert isinstance(results[1], DeadlineExceeded)
    assert dispatcher.batch_rows == [1]


async def test_cancelled_request_is_not_computed(
    harness: Harness, dispatcher: EchoDispatcher
) -> None:
    core = harness.start(model_config(delay_us=0), inflight_per_instance=1)
    dispatcher.gate.clear()
    blocker = core.submit(infer_request(0), deadline=None)
    await settle()
    abandoned = core.submit(infer_request(1), deadline=None)
    kept = core.submit(infer_request(2), deadline=None)
    abandoned.cancel()

    dispatcher.gate.set()
    await gather([blocker, kept])

    assert dispatcher.batch_rows == [1, 1]
    np.testing.assert_array_equal(
        np.frombuffer(dispatcher.batches[1].inputs[0].raw, dtype="<f4"), rows_of(2, 1).ravel()
    )


async def test_deadline_bounds_the_downstream_call(
    harness: Harness, dispatcher: EchoDispatcher, clock: FakeClock
) -> None:
    core = harness.start(model_config(delay_us=0))

    await gather([core.submit(infer_request(0), deadline=clock() + 0.25)])
    await gather([core.submit(infer_request(1), deadline=None)])

    assert dispatcher.timeouts[0] == pytest.approx(0.25)
    assert dispatcher.timeouts[1] is None


async def test_dispatch_error_fails_every_request_of_the_batch(
    harness: Harness, dispatcher: EchoDispatcher
) -> None:
    core = harness.start(model_config(max_batch_size=2, delay_us=10_000_000))
    dispatcher.fail_with = Unavailable("no worker")

    results = await gather([core.submit(infer_request(i), deadline=None) for i in range(2)])

    assert all(isinstance(r, Unavailable) for r in results)

    dispatcher.fail_with = None
    (response,) = await gather([core.submit(infer_request(5, rows=2), deadline=None)])
    assert isinstance(response, pb.ModelInferResponse), "the scheduler keeps serving"


class CutShortInput:
    """A deferred input (a client's shared-memory region) whose bytes are gone by the time the
    batch is assembled, as when its client truncates the segment."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def read(self) -> bytes:
        raise FailedPrecondition("region 'r' was truncated")

    def read_into(self, target: memoryview) -> None:
        raise FailedPrecondition("region 'r' was truncated")


async def test_an_input_that_cannot_be_read_fails_its_request_alone(
    harness: Harness, dispatcher: EchoDispatcher
) -> None:
    core = harness.start(model_config(max_batch_size=3, delay_us=10_000_000))
    cut = infer_request(1)
    futures = [
        core.submit(infer_request(0), deadline=None),
        core.submit(cut, deadline=None, raw_inputs=[CutShortInput(len(cut.raw_input_contents[0]))]),
        core.submit(infer_request(2), deadline=None),
    ]

    first, failed, last = await gather(futures)

    assert isinstance(failed, FailedPrecondition)
    assert dispatcher.batch_rows == [3]
    sent = np.frombuffer(dispatcher.batches[0].inputs[0].raw, dtype="<f4").reshape(3, WIDTH)
    np.testing.assert_array_equal(sent[1], np.zeros(WIDTH), "its rows travel as zeros")
    np.testing.assert_array_equal(output(first, "y"), rows_of(0, 1))
    np.testing.assert_array_equal(output(last, "y"), rows_of(2, 1))


async def test_unexpected_dispatch_error_becomes_internal(
    harness: Harness, dispatcher: EchoDispatcher
) -> None:
    core = harness.start(model_config(delay_us=0))
    dispatcher.fail_with = RuntimeError("boom")

    (result,) = await gather([core.submit(infer_request(0), deadline=None)])

    assert type(result) is TideserveError


async def test_submit_refuses_unknown_model_and_bad_input_at_once(harness: Harness) -> None:
    core = harness.start(model_config())

    with pytest.raises(NotFound, match="unknown model 'nope'"):
        core.submit(pb.ModelInferRequest(model_name="nope"), deadline=None)
    with pytest.raises(InvalidArgument, match="65536 bytes; names are at most 256") as refused:
        core.submit(pb.ModelInferRequest(model_name="n" * 65536), deadline=None)
    assert len(str(refused.value)) < 200, "the name is not echoed whole"
    bad = infer_request(0)
    bad.inputs[0].datatype = "INT32"
    with pytest.raises(InvalidArgument, match="datatype INT32"):
        core.submit(bad, deadline=None)


async def test_full_queue_refuses_at_once(harness: Harness, dispatcher: EchoDispatcher) -> None:
    core = harness.start(
        model_config(delay_us=10_000_000, queue_policy="default_queue_policy { max_queue_size: 2 }")
    )
    futures = [core.submit(infer_request(i), deadline=None) for i in range(2)]

    with pytest.raises(ResourceExhausted):
        core.submit(infer_request(2), deadline=None)
    assert all(not f.done() for f in futures)


async def test_frontend_report_counts_requests_and_latencies(
    harness: Harness, clock: FakeClock
) -> None:
    core = harness.start(model_config(delay_us=10_000_000))
    core.frontend_report("b-1")  # the report before: the arrival rate is the slope since it
    core.submit(infer_request(0), deadline=None)
    clock.advance(1.0)
    core.submit(infer_request(1), deadline=None)
    core.record(0.010)
    core.record(0.030)
    core.record(None)

    report = core.frontend_report("b-1")

    assert report.batcher_id == "b-1"
    assert report.requests_total == 2
    assert report.requests_failed == 1
    assert report.queued_requests == 2
    assert report.arrival_rate == pytest.approx(2.0)
    # Nearest rank (tideserve.latency), as the load drivers and benchmarks compute it: a latency
    # some request had, never a blend of two.
    assert report.latency_p50_seconds == pytest.approx(0.010)
    assert report.latency_p99_seconds == pytest.approx(0.030)


async def test_model_scheduler_directly_with_a_fixed_capacity(
    dispatcher: EchoDispatcher, clock: FakeClock
) -> None:
    entry: CatalogEntry = catalog_with(model_config(delay_us=0)).get(MODEL)
    scheduler = ModelScheduler(entry, dispatcher, lambda: 1, clock)
    scheduler.start()
    try:
        request = PendingRequest(
            request_id="direct",
            rows=1,
            inputs=[rows_of(3, 1).tobytes()],
            shape_key=((WIDTH,),),
            output_names=(),
            arrival=clock(),
        )
        (response,) = await gather([scheduler.submit(request)])
    finally:
        scheduler.close()

    assert response.id == "direct"
    np.testing.assert_array_equal(output(response, "y"), rows_of(3, 1))
    assert scheduler.inflight == 0


async def test_request_that_cannot_leave_before_its_deadline_is_refused_at_once(
    clock: FakeClock,
) -> None:
    dispatcher = EchoDispatcher(clock, seconds_per_batch=0.050)
    harness = Harness(dispatcher, clock)
    core = harness.start(model_config(max_batch_size=4, delay_us=0))
    try:
        # Measure: 4-row batches that take 50 ms each.
        measured = ADMISSION_MIN_BATCHES
        for i in range(measured):
            await gather([core.submit(infer_request(i, rows=4), deadline=None)])
        dispatcher.gate.clear()
        futures = [core.submit(infer_request(10), deadline=None)]
        await settle()
        futures += [core.submit(infer_request(i, rows=4), deadline=None) for i in range(11, 13)]
        queued = len(core.schedulers[(MODEL, "")].queue)

        # 8 rows ahead: 2 batches, and its own: 150 ms > 0.8 x 150 ms.
        with pytest.raises(ResourceExhausted, match="about 150 ms of work, too much for .* 150 ms"):
            core.submit(infer_request(13), deadline=clock() + 0.150)
        assert len(core.schedulers[(MODEL, "")].queue) == queued, "a refused request is not queued"

        futures.append(core.submit(infer_request(14), deadline=clock() + 0.250))
        dispatcher.gate.set()
        responses = await gather(futures)
        assert all(isinstance(r, pb.ModelInferResponse) for r in responses)
        assert dispatcher.batch_rows[measured:] == [1, 4, 4, 1], "everything admitted was served"
    finally:
        core.close()
        await settle()


async def test_before_any_batch_returns_deadlines_do_not_refuse_admission(
    harness: Harness, dispatcher: EchoDispatcher, clock: FakeClock
) -> None:
    core = harness.start(model_config(max_batch_size=8, delay_us=0))
    dispatcher.gate.clear()
    futures = [core.submit(infer_request(0), deadline=None)]
    await settle()
    futures += [core.submit(infer_request(i), deadline=None) for i in range(1, 6)]

    futures.append(core.submit(infer_request(6), deadline=clock() + 0.001))
    assert len(core.schedulers[(MODEL, "")].queue) == 6, "admitted: nothing says it would be late"
    dispatcher.gate.set()
    await gather(futures)


async def test_saturation_is_told_of_every_outstanding_request_until_it_is_answered(
    harness: Harness, dispatcher: EchoDispatcher
) -> None:
    """The closed-loop reading counts requests queued and in flight, and none once answered:
    a count that drifted would make a quiet front door read as saturated, or the reverse."""
    core = harness.start(model_config(max_batch_size=4, delay_us=0))
    dispatcher.gate.clear()
    futures = [core.submit(infer_request(index), deadline=None) for index in range(6)]
    await settle()
    scheduler = core.schedulers[(MODEL, "")]
    assert scheduler.inflight == 1, "a batch in flight"
    assert 0 < len(scheduler.queue) < 6, "the rest queued"
    assert scheduler.closed_loop.outstanding == 6

    dispatcher.gate.set()
    await gather(futures)
    await settle()

    assert scheduler.closed_loop.outstanding == 0
