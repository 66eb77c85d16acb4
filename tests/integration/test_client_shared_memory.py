"""Triton's system shared-memory extension, with tritonclient as the client: inputs and outputs
in /dev/shm regions over unary and stream calls, the regions' status, and clear errors for a
region registered twice or used after it was unregistered."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cluster import ROOT, Cluster

pytestmark = pytest.mark.integration


def test_tritonclient_inputs_and_outputs_in_system_shared_memory(
    cluster: Cluster, model_repository: Path
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tests.clients.triton_shm", cluster.batcher,
         str(model_repository), "tiny_cnn"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])
    tag = seen["tag"]

    assert seen["unary_close"]
    assert seen["unary_output_region"] == f"{tag}_out"
    assert seen["stream_error"] is None
    assert seen["stream_close"]
    assert seen["register_twice"] == "StatusCode.ALREADY_EXISTS"
    assert seen["status"] == [
        [f"{tag}_in", f"/{tag}_in", seen["input_bytes"]],
        [f"{tag}_out", f"/{tag}_out", seen["output_bytes"]],
    ]
    assert seen["after_unregister"] == "StatusCode.NOT_FOUND"
    assert seen["status_after"] == {}


def test_load_generator_sends_inputs_through_a_registered_region(cluster: Cluster) -> None:
    """tideserve's own load generator (bench.gpu --client-shared-memory) registers a region,
    gets answers from it, and leaves neither the registration nor the segment behind."""
    import asyncio

    import grpc

    from tideserve.v1 import inference_pb2 as pb
    from tideserve.v1 import inference_pb2_grpc
    from tideserve_tools.loadgen import closed_loop

    before = set(Path("/dev/shm").glob("loadgen-*"))
    result = asyncio.run(
        closed_loop(
            cluster.batcher, "tiny_cnn", concurrency=2, seconds=1.0, rows=3,
            shared_memory_inputs=True,
        )
    )
    assert result.errors == {}
    assert result.ok > 0
    assert set(Path("/dev/shm").glob("loadgen-*")) == before

    with grpc.insecure_channel(cluster.batcher) as channel:
        status = inference_pb2_grpc.GRPCInferenceServiceStub(channel).SystemSharedMemoryStatus(
            pb.SystemSharedMemoryStatusRequest(), timeout=10
        )
    assert not [name for name in status.regions if name.startswith("loadgen-")]
