"""How the front door scales with the host's cores: one-row requests to a model, served by 1, 2,
4, 8 ... batcher processes sharing one port, beside the front-door floor with the same process
count, in one run.

  floor      N bare grpc.aio KServe servers on one port (SO_REUSEPORT), each running the model
             in-process with the worker's own ModelRunner (same precision, instances, CUDA
             graphs), batching what is queued whenever an instance is free (Triton's rule with
             no delay). No hops, no routing, nothing measured or checked: the most a Python
             front door of N processes can serve on this host.
  tideserve  the suite (one balancer, N batcher processes, `--workers-per-gpu` workers) under
             the same clients; the balancer's and each role's CPU are reported, so a balancer
             at its limit shows as such.

Both are driven by the same closed-loop client processes, measured in a shared window after
they have started and warmed up (`bench.gpu.drive`); runs whose clients were the limit are
flagged. Writes results.json and table.md to --out.

    python -m bench.front_door_scaling --out DIR [--models cnn,mlp] [--processes 1,2,4,8]
        [--seconds 10] [--client-processes 8] [--concurrency 64] [--device cuda]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from bench.floor_servers import BatchingFrontDoor, floor_processes, serve_front_door
from bench.gpu import (
    ROOT,
    CpuMeter,
    add_worker_on_gpu,
    at_wall_time,
    config_text,
    drive,
    worker_names,
)
from harness.cluster import Cluster
from tideserve import codec, serving
from tideserve.procs import free_port
from tideserve.v1 import inference_pb2 as pb

# (datatype, input dims, output dims) of the shared workloads.
WORKLOADS = {"cnn": ("FP32", [3, 64, 64], [10]), "mlp": ("FP32", [256], [10])}


class InProcessFrontDoor(BatchingFrontDoor):
    """The model run here, with the worker's own ModelRunner: one batch in flight per model
    instance, each formed from everything queued (up to the model's max batch) when an
    instance comes free."""

    def __init__(self, runner: Any, config: Any) -> None:
        super().__init__(config, len(runner.instances), config.max_batch_size)
        self.runner = runner

    async def answer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        tensor = request.inputs[0]
        rows = codec.decode(tensor.datatype, tensor.shape, request.raw_input_contents[0])
        outputs = await self.queued(len(rows), rows)
        response = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
        for spec, output in zip(self.spec.outputs, outputs, strict=True):
            datatype, shape, raw = codec.encode(output)
            response.outputs.add(name=spec.name, datatype=datatype, shape=shape)
            response.raw_output_contents.append(raw)
        return response

    async def run_batch(self, items: list[tuple[int, Any]]) -> list[Any]:
        """The rows concatenated into one batch for the runner; its outputs split by row."""
        batch = np.concatenate([rows for _, rows in items])
        loop = asyncio.get_running_loop()
        outputs = await loop.run_in_executor(self.runner.executor, self.runner.run, [batch])
        parts, offset = [], 0
        for count, _ in items:
            parts.append([output[offset : offset + count] for output in outputs])
            offset += count
        return parts


def _floor_process(port: int, repository: Path, model: str, device: str, ready: Any) -> None:
    async def main() -> None:
        import torch

        from services.worker.repository import scan
        from services.worker.runner import ModelRunner

        (entry,) = scan(repository, [model])
        runner = ModelRunner(entry.config, entry.version, entry.model_path, torch.device(device))
        runner.warm_up()
        await serve_front_door(port, InProcessFrontDoor(runner, entry.config), ready)

    serving.run_service(main())


@contextmanager
def floor(repository: Path, model: str, processes: int, device: str) -> Iterator[list[int]]:
    """`processes` in-process front doors sharing one free port; yields it and their pids."""
    port = free_port()
    with floor_processes() as start:
        started = [start(_floor_process, port, repository, model, device)
                   for _ in range(processes)]
        yield [port, *(p.pid for p in started)]


class _PidsCluster:
    """Just enough of a Cluster for `CpuMeter`: the floor's processes by role."""

    def __init__(self, pids: list[int]) -> None:
        self.processes = {f"floor-{i}": _Pid(pid) for i, pid in enumerate(pids)}


class _Pid:
    def __init__(self, pid: int) -> None:
        self.pid = pid


def build_repository(root: Path, make_models: Path, models: list[str], precision: str) -> Path:
    made = root / "made"
    made.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, str(make_models), str(made)], check=True)
    repository = root / "model_repository"
    for model in models:
        datatype, dims, out_dims = WORKLOADS[model]
        (repository / model / "1").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(made / f"{model}.pt", repository / model / "1" / "model.pt")
        (repository / model / "config.pbtxt").write_text(
            config_text(model, datatype, dims, out_dims, precision, instances=2)
        )
    return repository


