"""A worker's `--threads` reaches the threads that run its models. torch's (OpenMP's) thread
count is set per OS thread, so setting it in the main thread alone left the executor threads
running every op on all cores, their idle OpenMP threads spinning."""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from services.worker.models import write_default_model
from services.worker.repository import scan
from services.worker.runner import ModelRunner, configure_threads

LIBGOMP = Path(torch.__file__).parent / "lib" / "libgomp.so.1"


def openmp_threads() -> int:
    """What OpenMP (and MKL, which follows it) will use for an op in the calling thread."""
    return int(ctypes.CDLL(str(LIBGOMP)).omp_get_max_threads())


@pytest.mark.skipif(not LIBGOMP.exists(), reason="this torch build does not use GNU OpenMP")
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: one thread either way")
def test_model_instances_run_with_the_workers_thread_count(tmp_path: Path) -> None:
    config = write_default_model(tmp_path) / "config.pbtxt"
    config.write_text(
        config.read_text() + 'parameters { key: "instance_count" value { string_value: "2" } }\n'
    )
    (entry,) = scan(tmp_path)
    default = torch.get_num_threads()
    configure_threads(1)
    try:
        runner = ModelRunner(entry.config, entry.version, entry.model_path, torch.device("cpu"))
        try:
            seen = {runner.executor.submit(openmp_threads).result() for _ in range(4)}
        finally:
            runner.close()
    finally:
        torch.set_num_threads(default)
    assert seen == {1}


def test_a_cpu_models_instances_run_batches_at_once_on_one_shared_module(tmp_path: Path) -> None:
    """`instance_count` on CPU is the number of batches computed at once: its executor threads
    share the one module (a CPU instance holds nothing else)."""
    config = write_default_model(tmp_path) / "config.pbtxt"
    config.write_text(
        config.read_text() + 'parameters { key: "instance_count" value { string_value: "2" } }\n'
    )
    (entry,) = scan(tmp_path)
    runner = ModelRunner(entry.config, entry.version, entry.model_path, torch.device("cpu"))
    try:
        (instance,) = runner.instances
        both_running = threading.Barrier(2, timeout=10)
        forward = instance.forward

        def meeting(inputs: list[np.ndarray]) -> list[np.ndarray]:
            both_running.wait()  # BrokenBarrierError unless two batches run at the same time
            return forward(inputs)

        instance.forward = meeting  # type: ignore[method-assign]
        dims = [max(d, 1) for d in runner.spec.inputs[0].dims]
        batch = [np.zeros([2, *dims], dtype=np.float32)]
        first, second = (runner.executor.submit(runner.compute, batch) for _ in range(2))
        assert first.result()[0].shape[0] == second.result()[0].shape[0] == 2
    finally:
        runner.close()
