"""How one model instance runs a batch: on the CPU as plain calls, on a GPU with the habits that
keep it fed (each instance its own CUDA stream, pinned host buffers and non-blocking copies,
optional FP16/BF16, CUDA graphs for fixed batch sizes).

A model instance is owned by one executor thread, so nothing here is shared between threads.
Per-model options come from the config's `parameters` (see tideserve.modelconfig):
  precision                fp32 (default), fp16 or bf16 — GPU only; outputs return as FP32
  cuda_graph_batch_sizes   e.g. "1,8,32,64": capture a CUDA graph per size at load; a batch is
                           padded up to the nearest captured size and replayed
"""

from __future__ import annotations

import bisect
import logging
import warnings
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import torch

from tideserve.errors import InvalidArgument
from tideserve.modelconfig import ModelSpec

logger = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# cudaHostRegister flags: every CUDA context may use the pinning; the mapping is read-only
# (shared-memory segments are mapped PROT_READ, and the device only reads them).
HOST_REGISTER_PORTABLE = 0x01
HOST_REGISTER_READ_ONLY = 0x08

# Inputs read in place from read-only shared memory become tensors the model never writes to
# (they are copied to the device first); torch's warning about that would fire per batch.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


class Instance(Protocol):
    def forward(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Inputs in the config's input order -> outputs in its output order, on the host."""
        ...


OutputPicker = Callable[[object], list[torch.Tensor]]


class CudaHostPinning:
    """Pins shared-memory segments with cudaHostRegister (tideserve.shared_memory.HostPinning),
    so a CudaInstance copies a batch to the GPU straight from the segment."""

    def pin(self, address: int, size: int) -> bool:
        try:
            error = int(
                torch.cuda.cudart().cudaHostRegister(
                    address, size, HOST_REGISTER_PORTABLE | HOST_REGISTER_READ_ONLY
                )
            )
        except (AssertionError, AttributeError, RuntimeError) as exc:  # no CUDA runtime here
            error, detail = -1, str(exc)
        else:
            detail = ""
        if error != 0:
            logger.warning(
                "could not pin a shared-memory segment; its batches are staged through "
                "pinned buffers",
                extra={"bytes": size, "cuda_error": error, "detail": detail},
            )
            return False
        return True

    def unpin(self, address: int) -> None:
        torch.cuda.cudart().cudaHostUnregister(address)


class CpuInstance:
    def __init__(self, module: torch.nn.Module, pick_outputs: OutputPicker) -> None:
        self.module = module
        self.pick_outputs = pick_outputs

    def forward(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        with torch.inference_mode():
            tensors = [torch.from_numpy(a) for a in inputs]
            outputs = self.pick_outputs(_call(self.module, tensors))
            return [o.detach().contiguous().numpy() for o in outputs]


class CudaInstance:
    """One model instance on one GPU: its own stream, pinned staging buffers, CUDA graphs."""

    def __init__(
        self, module: torch.nn.Module, pick_outputs: OutputPicker, spec: ModelSpec,
        device: torch.device,
    ) -> None:
        self.module = module
        self.pick_outputs = pick_outputs
        self.spec = spec
        self.device = device
        self.dtype = PRECISIONS[spec.parameters.get("precision", "fp32")]
        self.stream = torch.cuda.Stream(device=device)
        # Pinned host buffers by (input index, shape): reused so each batch pays one memcpy
        # into page-locked memory and then a DMA, never a pageable-memory staging copy.
        self._pinned: dict[tuple[int, tuple[int, ...]], torch.Tensor] = {}
        self._host_outputs: dict[tuple[int, tuple[int, ...], torch.dtype], torch.Tensor] = {}
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, list, list]] = {}
        self._graph_sizes: list[int] = []

    def _staged(self, index: int, array: np.ndarray) -> torch.Tensor:
        """The input in page-locked memory: as it is when it already lies there (a pinned
        shared-memory segment), else copied into this instance's pinned buffer."""
        source = torch.from_numpy(array)
        if source.is_pinned():
            return source
        key = (index, array.shape)
        buffer = self._pinned.get(key)
        if buffer is None:
            buffer = torch.empty(array.shape, dtype=source.dtype, pin_memory=True)
            self._pinned[key] = buffer
        buffer.copy_(source)
        return buffer

    def _host_output(self, index: int, tensor: torch.Tensor) -> torch.Tensor:
        dtype = torch.float32 if tensor.is_floating_point() else tensor.dtype
        key = (index, tuple(tensor.shape), dtype)
        buffer = self._host_outputs.get(key)
        if buffer is None:
            buffer = torch.empty(tensor.shape, dtype=dtype, pin_memory=True)
            self._host_outputs[key] = buffer
        return buffer

    def _device_dtype(self, host_dtype: torch.dtype) -> torch.dtype:
        """Floating inputs run at the model's precision; integer inputs keep their type."""
        return self.dtype if host_dtype.is_floating_point else host_dtype

    def capture_graphs(
        self, sizes: Sequence[int], sample_inputs: Sequence[np.ndarray]
    ) -> None:
        """Capture one CUDA graph per batch size (static inputs and outputs on the device);
        `sample_inputs` are batch-1 inputs giving each input's dims and type."""
        with torch.inference_mode(), torch.cuda.stream(self.stream):
            for size in sorted(set(sizes)):
                static_inputs = [
                    torch.zeros(
                        [size, *sample.shape[1:]], device=self.device,
                        dtype=self._device_dtype(torch.from_numpy(sample[:0]).dtype),
                    )
                    for sample in sample_inputs
                ]
                for _ in range(3):  # warm up on this stream before capture, as CUDA requires
                    _call(self.module, static_inputs)
                self.stream.synchronize()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=self.stream):
                    static_outputs = self.pick_outputs(_call(self.module, static_inputs))
                self._graphs[size] = (graph, static_inputs, static_outputs)
        self._graph_sizes = sorted(self._graphs)
        logger.info("captured CUDA graphs", extra={"model": self.spec.name,
                                                   "batch_sizes": self._graph_sizes})

    def forward(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        rows = inputs[0].shape[0] if self.spec.batches and inputs else 1
        with torch.inference_mode(), torch.cuda.stream(self.stream):
            staged = [self._staged(i, a) for i, a in enumerate(inputs)]
            index = bisect.bisect_left(self._graph_sizes, rows) if self.spec.batches else -1
            if 0 <= index < len(self._graph_sizes):
                graph, static_inputs, static_outputs = self._graphs[self._graph_sizes[index]]
                for target, source in zip(static_inputs, staged, strict=True):
                    target[:rows].copy_(source, non_blocking=True)
                    target[rows:].zero_()
                graph.replay()
                device_outputs = [o[:rows] for o in static_outputs]
            else:
                tensors = [
                    s.to(self.device, non_blocking=True).to(self._device_dtype(s.dtype))
                    for s in staged
                ]
                device_outputs = self.pick_outputs(_call(self.module, tensors))
            host = [self._host_output(i, o) for i, o in enumerate(device_outputs)]
            for target, source in zip(host, device_outputs, strict=True):
                target.copy_(source, non_blocking=True)
            self.stream.synchronize()
        # Copies: the pinned buffers are reused by this instance's next batch while the event
        # loop may still be encoding this one's answer.
        return [h.numpy().copy() for h in host]


def _call(module: torch.nn.Module, tensors: Sequence[torch.Tensor]) -> object:
    try:
        return module(*tensors)
    except RuntimeError as exc:
        raise InvalidArgument(f"the model rejected the batch: {exc}") from exc


def graph_batch_sizes(spec: ModelSpec) -> list[int]:
    raw = spec.parameters.get("cuda_graph_batch_sizes", "")
    sizes = [int(s) for s in raw.split(",") if s.strip()]
    if any(not 1 <= s <= max(spec.max_batch_size, 1) for s in sizes):
        raise InvalidArgument(
            f"model {spec.name}: cuda_graph_batch_sizes {sizes} must lie in 1..max_batch_size"
        )
    return sizes