def measure(address: str, model: str, args: argparse.Namespace, servers: Any) -> dict[str, Any]:
    """Closed-loop clients in the shared window, and the servers' CPU by role over exactly that
    window (`servers`: a Cluster, or anything with the same `processes`)."""
    meters: list[CpuMeter] = []
    cores: dict[str, float] = {}
    timers: list[Any] = []

    def measure_over(window: Any) -> None:
        timers.append(at_wall_time(window.start, lambda: meters.append(CpuMeter(servers))))
        timers.append(at_wall_time(window.end - 0.1, lambda: cores.update(meters[0].cores())))

    result = drive(
        "closed",
        address,
        model,
        args.seconds,
        args.client_processes,
        args.concurrency,
        warmup_s=args.warmup_seconds,
        on_window=measure_over,
    )
    for timer in timers:
        timer.join()
    cores.pop("clients", None)
    return {**result, "cpu_cores_by_role": cores}


def run_floor(repository: Path, model: str, processes: int, args: argparse.Namespace) -> dict:
    with floor(repository, model, processes, args.device) as (port, *pids):
        return measure(f"127.0.0.1:{port}", model, args, _PidsCluster(pids))


def run_tideserve(
    repository: Path, model: str, processes: int, args: argparse.Namespace, logs: Path
) -> dict:
    cluster = Cluster(
        repository,
        logs,
        worker_args=("--models", model),
        batcher_args=("--processes", str(processes)),
    )
    cluster.start(workers=0)
    try:
        workers = worker_names(1, args.workers_per_gpu)
        for name, gpu in workers:
            add_worker_on_gpu(cluster, name, gpu, args.device)
        cluster.wait_workers(len(workers))
        return measure(cluster.batcher, model, args, cluster)
    finally:
        cluster.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--models", default="cnn,mlp")
    parser.add_argument("--processes", default="1,2,4,8", help="batcher (and floor) processes")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window")
    parser.add_argument("--warmup-seconds", type=float, default=3.0)
    parser.add_argument("--client-processes", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=64, help="clients per process")
    parser.add_argument("--workers-per-gpu", type=int, default=2)
    parser.add_argument("--precision", default="fp16")
    parser.add_argument("--device", default="cuda", help="cpu: a smoke run of this script")
    parser.add_argument(
        "--make-models", type=Path, default=ROOT.parent / "shared" / "workloads" / "make_models.py"
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / "work"
    shutil.rmtree(work, ignore_errors=True)
    models = args.models.split(",")
    repository = build_repository(work, args.make_models, models, args.precision)
    results: dict[str, Any] = {"settings": {k: str(v) for k, v in vars(args).items()}, "runs": []}
    lines = [
        "| model | processes | floor (infer/s) | tideserve (infer/s) | tideserve / floor "
        "| CPU cores: floor | CPU cores: batcher / balancer / worker | client-bound |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model in models:
        for processes in (int(p) for p in args.processes.split(",")):
            bare = run_floor(repository, model, processes, args)
            served = run_tideserve(repository, model, processes, args, work / "logs")
            run = {
                "model": model,
                "processes": processes,
                "floor": bare,
                "tideserve": served,
                "ratio": served["throughput"] / bare["throughput"] if bare["throughput"] else None,
            }
            results["runs"].append(run)
            print(json.dumps(run), flush=True)
            cores = served["cpu_cores_by_role"]
            bound = [
                name for name, r in (("floor", bare), ("tideserve", served)) if r["client_bound"]
            ]
            lines.append(
                f"| {model} | {processes} | {bare['throughput']:,.0f} | "
                f"{served['throughput']:,.0f} | {run['ratio'] or 0:.2f} | "
                f"{bare['cpu_cores_by_role'].get('floor', 0.0):.2f} | "
                + " / ".join(f"{cores.get(r, 0.0):.2f}" for r in ("batcher", "balancer", "worker"))
                + f" | {', '.join(bound) or 'no'} |"
            )
            (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    table = "\n".join(lines) + "\n"
    (args.out / "table.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
