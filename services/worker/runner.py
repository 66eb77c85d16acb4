"""Running one model: loading it, executing batches off the event loop, and keeping the measured
service time by batch size that the worker reports to the balancer."""

from __future__ import annotations

import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from services.worker.execution import (
    PRECISIONS,
    CpuInstance,
    CudaInstance,
    Instance,
    graph_batch_sizes,
)
from tideserve.codec import NUMPY_DTYPES
from tideserve.errors import InvalidArgument
from tideserve.modelconfig import ModelSpec
from tideserve.profiles import ServiceTimeProfile
from tideserve.v1 import model_config_pb2 as mc

# Input arrays come from np.frombuffer over the request bytes and are read-only; models only read
# their inputs, so sharing the buffer with torch is safe and saves a copy per batch.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

# Weight of a new observation in the smoothed service time.
SERVICE_TIME_ALPHA = 0.2
# A CPU batch whose size computed within this (smoothed) runs on the event loop when the worker
# is idle (ModelRunner.runs_inline): 1 ms holds the loop's other work (heartbeats, the next
# batch's decoding) back by no more than a batch's round trip through the hops already costs.
INLINE_COMPUTE_S = 0.001


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def load_module(path: Path, device: torch.device) -> torch.nn.Module:
    """TorchScript (.pt) or torch.export (.pt2), moved to `device` and put in eval mode."""
    if path.suffix == ".pt2":
        module = torch.export.load(str(path)).module()
        return module.to(device)
    return torch.jit.load(str(path), map_location=device).eval()


