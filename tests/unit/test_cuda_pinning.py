"""A GPU worker pins shared-memory segments; where CUDA cannot (a CPU-only torch, a driver that
refuses), the segment stays pageable and batches are staged as before, never failed."""

from __future__ import annotations

import mmap

import numpy as np
import pytest
import torch

from services.worker.execution import CudaHostPinning


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal needs a machine without CUDA")
def test_pinning_without_cuda_is_refused_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    buffer = mmap.mmap(-1, mmap.PAGESIZE)
    probe = np.frombuffer(buffer, dtype=np.uint8)
    address = probe.ctypes.data
    del probe

    assert CudaHostPinning().pin(address, len(buffer)) is False
    assert "could not pin a shared-memory segment" in caplog.text
    buffer.close()
