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
        slowdown: float = 1.0,
        service_profile: ServiceTimeProfile | None = None,
    ) -> None:
        self.config = config
        self.spec = ModelSpec.from_config(config)
        spec = self.spec
        self.version = version
        self.device = device
        self.slowdown = slowdown
        # Emulated device: each batch is padded up to this profile's t(b) (tideserve/profiles.py).
        self.service_profile = service_profile
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
            self.instances = [
                CpuInstance(self.module, self._ordered_outputs) for _ in range(spec.instance_count)
            ]
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
        """The instance owned by the calling executor thread (claimed on its first batch)."""
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
        Records the batch's compute time by batch size: times the configured slowdown, and with a
        service profile padded up to its t(rows), so the balancer and batcher see the emulated
        device's time (the wall time the batch really took)."""
        started = time.perf_counter()
        arrays = self._instance().forward(inputs)
        elapsed = time.perf_counter() - started
        if self.slowdown > 1.0:
            time.sleep(elapsed * (self.slowdown - 1.0))
            elapsed *= self.slowdown
        rows = inputs[0].shape[0] if self.spec.batches and inputs else 1
        if self.service_profile is not None:
            time.sleep(max(0.0, self.service_profile.seconds_for(rows) - elapsed))
            elapsed = time.perf_counter() - started
        previous = self.service_times.get(rows)
        self.service_times[rows] = (
            elapsed if previous is None else previous + SERVICE_TIME_ALPHA * (elapsed - previous)
        )
        return arrays

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


def configure_threads(threads: int) -> None:
    """Intra-op threads for every model of this worker (the runners' executor threads take the
    count from here); 0 leaves torch's default, one per core."""
    if threads > 0:
        torch.set_num_threads(threads)
