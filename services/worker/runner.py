"""Running one model: loading it, executing batches off the event loop, and keeping the measured
service time by batch size that the worker reports to the balancer."""

from __future__ import annotations

import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from tideserve.errors import InvalidArgument
from tideserve.modelconfig import ModelSpec
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
    """Executes batches of one model. Each model instance is one executor thread, so several
    instances overlap their batches; the event loop never blocks on a forward pass."""

    def __init__(
        self,
        config: mc.ModelConfig,
        version: str,
        path: Path,
        device: torch.device,
        slowdown: float = 1.0,
    ) -> None:
        self.config = config
        self.spec = ModelSpec.from_config(config)
        spec = self.spec
        self.version = version
        self.device = device
        self.slowdown = slowdown
        self.module = load_module(path, device)
        self.executor = ThreadPoolExecutor(
            max_workers=spec.instance_count, thread_name_prefix=f"model-{spec.name}"
        )
        self.service_times: dict[int, float] = {}

    def warm_up(self) -> None:
        """Forward passes at batch size 1 so the first request does not pay for lazy
        initialisation; not counted in the service times the worker reports."""
        rows = [1] if self.spec.batches else []
        inputs = [
            np.zeros([*rows, *[max(d, 1) for d in t.dims]], dtype=np.float32)
            if t.datatype == "FP32"
            else None
            for t in self.spec.inputs
        ]
        if all(i is not None for i in inputs):
            for _ in range(2):
                self._forward(inputs)  # type: ignore[arg-type]

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Run one batch; inputs in the config's input order, outputs in its output order.
        Records the batch's compute time (times the configured slowdown) by batch size."""
        started = time.perf_counter()
        arrays = self._forward(inputs)
        elapsed = time.perf_counter() - started
        if self.slowdown > 1.0:
            time.sleep(elapsed * (self.slowdown - 1.0))
            elapsed *= self.slowdown
        rows = inputs[0].shape[0] if self.spec.batches and inputs else 1
        previous = self.service_times.get(rows)
        self.service_times[rows] = (
            elapsed if previous is None else previous + SERVICE_TIME_ALPHA * (elapsed - previous)
        )
        return arrays

    def _forward(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        with torch.inference_mode():
            tensors = [torch.from_numpy(a).to(self.device, non_blocking=True) for a in inputs]
            try:
                result = self.module(*tensors)
            except RuntimeError as exc:
                raise InvalidArgument(f"model {self.spec.name} rejected the batch: {exc}") from exc
            outputs = self._ordered_outputs(result)
            return [o.detach().to("cpu").contiguous().numpy() for o in outputs]

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
    if threads > 0:
        torch.set_num_threads(threads)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
