"""The worker's logic without gRPC: executes Batch messages on the loaded models and keeps the
load figures it reports in heartbeats."""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections.abc import Callable

from services.worker.runner import Runner
from tideserve import codec, shared_memory
from tideserve.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
    VersionNotServed,
)
from tideserve.v1 import cluster_pb2

logger = logging.getLogger(__name__)


class WorkerCore:
    def __init__(
        self,
        worker_id: str,
        runners: dict[str, dict[str, Runner]],
        shared_inputs: shared_memory.SegmentReader | None = None,
    ) -> None:
        self.worker_id = worker_id
        # Model name -> version -> runner, ascending versions (ModelLifecycle keeps it).
        self.runners = runners
        # Reads inputs a batcher on this host left in shared memory; None: this worker takes
        # only inline bytes.
        self.shared_inputs = shared_inputs
        self.queued = 0
        self.inflight = 0
        self.completed = 0
        self.failed = 0
        self.busy_seconds = 0.0
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    async def execute(
        self, batch: cluster_pb2.Batch, deadline: float | None = None
    ) -> cluster_pb2.BatchResult:
        """Run a batch; one whose `deadline` (time.monotonic) passes before its turn comes is
        dropped unrun with DeadlineExceeded: nobody is waiting for its answer."""
        runner = self._runner(batch.model_name, batch.model_version)
        views: list[memoryview] = []
        decoding = time.perf_counter()
        try:
            arrays = self._decode_inputs(runner, batch, views)
        except Exception:
            self._done_reading(views)
            raise
        submitted = time.perf_counter()
        started: list[float] = []

        def run() -> list:
            started.append(time.perf_counter())
            self.queued -= 1
            if deadline is not None and time.monotonic() >= deadline:
                raise DeadlineExceeded(f"batch {batch.batch_id} expired before it was computed")
            self.inflight += 1
            try:
                return runner.run(arrays)
            finally:
                self.inflight -= 1

        idle = self.queued == 0 and self.inflight == 0
        self.queued += 1
        self._idle.clear()
        try:
            if idle and runner.runs_inline(arrays):
                try:
                    outputs = run()
                finally:
                    self._done_reading(views)
            else:
                outputs = await self._on_executor(runner, run, views)
        except Exception:
            self.failed += 1
            raise
        finally:
            if self.queued == 0 and self.inflight == 0:
                self._idle.set()
        self.completed += 1
        done = time.perf_counter()
        self.busy_seconds += done - started[0]
        result = cluster_pb2.BatchResult(
            batch_id=batch.batch_id,
            worker_id=self.worker_id,
            queue_seconds=started[0] - submitted,
            compute_seconds=done - started[0],
            input_seconds=submitted - decoding,
            model_version=runner.version,
        )
        wanted = set(batch.output_names)
        for spec, array in zip(runner.spec.outputs, outputs, strict=True):
            if wanted and spec.name not in wanted:
                continue
            datatype, shape, raw = codec.encode(array)
            result.outputs.add(name=spec.name, datatype=datatype, shape=shape, raw=raw)
        result.output_seconds = time.perf_counter() - done
        return result

    async def _on_executor(
        self, runner: Runner, run: Callable[[], list], views: list[memoryview]
    ) -> list:
        """`run` on the runner's executor thread, the event loop serving meanwhile."""
        loop = asyncio.get_running_loop()
        computing = runner.executor.submit(run)
        # Views are released when the thread is done with them, even if this call is
        # cancelled first: a pinned segment must not be unpinned under a running copy.
        computing.add_done_callback(
            lambda _: loop.is_closed() or loop.call_soon_threadsafe(self._done_reading, views)
        )
        return await asyncio.wrap_future(computing)

    def _runner(self, model: str, version: str) -> Runner:
        """The runner of `version` of `model`; the latest served when `version` is empty."""
        versions = self.runners.get(model)
        if not versions:
            raise NotFound(f"worker {self.worker_id} does not serve model {model!r}")
        runner = versions.get(version) if version else list(versions.values())[-1]
        if runner is None:
            raise VersionNotServed(
                f"worker {self.worker_id} does not serve version {version!r} of model {model!r}; "
                f"it serves versions {list(versions)}"
            )
        return runner

    def _done_reading(self, views: list[memoryview]) -> None:
        if self.shared_inputs is not None:
            for view in views:
                self.shared_inputs.done(view)

    def _decode_inputs(
        self, runner: Runner, batch: cluster_pb2.Batch, views: list[memoryview]
    ) -> list:
        """The batch's inputs as arrays; the shared-memory views they read go in `views`."""
        by_name = {t.name: t for t in batch.inputs}
        arrays = []
        for spec in runner.spec.inputs:
            tensor = by_name.get(spec.name)
            if tensor is None:
                raise InvalidArgument(f"batch for {batch.model_name} lacks input {spec.name!r}")
            if tensor.datatype != spec.datatype:
                raise InvalidArgument(
                    f"input {spec.name!r} is {tensor.datatype}, model expects {spec.datatype}"
                )
            if not tensor.HasField("shared"):
                data: bytes | memoryview = tensor.raw
            elif self.shared_inputs is None:
                raise FailedPrecondition(
                    f"worker {self.worker_id} does not take inputs through shared memory"
                )
            else:
                data = self.shared_inputs.view(tensor.shared)
                views.append(data)
            arrays.append(codec.decode(tensor.datatype, tensor.shape, data))
        return arrays

    def check_accepting(self) -> None:
        if self.draining:
            raise Unavailable(f"worker {self.worker_id} is draining")

    async def wait_idle(self) -> None:
        await self._idle.wait()

    def load_report(self) -> cluster_pb2.LoadReport:
        report = cluster_pb2.LoadReport(
            queued_batches=max(self.queued, 0),
            inflight_batches=self.inflight,
            memory_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            completed_batches=self.completed,
            failed_batches=self.failed,
            busy_seconds=self.busy_seconds,
        )
        for name, versions in self.runners.items():
            # The latest version's: unversioned requests, most of them, go to it.
            latest = list(versions.values())[-1]
            for size, seconds in sorted(latest.service_times.items()):
                report.service_times.add(batch_size=size, seconds=seconds, model=name)
        return report

    def registration(self, address: str, device: str) -> cluster_pb2.WorkerRegistration:
        registration = cluster_pb2.WorkerRegistration(
            worker_id=self.worker_id,
            address=address,
            device=device,
            shared_memory_domain=self.shared_inputs.domain if self.shared_inputs else "",
        )
        for versions in self.runners.values():
            latest = list(versions.values())[-1]
            registration.models.add(config=latest.config, versions=list(versions))
        return registration