class ModelRunner:
    """Executes batches of one model. Each model instance is one executor thread with its own
    execution state (a CUDA stream and buffers on GPU), so instances overlap their batches; the
    event loop never blocks on a forward pass."""

    def __init__(
        self,
        config: mc.ModelConfig,
        version: str,
        path: Path,
        device: torch.device,
    ) -> None:
        self.config = config
        self.spec = ModelSpec.from_config(config)
        spec = self.spec
        self.version = version
        self.device = device
        self.module = load_module(path, device)
        precision = spec.parameters.get("precision", "fp32")
        if precision not in PRECISIONS:
            raise InvalidArgument(
                f"model {spec.name}: precision {precision!r} is not one of {list(PRECISIONS)}"
            )
        self.graph_sizes = graph_batch_sizes(spec)
        if device.type == "cuda":
            self.module = self.module.to(PRECISIONS[precision])
            self.instances: list[Instance] = [
                CudaInstance(self.module, self._ordered_outputs, spec, device)
                for _ in range(spec.instance_count)
            ]
        else:
            # A CPU instance holds nothing but the module: the executor's `instance_count`
            # threads (and the event loop, for a short batch run inline) share one.
            self.instances = [CpuInstance(self.module, self._ordered_outputs)]
        self._unclaimed = list(self.instances)
        self._local = threading.local()
        # torch's intra-op thread count (OpenMP's, which MKL follows) is set per OS thread: an
        # executor thread would run each op on every core of the machine, whatever --threads
        # set in the main thread, and its idle OpenMP threads spin. A one-thread mlp worker
        # burnt 1.05 cores at 137 batches/s on a 2-core machine, one of them spinning.
        self.executor = ThreadPoolExecutor(
            max_workers=spec.instance_count,
            thread_name_prefix=f"model-{spec.name}",
            initializer=torch.set_num_threads,
            initargs=(torch.get_num_threads(),),
        )
        self.service_times: dict[int, float] = {}

    def _instance(self) -> Instance:
        """The instance for the calling thread: on CPU the one every thread shares; a GPU
        instance (its stream, its buffers) belongs to the executor thread that claims it on its
        first batch."""
        if self.device.type == "cpu":
            return self.instances[0]
        instance = getattr(self._local, "instance", None)
        if instance is None:
            instance = self._local.instance = self._unclaimed.pop()
        return instance

    def warm_up(self) -> None:
        """Forward passes at batch size 1 on every instance, and CUDA graph capture, so the first
        request pays for no lazy initialisation; not counted in the reported service times."""
        rows = [1] if self.spec.batches else []
        if any(t.datatype not in NUMPY_DTYPES for t in self.spec.inputs):
            return
        inputs = [
            np.zeros([*rows, *[max(d, 1) for d in t.dims]], dtype=NUMPY_DTYPES[t.datatype])
            for t in self.spec.inputs
        ]
        for instance in self.instances:
            for _ in range(2):
                instance.forward(inputs)
            if isinstance(instance, CudaInstance) and self.graph_sizes and self.spec.batches:
                instance.capture_graphs(self.graph_sizes, inputs)

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Run one batch; inputs in the config's input order, outputs in its output order.
        Records the batch's compute time by batch size."""
        started = time.perf_counter()
        arrays = self.compute(inputs)
        self.record(self.rows(inputs), time.perf_counter() - started)
        return arrays

    def runs_inline(self, inputs: list[np.ndarray]) -> bool:
        """Whether this batch may run on the calling (event-loop) thread rather than an executor
        thread: a CPU model (its instance is shared, `_instance`) whose batches of this size
        computed within INLINE_COMPUTE_S, for which the hand-off to a thread and back (two
        wake-ups and a thread switch) is a large share of the batch."""
        if self.device.type != "cpu":
            return False
        seconds = self.service_times.get(self.rows(inputs))
        return seconds is not None and seconds <= INLINE_COMPUTE_S

    def compute(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """The forward pass alone, on the calling executor thread's instance; nothing recorded."""
        return self._instance().forward(inputs)

    def rows(self, inputs: list[np.ndarray]) -> int:
        return inputs[0].shape[0] if self.spec.batches and inputs else 1

    def record(self, rows: int, seconds: float) -> None:
        """Fold a batch of `rows` that took `seconds` into the smoothed service time reported to
        the balancer and batcher."""
        previous = self.service_times.get(rows)
        self.service_times[rows] = (
            seconds if previous is None else previous + SERVICE_TIME_ALPHA * (seconds - previous)
        )

    def _ordered_outputs(self, result: object) -> list[torch.Tensor]:
        names = [o.name for o in self.spec.outputs]
        if isinstance(result, torch.Tensor):
            result = (result,)
        if isinstance(result, dict):
            try:
                return [result[name] for name in names]
            except KeyError as exc:
                raise InvalidArgument(
                    f"model {self.spec.name} did not return output {exc}"
                ) from exc
        outputs = list(result)  # type: ignore[call-overload]
        if len(outputs) < len(names):
            raise InvalidArgument(
                f"model {self.spec.name} returned {len(outputs)} outputs, config names {len(names)}"
            )
        return outputs[: len(names)]

    def close(self) -> None:
        self.executor.shutdown(wait=True)


class EmulatedDeviceRunner:
    """A runner standing in for a slower device, for benchmarks on a machine without it: each
    batch's compute time is multiplied by `slowdown`, then padded up to the profile's t(rows)
    (tideserve/profiles.py; never shortened), and that emulated time is the one recorded, so the
    balancer and batcher see the emulated device's service time (the wall time the batch really
    took). The worker's wiring picks it when the emulation settings are on; otherwise the model's
    own runner serves and pays nothing for emulation."""

    def __init__(
        self,
        runner: ModelRunner,
        slowdown: float = 1.0,
        service_profile: ServiceTimeProfile | None = None,
    ) -> None:
        if slowdown < 1.0:
            raise ValueError("slowdown must be >= 1.0")
        self.runner = runner
        self.slowdown = slowdown
        self.service_profile = service_profile
        # What the worker reads of a runner, shared with the wrapped one.
        self.config = runner.config
        self.spec = runner.spec
        self.version = runner.version
        self.executor = runner.executor
        self.service_times = runner.service_times

    def runs_inline(self, inputs: list[np.ndarray]) -> bool:
        """Never: the emulated device's time is slept, which would stop the event loop."""
        return False

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        started = time.perf_counter()
        arrays = self.runner.compute(inputs)
        elapsed = time.perf_counter() - started
        if self.slowdown > 1.0:
            time.sleep(elapsed * (self.slowdown - 1.0))
            elapsed *= self.slowdown
        rows = self.runner.rows(inputs)
        if self.service_profile is not None:
            time.sleep(max(0.0, self.service_profile.seconds_for(rows) - elapsed))
            elapsed = time.perf_counter() - started
        self.runner.record(rows, elapsed)
        return arrays

    def close(self) -> None:
        self.runner.close()


# A model's runner as the worker holds it: its own, or wrapped to emulate a slower device.
Runner = ModelRunner | EmulatedDeviceRunner


def configure_threads(threads: int) -> None:
    """Intra-op threads for every model of this worker (the runners' executor threads take the
    count from here); 0 leaves torch's default, one per core."""
    if threads > 0:
        torch.set_num_threads(threads)
