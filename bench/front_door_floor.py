"""The throughput ceiling of tideserve's process layout on this machine, with no tideserve code:
bare grpc.aio servers speaking the KServe v2 protocol, driven by the suite's perf_analyzer
command at one concurrency, unary and streaming, beside tideserve and PyTriton in the same run.

  bare     a front door answering every ModelInfer with zeros: no batching, no hops.
  layout   the same front door, batching what is queued whenever the last batch came back
           (Triton's rule with no delay, one batch in flight) and sending each batch as one
           message through two bare hops, as tideserve's batcher -> balancer -> worker; the last
           hop answers zeros. No model runs, nothing is routed, measured or checked.
  layout + model   the same, the last hop running mlp.pt on each batch (one torch thread).

    python -m bench.front_door_floor [--rounds 3] [--concurrency 64] [--measurement-ms 4000]
                                     [--skip-tideserve] [--skip-pytriton] [--out FILE]

The targets are 1.6x PyTriton's unary throughput and 2x over the stream. The floors bound what a
server in tideserve's layout (`layout`, `layout + model`) or any Python gRPC front door (`bare`)
reaches on this machine, to within the spread of their rounds. Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing as mp
import statistics
import tempfile
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc

from bench.hop_floor import forwarding_to, hop_stub, serve_hop
from harness.repeats import rotated_rounds
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


def main(argv: list[str] | None = None) -> int:
    from bench import baseline, suite

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--measurement-ms", type=int, default=4000)
    parser.add_argument(
        "--rounds", type=int, default=1,
        help="measure every system this many times, in a rotated order each round; the table "
        "gives medians (figures on a shared 2-core machine move 15-25%% from run to run)",
    )
    parser.add_argument(
        "--inflight", type=int, default=1,
        help="batches the layout floor keeps in flight (tideserve's default: 1 per instance)",
    )
    parser.add_argument("--skip-tideserve", action="store_true")
    parser.add_argument("--skip-pytriton", action="store_true")
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    args = parser.parse_args(argv)
    baseline.ensure_models()
    work = Path(tempfile.mkdtemp(prefix="tideserve-floor-"))
    repository = suite.write_repository(work, slo_ms=25.0)
    config_path = repository / MODEL / "config.pbtxt"

    def measure(url: str, modes: tuple[str, ...] = ("unary", "stream")) -> dict[str, float]:
        return {
            mode: suite.pa(url, MODEL, args.concurrency, args.measurement_ms,
                           streaming=mode == "stream").get("throughput_infer_per_s", 0.0)
            for mode in modes
        }

    def pytriton() -> dict[str, float]:
        with baseline.pytriton(suite.MODELS / "mlp.pt", MODEL, grpc_port=free_port(),
                               log_path=work / "pytriton.log") as url:
            return measure(url, ("unary",))

    def floor(hops: int, model: Path | None = None) -> Callable[[], dict[str, float]]:
        def run() -> dict[str, float]:
            with floor_server(config_path, hops, args.inflight, model) as url:
                return measure(url)
        return run

    def tideserve() -> dict[str, float]:
        with suite.tideserve(repository, 1, work / "logs", MODEL) as config:
            return measure(config.batcher)

    systems: dict[str, Callable[[], dict[str, float]]] = {}
    if not args.skip_pytriton:
        systems["pytriton"] = pytriton
    systems |= {"bare": floor(0), "layout": floor(2),
                "layout + model": floor(2, suite.MODELS / "mlp.pt")}
    if not args.skip_tideserve:
        systems["tideserve"] = tideserve
    rounds = rotated_rounds(systems, args.rounds)
    summary = {
        name: {mode: statistics.median(r[name][mode] for r in rounds) for mode in rounds[0][name]}
        for name in systems
    }
    print(json.dumps(summary, indent=2))
    if "pytriton" in systems:
        def ratio(name: str, mode: str) -> float:
            return statistics.median(r[name][mode] / r["pytriton"]["unary"] for r in rounds)

        for name in systems:
            ratios = ", ".join(f"{mode} {ratio(name, mode):.2f}x" for mode in rounds[0][name])
            print(f"{name}: {ratios} PyTriton's unary, median of {len(rounds)} round(s) "
                  "(targets: unary 1.6x, stream 2x)")
    if args.out:
        args.out.write_text(json.dumps({"rounds": rounds, "median": summary}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
