"""The floor servers: bare grpc.aio processes in tideserve's layout (a front door batching
what is queued, bare hops forwarding bytes, the last optionally running the model), with none of
tideserve's code. `bench.front_door_floor` and `bench.suite` measure them beside tideserve;
`bench.front_door_scaling` runs N front doors on one port."""

from __future__ import annotations

import asyncio
import math
import multiprocessing as mp
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc

from bench.hop_floor import forwarding_to, hop_stub, serve_hop
from tideserve import serving
from tideserve.modelconfig import ModelSpec, read_config
from tideserve.procs import free_port
from tideserve.v1 import inference_pb2 as pb
from tideserve.v1 import inference_pb2_grpc

MODEL = "mlp"
# mlp's tensors, FP32 both ways.
INPUT_DIMS, OUTPUT_DIMS = [256], [10]
INPUT_ROW_BYTES, OUTPUT_ROW_BYTES = 4 * math.prod(INPUT_DIMS), 4 * math.prod(OUTPUT_DIMS)
MAX_BATCH_ROWS = 64
Context = grpc.aio.ServicerContext


def _hop_server(port: int, downstream: int | None, model: Path | None, ready: Any) -> None:
    """A bare hop: forward the bytes downstream; the last answers a zero output per row, or
    runs `model` (TorchScript, one thread, on the event loop) on the batch."""

    async def main() -> None:
        if downstream is None and model is not None:
            import numpy as np
            import torch

            torch.set_num_threads(1)
            module = torch.jit.load(str(model), map_location="cpu").eval()

            async def handle(batch: bytes, context: grpc.aio.ServicerContext) -> bytes:
                rows = np.frombuffer(batch, dtype=np.float32).reshape(-1, *INPUT_DIMS)
                with torch.inference_mode():
                    return module(torch.from_numpy(rows.copy())).numpy().tobytes()
        elif downstream is None:

            async def handle(batch: bytes, context: grpc.aio.ServicerContext) -> bytes:
                return bytes(len(batch) // INPUT_ROW_BYTES * OUTPUT_ROW_BYTES)
        else:
            handle = forwarding_to(downstream)
        await serve_hop(port, handle, ready)

    serving.run_service(main())


class BatchingFrontDoor(inference_pb2_grpc.GRPCInferenceServiceServicer):
    """The KServe v2 calls a load generator makes, answered with the least work. What a
    subclass queues with `queued` leaves as one batch through `run_batch` whenever one of
    `inflight` batch slots is free, with everything queued up to `max_batch_rows` (Triton's rule
    with no delay); each request gets its share of the batch's answer."""

    def __init__(self, config: Any, inflight: int, max_batch_rows: int) -> None:
        self.config = config
        self.spec = ModelSpec.from_config(config)
        self.metadata = pb.ModelMetadataResponse(name=config.name, platform=self.spec.platform)
        for tensors, target in (
            (self.spec.inputs, self.metadata.inputs),
            (self.spec.outputs, self.metadata.outputs),
        ):
            for tensor in tensors:
                target.add(name=tensor.name, datatype=tensor.datatype, shape=[-1, *tensor.dims])
        self.pending: deque[tuple[int, Any, asyncio.Future]] = deque()
        self.free_slots = inflight
        self.max_batch_rows = max_batch_rows

    async def answer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        raise NotImplementedError

    async def run_batch(self, items: list[tuple[int, Any]]) -> list[Any]:
        """The answers to a batch of (rows, payload), one per item."""
        raise NotImplementedError

    async def queued(self, rows: int, payload: Any) -> Any:
        """`payload`'s share of the answer to the batch it joins."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.pending.append((rows, payload, future))
        if self.free_slots:
            self.free_slots -= 1
            loop.create_task(self._dispatch())
        return await future

    async def _dispatch(self) -> None:
        """One batch slot: a batch leaves with what is queued when this slot's last came back."""
        while self.pending:
            batch, rows = [], 0
            while self.pending and rows + self.pending[0][0] <= self.max_batch_rows:
                item = self.pending.popleft()
                batch.append(item)
                rows += item[0]
            answers = await self.run_batch([(rows, payload) for rows, payload, _ in batch])
            for (_, _, future), answer in zip(batch, answers, strict=True):
                future.set_result(answer)
        self.free_slots += 1

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: Context
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: Context
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=True)

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: Context
    ) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=True)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Context
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="floor")

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: Context
    ) -> pb.ModelMetadataResponse:
        return self.metadata

    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: Context
    ) -> pb.ModelConfigResponse:
        return pb.ModelConfigResponse(config=self.config)

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: Context
    ) -> pb.ModelInferResponse:
        return await self.answer(request)

    async def ModelStreamInfer(
        self, requests: AsyncIterator[pb.ModelInferRequest], context: Context
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Responses in request order, requests read while earlier ones are answered."""
        answers: asyncio.Queue[asyncio.Future | None] = asyncio.Queue()

        async def read() -> None:
            async for request in requests:
                answers.put_nowait(asyncio.ensure_future(self.answer(request)))
            answers.put_nowait(None)

        reader = asyncio.create_task(read())
        while (answer := await answers.get()) is not None:
            yield pb.ModelStreamInferResponse(infer_response=await answer)
        await reader


class FloorFrontDoor(BatchingFrontDoor):
    """Zeros at once (`downstream` None), or each batch sent as one message down the hops."""

    def __init__(self, config: Any, downstream: int | None, inflight: int = 1) -> None:
        super().__init__(config, inflight, MAX_BATCH_ROWS)
        self.output_name = self.spec.outputs[0].name
        self.forward = None if downstream is None else hop_stub(downstream)

    async def answer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        rows = request.inputs[0].shape[0]
        if self.forward is None:
            raw = bytes(rows * OUTPUT_ROW_BYTES)
        else:
            raw = await self.queued(rows, request.raw_input_contents[0])
        response = pb.ModelInferResponse(model_name=MODEL, id=request.id)
        response.outputs.add(name=self.output_name, datatype="FP32", shape=[rows, *OUTPUT_DIMS])
        response.raw_output_contents.append(raw)
        return response

    async def run_batch(self, items: list[tuple[int, Any]]) -> list[Any]:
        """The inputs concatenated into one message; the answer split by row."""
        answer = await self.forward(b"".join(payload for _, payload in items))
        parts, offset = [], 0
        for rows, _ in items:
            parts.append(answer[offset : offset + rows * OUTPUT_ROW_BYTES])
            offset += rows * OUTPUT_ROW_BYTES
        return parts


async def serve_front_door(port: int, servicer: BatchingFrontDoor, ready: Any) -> None:
    """Serve `servicer` on 127.0.0.1:`port` (shared with other processes: SO_REUSEPORT) until
    terminated; set `ready` once listening."""
    server = serving.new_server()
    inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    serving.bind(server, f"127.0.0.1:{port}")
    await server.start()
    ready.set()
    await server.wait_for_termination()


def _front_door(
    port: int, config_path: Path, downstream: int | None, inflight: int, ready: Any
) -> None:
    async def main() -> None:
        config = read_config(config_path, MODEL)
        await serve_front_door(port, FloorFrontDoor(config, downstream, inflight), ready)

    serving.run_service(main())


@contextmanager
def floor_processes() -> Iterator[Callable[..., mp.Process]]:
    """`start(target, *args)` runs `target(*args, ready)` in a spawned process and returns once
    it has set `ready` (it listens); every process started is terminated on exit."""
    context = mp.get_context("spawn")
    processes: list[mp.Process] = []

    def start(target: Callable[..., None], *args: Any) -> mp.Process:
        ready = context.Event()
        process = context.Process(target=target, args=(*args, ready))
        process.start()
        processes.append(process)
        if not ready.wait(120):
            raise TimeoutError(f"a floor server ({target.__name__}) did not start")
        return process

    try:
        yield start
    finally:
        for process in processes:
            process.terminate()
            process.join(10)


@contextmanager
def floor_server(
    config_path: Path, hops: int, inflight: int = 1, model: Path | None = None
) -> Iterator[str]:
    """A front door on a free port with `hops` bare hops behind it (0: it answers itself),
    keeping up to `inflight` batches down them at once; the last hop runs `model` if given."""
    downstream = None
    with floor_processes() as start:
        for _ in range(hops):
            port = free_port()
            start(_hop_server, port, downstream, model if downstream is None else None)
            downstream = port
        port = free_port()
        start(_front_door, port, config_path, downstream, inflight)
        yield f"127.0.0.1:{port}"
