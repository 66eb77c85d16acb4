"""Short CPU batches run on the worker's event loop when it is idle: a batch size measured within
INLINE_COMPUTE_S computes on the calling thread, skipping the hand-off to an executor thread and
back; a size not yet measured, a slow one, a busy worker and an emulated device use the executor,
as before. Either way the answer is the model's."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from services.worker.core import WorkerCore
from services.worker.runner import INLINE_COMPUTE_S, EmulatedDeviceRunner, ModelRunner
from tests.unit.test_worker_emulation import Double, runner
from tideserve.v1 import cluster_pb2

MODEL = "double"


def threads_of(model: ModelRunner) -> list[str]:
    """Record the thread each forward pass runs on."""
    seen: list[str] = []
    for instance in model.instances:
        forward = instance.forward

        def recording(inputs: list[np.ndarray], forward=forward) -> list[np.ndarray]:
            seen.append(threading.current_thread().name)
            return forward(inputs)

        instance.forward = recording  # type: ignore[method-assign]
    return seen


def batch(rows: int) -> cluster_pb2.Batch:
    x = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)
    message = cluster_pb2.Batch(batch_id=f"b{rows}", model_name=MODEL)
    message.inputs.add(name="x", datatype="FP32", shape=[rows, 4], raw=x.tobytes())
    return message


def answer(result: cluster_pb2.BatchResult, rows: int) -> np.ndarray:
    (output,) = result.outputs
    return np.frombuffer(output.raw, dtype=np.float32).reshape(rows, 4)


async def test_a_measured_short_batch_runs_on_the_loop_when_the_worker_is_idle(
    tmp_path: Path,
) -> None:
    model = runner(tmp_path, Double())
    seen = threads_of(model)
    core = WorkerCore("w", {MODEL: {"1": model}})
    try:
        first = await core.execute(batch(2))
        assert 2 in model.service_times, "the executor's run measured the size"
        # What later batches of a doubling settle at (the first run at a shape is slower).
        model.service_times[2] = INLINE_COMPUTE_S / 10
        second = await core.execute(batch(2))
    finally:
        model.close()
    main = threading.current_thread().name
    assert seen[0] != main, "a size never measured goes to the executor"
    assert seen[1] == main, "once measured short, it runs inline"
    for result in (first, second):
        np.testing.assert_array_equal(answer(result, 2), 2 * np.arange(8).reshape(2, 4))
    assert core.completed == 2
    assert (core.queued, core.inflight) == (0, 0)


@pytest.mark.parametrize("why", ["slow", "busy"])
async def test_a_slow_size_or_a_busy_worker_uses_the_executor(tmp_path: Path, why: str) -> None:
    model = runner(tmp_path, Double())
    seen = threads_of(model)
    core = WorkerCore("w", {MODEL: {"1": model}})
    model.service_times[3] = 10 * INLINE_COMPUTE_S if why == "slow" else 0.0
    if why == "busy":
        core.inflight = 1  # another batch computing on the executor
    try:
        result = await core.execute(batch(3))
    finally:
        model.close()
    assert len(seen) == 1
    assert seen[0] != threading.current_thread().name
    np.testing.assert_array_equal(answer(result, 3), 2 * np.arange(12).reshape(3, 4))


async def test_an_emulated_device_never_runs_inline(tmp_path: Path) -> None:
    model = runner(tmp_path, Double())
    seen = threads_of(model)
    emulated = EmulatedDeviceRunner(model, slowdown=1.0)
    core = WorkerCore("w", {MODEL: {"1": emulated}})
    model.service_times[1] = 0.0
    try:
        await core.execute(batch(1))
    finally:
        emulated.close()
    assert seen[0] != threading.current_thread().name, "its time is slept: never on the loop"
