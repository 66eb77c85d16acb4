"""Where a large request's CPU goes: each role's CPU seconds per request served, with py-spy's
top frames, under a closed loop of 64-row requests whose inputs lie in a client's system
shared-memory region (the GPU benchmark's cnn load).

The worker emulates the device (`--service-profile`, a flat service curve) around a model that
only averages its input, so what is measured is the serving path's own CPU: gRPC, the batcher's
copies of the request's bytes, the worker's decoding. It runs on any host, no GPU needed:

    python -m bench.request_cost --out DIR [--seconds 10] [--concurrency 8] [--spy] [--inline]
        [--thread-bytes N]

Besides each process's CPU, its main thread's is reported (`loop_cpu_ms_per_request`): the
event loop's, which serves every request of the process, apart from gRPC's threads and the
batcher's copier threads. Figures go to DIR/request_cost.json and stdout. On a shared machine,
run it several times and alternate the builds being compared: single runs move by tens of
percent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from harness.cluster import Cluster
from tideserve_tools.loadgen import Window, closed_loop

MODEL = "avg"
ROWS = 64
DIMS = (3, 64, 64)
CLASSES = 10


class Average(torch.nn.Module):
    """Reads every input byte once (as any model must) and computes almost nothing else."""

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(DIMS[0], CLASSES)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(images.mean(dim=(2, 3)))


def build_repository(root: Path, device_ms: float) -> Path:
    """A repository of the averaging model, and the flat service profile the worker pads to."""
    repository = root / "repository"
    (repository / MODEL / "1").mkdir(parents=True, exist_ok=True)
    torch.jit.script(Average().eval()).save(str(repository / MODEL / "1" / "model.pt"))
    (repository / MODEL / "config.pbtxt").write_text(
        f'name: "{MODEL}"\nmax_batch_size: {ROWS}\n'
        f'input [ {{ name: "INPUT__0" data_type: TYPE_FP32 dims: {list(DIMS)} }} ]\n'
        f'output [ {{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [{CLASSES}] }} ]\n'
        "dynamic_batching { }\n"
    )
    profile = root / "profile.json"
    profile.write_text(
        json.dumps({"model": MODEL, "batch_sizes": [1, ROWS], "seconds": [device_ms / 1e3] * 2})
    )
    return profile


def usage(pid: int, thread: int | None = None) -> tuple[float, int]:
    """User + system CPU seconds and minor page faults of a live process (or of one of its
    threads: the main thread's id is the process's), from /proc."""
    path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), int(fields[7])


def spy(pids: dict[str, int], seconds: float, out: Path) -> list[subprocess.Popen]:
    """py-spy recorders (raw collapsed stacks) of each process, started now."""
    py_spy = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "py-spy"
    return [
        subprocess.Popen(
            [
                str(py_spy),
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(round(seconds)),
                "--format",
                "raw",
                "--nonblocking",
                "--output",
                str(out / f"spy-{name}.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, pid in pids.items()
    ]


def top_frames(raw: Path, count: int = 10) -> list[str]:
    """The frames that own the most samples (idle waits left out), as 'share% frame'."""
    own: dict[str, int] = {}
    for line in raw.read_text().splitlines() if raw.exists() else []:
        stack, _, samples = line.rpartition(" ")
        frame = stack.split(";")[-1]
        if "(idle)" in stack or "select" in frame or "_worker (concurrent" in frame:
            continue
        own[frame] = own.get(frame, 0) + int(samples)
    total = max(sum(own.values()), 1)
    ranked = sorted(own.items(), key=lambda kv: -kv[1])[:count]
    return [f"{100 * n / total:.1f}% {frame}" for frame, n in ranked]


async def measure(cluster: Cluster, args: argparse.Namespace, out: Path) -> dict:
    pids = {name: p.pid for name, p in cluster.processes.items()}
    start = time.time() + args.warmup
    window = Window(start, start + args.seconds)
    load = asyncio.create_task(
        closed_loop(
            cluster.batcher,
            MODEL,
            concurrency=args.concurrency,
            seconds=0,
            rows=ROWS,
            shared_memory_inputs=not args.inline,
            window=window,
        )
    )
    await asyncio.sleep(max(0.0, start - time.time()))
    before = {name: usage(pid) for name, pid in pids.items()}
    loop_before = {name: usage(pid, pid)[0] for name, pid in pids.items()}
    recorders = spy(pids, args.seconds, out) if args.spy else []
    await asyncio.sleep(max(0.0, window.end - time.time()))
    after = {name: usage(pid) for name, pid in pids.items()}
    loop_after = {name: usage(pid, pid)[0] for name, pid in pids.items()}
    result = await load
    for recorder in recorders:
        recorder.wait(timeout=60)
    served = max(result.ok, 1)
    return {
        "requests": result.ok,
        "errors": result.errors,
        "requests_per_s": round(result.throughput, 1),
        "p50_ms": round(result.percentile_ms(50), 2),
        "cpu_ms_per_request": {
            name: round(1e3 * (after[name][0] - before[name][0]) / served, 3) for name in pids
        },
        "loop_cpu_ms_per_request": {
            name: round(1e3 * (loop_after[name] - loop_before[name]) / served, 3) for name in pids
        },
        "page_faults_per_request": {
            name: round((after[name][1] - before[name][1]) / served, 1) for name in pids
        },
        "cores": {
            name: round((after[name][0] - before[name][0]) / window.seconds, 2) for name in pids
        },
        "client_cpu_ms_per_request": round(1e3 * result.client_cpu_s / served, 3),
        "profiles": {name: top_frames(out / f"spy-{name}.txt") for name in pids}
        if args.spy
        else {},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--device-ms", type=float, default=2.0, help="the emulated device's time per batch"
    )
    parser.add_argument("--spy", action="store_true", help="py-spy the services meanwhile")
    parser.add_argument(
        "--inline",
        action="store_true",
        help="inputs in the messages all the way: no client region, and the "
        "batcher sends batches inline (--shared-memory-min-bytes 0)",
    )
    parser.add_argument(
        "--thread-bytes",
        type=int,
        help="the batcher's --shared-memory-thread-bytes: batches from this many input bytes "
        "are copied into their segment on a thread (0: on the event loop); default the "
        "batcher's",
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        profile = build_repository(root, args.device_ms)
        cluster = Cluster(
            root / "repository",
            args.out / "logs",
            worker_args=("--device", "cpu", "--service-profile", str(profile)),
            batcher_args=(
                "--max-queue-rows-default",
                "0",
                *(("--shared-memory-min-bytes", "0") if args.inline else ()),
                *(
                    ("--shared-memory-thread-bytes", str(args.thread_bytes))
                    if args.thread_bytes is not None
                    else ()
                ),
            ),
        )
        try:
            cluster.start(workers=1)
            figures = asyncio.run(measure(cluster, args, args.out))
        finally:
            cluster.stop()
    figures["command"] = "python -m bench.request_cost " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    (args.out / "request_cost.json").write_text(json.dumps(figures, indent=1))
    print(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
