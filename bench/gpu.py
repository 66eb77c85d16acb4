"""GPU benchmark: the whole suite on loopback on a GPU machine, against the in-process
limit of the same model at the same batch sizes, in one run.

For each workload (cnn.pt from the shared workloads, and a ResNet-50-sized model built here):
  1. the in-process limit: the worker's own ModelRunner (same precision, streams, CUDA graphs,
     host<->device copies) called in a loop at batch 64, one thread per model instance; and the
     bare module with inputs already on the GPU, for reference;
  2. tideserve (balancer, N batcher processes on one port, one GPU worker) saturated by closed-loop
     clients in several processes: throughput, latency, batch sizes, GPU utilisation;
  3. open-loop Poisson arrivals at 50% of that throughput: p99 against twice the batch compute
     time;
  4. where the time goes: py-spy dumps of the batcher and the worker under load (if installed).
Writes results.json and table.md to --out.

    python -m bench.gpu --out DIR [--workloads cnn,resnet50] [--seconds 15] [--make-models PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.cluster import Cluster
from harness.repeats import summarize
from tideserve_tools.latency import LatencyRecord
from tideserve_tools.loadgen import LoadResult, Window, closed_loop, open_loop

ROOT = Path(__file__).resolve().parent.parent
GRAPH_SIZES = "1,2,4,8,16,32,48,64"


def config_text(
    name: str, datatype: str, dims: list[int], out_dims: list[int], precision: str, instances: int
) -> str:
    return (
        f'name: "{name}"\nmax_batch_size: 64\n'
        f'input [ {{ name: "INPUT__0" data_type: TYPE_{datatype} dims: {dims} }} ]\n'
        f'output [ {{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: {out_dims} }} ]\n'
        "dynamic_batching { }\n"
        f'parameters {{ key: "precision" value {{ string_value: "{precision}" }} }}\n'
        f'parameters {{ key: "instance_count" value {{ string_value: "{instances}" }} }}\n'
        'parameters { key: "cuda_graph_batch_sizes" '
        f'value {{ string_value: "{GRAPH_SIZES}" }} }}\n'
    )


def build_repository(
    root: Path, make_models: Path, workloads: list[str], precision: str, instances: int
) -> Path:
    from bench.models import export_resnet50

    repository = root / "model_repository"
    made = root / "made"
    made.mkdir(parents=True, exist_ok=True)
    if "cnn" in workloads:
        subprocess.run([sys.executable, str(make_models), str(made)], check=True)
        (repository / "cnn" / "1").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(made / "cnn.pt", repository / "cnn" / "1" / "model.pt")
        (repository / "cnn" / "config.pbtxt").write_text(
            config_text("cnn", "FP32", [3, 64, 64], [10], precision, instances)
        )
    if "resnet50" in workloads:
        # Exported on the GPU in FP16 (an exported graph keeps its device and dtypes), so the
        # worker runs it as it is: precision fp32 here means "no conversion".
        path = export_resnet50(made, device="cuda", half=precision == "fp16")
        (repository / "resnet50" / "1").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, repository / "resnet50" / "1" / "model.pt2")
        (repository / "resnet50" / "config.pbtxt").write_text(
            config_text("resnet50", "UINT8", [3, 224, 224], [1000], "fp32", instances)
        )
    return repository


def inprocess_limit(
    repository: Path, model: str, seconds: float, device: str, start_at: float | None = None
) -> dict[str, Any]:
    """The worker's ModelRunner in a loop at batch 64 (one thread per instance), and the bare
    module with inputs resident on the GPU. From wall-clock `start_at` when given, so that
    several processes measure at once."""
    from services.worker.repository import scan
    from services.worker.runner import ModelRunner

    (entry,) = scan(repository, [model])
    runner = ModelRunner(entry.config, entry.version, entry.model_path, torch.device(device))
    runner.warm_up()
    # How long after `start_at` this process began measuring (0 when not coordinated).
    late_s = 0.0
    if start_at is not None:
        time.sleep(max(0.0, start_at - time.time()))
        late_s = time.time() - start_at
    spec = runner.spec
    from tideserve.codec import NUMPY_DTYPES

    batch = [
        np.random.default_rng(0).integers(0, 255, [64, *t.dims]).astype(NUMPY_DTYPES[t.datatype])
        for t in spec.inputs
    ]
    counts = [0] * len(runner.instances)
    stop = time.perf_counter() + seconds

    def loop(index: int) -> None:
        while time.perf_counter() < stop:
            runner.executor.submit(runner.run, batch).result()
            counts[index] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(len(runner.instances))]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    runner_rate = sum(counts) * 64 / elapsed

    module = runner.module
    device_batch = torch.from_numpy(batch[0]).to(device)
    if device_batch.is_floating_point():
        device_batch = device_batch.to(next(iter(module.parameters())).dtype)
    with torch.inference_mode():
        for _ in range(5):
            module(device_batch)
        synchronize(device)
        began = time.perf_counter()
        calls = 0
        while time.perf_counter() - began < seconds / 2:
            module(device_batch)
            calls += 1
        synchronize(device)
        bare_rate = calls * 64 / (time.perf_counter() - began)
    batch_time = runner.service_times.get(64, float("nan"))
    runner.close()
    return {
        "runner_samples_per_s": runner_rate,
        "bare_module_samples_per_s": bare_rate,
        "batch64_compute_s": batch_time,
        "instances": len(runner.instances),
        "late_start_s": late_s,
    }


def inprocess_limit_of_processes(
    repository: Path, model: str, seconds: float, device: str, processes: int
) -> dict[str, Any]:
    """The limit for `processes` workers sharing one GPU: as many processes running
    `inprocess_limit` at the same moment, their rates summed. One process's threads share one
    GIL, as one worker's instances do; this is the limit of the same layout. A batch's compute
    time is taken from one process alone: processes sharing the GPU stretch each other's."""
    alone = inprocess_limit(repository, model, seconds, device)
    if processes == 1:
        return alone
    # Time for every process to start, load the model and warm up (CUDA graphs) first.
    start_at = time.time() + 30.0
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(processes, mp_context=context) as pool:
        runs = [
            pool.submit(inprocess_limit, repository, model, seconds, device, start_at)
            for _ in range(processes)
        ]
        limits = [run.result() for run in runs]
    late_s = max(lim["late_start_s"] for lim in limits)
    if late_s > 0.1 * seconds:
        print(f"warning: a limit process began measuring {late_s:.1f} s late", flush=True)
    return {
        "runner_samples_per_s": sum(lim["runner_samples_per_s"] for lim in limits),
        "bare_module_samples_per_s": sum(lim["bare_module_samples_per_s"] for lim in limits),
        "batch64_compute_s": alone["batch64_compute_s"],
        "one_process_samples_per_s": alone["runner_samples_per_s"],
        "instances": sum(lim["instances"] for lim in limits),
        "processes": processes,
        "late_start_s": late_s,
    }


# Seconds a client process takes, once started, to connect, read the model's metadata and
# register its shared memory; the warm-up starts after it.
CLIENT_CONNECT_S = 1.0
# Client processes busier than this share of one core while measuring are the limit themselves:
# each runs one event loop, so past it the figure measures the client, not the server.
CLIENT_BOUND_SHARE = 0.85


def _client(args: tuple[str, str, str, tuple[float, float], float, int, int, bool]) -> dict:
    mode, address, model, (start, end), level, seed, rows, shared = args
    began = time.time()
    window = Window(start, end)
    common = {"timeout_s": 30, "rows": rows, "shared_memory_inputs": shared, "window": window}
    if mode == "closed":
        result = asyncio.run(
            closed_loop(address, model, concurrency=int(level), seconds=0, **common)
        )
    else:
        result = asyncio.run(open_loop(address, model, rate=level, seconds=0, seed=seed, **common))
    return {
        "record": LatencyRecord(result.latencies, result.errors, result.error_latencies),
        "client_cores": result.client_cpu_s / window.seconds,
        # A client that began after the window opened missed its warm-up and part of the window.
        "late_s": max(0.0, began - start),
    }


def _client_started(barrier: Any) -> None:
    """Pool initializer: a client's imports are paid here, before the window is fixed."""
    import tideserve_tools.loadgen  # noqa: F401

    barrier.wait(timeout=600)


def drive(
    mode: str,
    address: str,
    model: str,
    seconds: float,
    processes: int,
    level: float,
    rows: int = 1,
    shared_memory_inputs: bool = False,
    warmup_s: float = 3.0,
    on_window: Callable[[Window], object] | None = None,
) -> dict[str, Any]:
    """Load from `processes` client processes: closed loop with `level` clients each, or open
    loop at `level`/processes requests per second each; every request carries `rows` rows, in
    the request or (`shared_memory_inputs`) in a region each client process registers.

    Every client process starts first (spawned, imports done); only then is the measured
    window fixed, `seconds` long after `warmup_s` of load, and shared by all of them, so the
    figure is the server's steady state rather than the clients' start-up. `on_window` hears
    the window before the load begins (to measure CPU or GPU over exactly it)."""
    per_process = level if mode == "closed" else level / processes
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes + 1)
    with context.Pool(processes, initializer=_client_started, initargs=(barrier,)) as pool:
        barrier.wait(timeout=600)
        start = time.time() + CLIENT_CONNECT_S + warmup_s
        window = Window(start, start + seconds)
        if on_window is not None:
            on_window(window)
        parts = pool.map(
            _client,
            [
                (
                    mode,
                    address,
                    model,
                    (window.start, window.end),
                    per_process,
                    seed,
                    rows,
                    shared_memory_inputs,
                )
                for seed in range(processes)
            ],
            chunksize=1,
        )
    merged = LoadResult(seconds=window.seconds)
    for part in parts:
        merged.merge(part["record"])
    client_cores = [part["client_cores"] for part in parts]
    return {
        "throughput": merged.throughput,
        "samples_per_s": merged.throughput * rows,
        "rows_per_request": rows,
        "ok": merged.ok,
        "sent": merged.sent,
        "errors": merged.errors,
        "p50_ms": merged.percentile_ms(50),
        "p99_ms": merged.percentile_ms(99),
        "window_s": window.seconds,
        "client_cores": round(sum(client_cores), 2),
        "busiest_client_cores": round(max(client_cores), 2),
        "client_bound": max(client_cores) >= CLIENT_BOUND_SHARE,
        "clients_late_s": round(max(part["late_s"] for part in parts), 2),
    }


def clients_for(concurrency: int, rows: int) -> int:
    """Clients per process for `rows`-row requests: as many rows outstanding as `concurrency`
    one-row clients keep, so larger requests saturate the server without overflowing its
    queues (48 clients of 64-row requests were refused RESOURCE_EXHAUSTED by the thousand)."""
    return max(2, concurrency // rows)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class GpuSampler:
    """nvidia-smi utilisation samples every 200 ms while the load runs."""

    def __init__(self) -> None:
        if shutil.which("nvidia-smi") is None:
            self.process = None
            return
        self.process = subprocess.Popen(
            [
                "nvidia-smi",
                "--query-gpu=utilization.gpu,memory.used",
                "--format=csv,noheader,nounits",
                "-lms",
                "200",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )

    def stop(self) -> dict[str, float]:
        if self.process is None:
            return {
                "gpu_util_mean": float("nan"),
                "gpu_util_max": float("nan"),
                "gpu_mem_used_mib": float("nan"),
            }
        self.process.terminate()
        out, _ = self.process.communicate(timeout=10)
        rows = [line.split(",") for line in out.splitlines() if line.strip()]
        util = [float(r[0]) for r in rows]
        return {
            "gpu_util_mean": statistics.mean(util) if util else float("nan"),
            "gpu_util_max": max(util, default=float("nan")),
            "gpu_mem_used_mib": max((float(r[1]) for r in rows), default=float("nan")),
        }


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds used) of a live process, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_roles(cluster: Cluster) -> dict[int, str]:
    """Every process of the run by role: the services (a batcher's processes are its children)
    and the load generators (the other children of this benchmark)."""
    roles = {p.pid: name.split("-")[0] for name, p in cluster.processes.items()}
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    parents = {pid: stat[0] for pid in pids if (stat := _stat(pid)) is not None}
    for pid, parent in parents.items():
        if parent in roles and roles[parent] == "batcher":
            roles[pid] = "batcher"
        elif parent == os.getpid() and pid not in roles:
            roles[pid] = "clients"
    return roles


class CpuMeter:
    """CPU cores used by each role over an interval: who is saturated."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.began = time.perf_counter()
        self.start = {pid: _stat(pid) for pid in process_roles(cluster)}

    def cores(self) -> dict[str, float]:
        elapsed = time.perf_counter() - self.began
        used: dict[str, float] = {}
        for pid, role in process_roles(self.cluster).items():
            now, then = _stat(pid), self.start.get(pid)
            if now is not None:
                used[role] = used.get(role, 0.0) + now[1] - (then[1] if then else 0.0)
        return {role: round(seconds / elapsed, 2) for role, seconds in used.items()}


def find_py_spy() -> str | None:
    """py-spy on PATH, or where `pip install --target DIR` puts it (DIR/bin) for a DIR on
    sys.path, as on the GPU machine, where wheels are carried that way."""
    found = shutil.which("py-spy")
    if found:
        return found
    candidates = (Path(entry) / "bin" / "py-spy" for entry in sys.path if entry)
    return next((str(c) for c in candidates if c.is_file()), None)


def profile(pids: dict[str, int], seconds: float = 4) -> dict[str, list[str]]:
    """py-spy samples of each process, all at once (if py-spy is installed): the functions where
    its CPU time goes, as 'share% function (file:line)', most first."""
    spy = find_py_spy()
    if spy is None:
        return {"note": ["py-spy not installed"]}
    raws = {name: Path(f"/tmp/pyspy-{name}.txt") for name in pids}
    recorders = [
        subprocess.Popen(
            [
                spy,
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(max(1, round(seconds))),
                "--format",
                "raw",
                "--output",
                str(raws[name]),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, pid in pids.items()
    ]
    for recorder in recorders:
        recorder.wait(timeout=seconds + 30)
    tops: dict[str, list[str]] = {}
    for name, raw in raws.items():
        own: dict[str, int] = {}
        total = 0
        for line in raw.read_text().splitlines() if raw.exists() else []:
            stack, _, count = line.rpartition(" ")
            frame = stack.split(";")[-1]
            if "(idle)" in stack or "select" in frame or "_worker (concurrent" in frame:
                continue
            own[frame] = own.get(frame, 0) + int(count)
            total += int(count)
        tops[name] = [
            f"{100 * n / max(total, 1):.0f}% {f}"
            for f, n in sorted(own.items(), key=lambda kv: -kv[1])[:8]
        ]
    return tops


def snapshot_sizes(cluster: Cluster) -> dict[int, int]:
    return dict(cluster.snapshot().batch_size_counts)


def add_worker_on_gpu(cluster: Cluster, name: str, gpu: int, device: str) -> None:
    """The worker sees only GPU `gpu` (CUDA_VISIBLE_DEVICES), as the scaler starts workers:
    inside it the card is cuda:0, which an exported program may name."""
    env = {"CUDA_VISIBLE_DEVICES": str(gpu)} if device.startswith("cuda") else None
    cluster.add_worker(name, "--device", device, env=env)


def worker_names(gpus: int, workers_per_gpu: int) -> list[tuple[str, int]]:
    """(name, GPU) of each worker: worker-0, worker-1... one per GPU, or worker-0.0,
    worker-0.1... with several on each."""
    if workers_per_gpu == 1:
        return [(f"worker-{gpu}", gpu) for gpu in range(gpus)]
    return [(f"worker-{gpu}.{k}", gpu) for gpu in range(gpus) for k in range(workers_per_gpu)]


def serve_and_measure(
    repository: Path,
    model: str,
    out: Path,
    seconds: float,
    batchers: int,
    client_processes: int,
    concurrency: int,
    batch_compute_s: float,
    device: str,
    client_rows: list[int],
    inflight: int,
    gpus: int = 1,
    shared_memory_min_bytes: int | None = None,
    client_shared_memory: bool = False,
    pin_shared_memory: bool = True,
    workers_per_gpu: int = 1,
    repeat_count: int = 3,
    warmup_s: float = 3.0,
) -> dict[str, Any]:
    """Saturate the served model with clients sending requests of each size in `client_rows`
    (1 = one sample a request, as most clients do); then, for each size, open-loop arrivals at
    half its saturated rate for the tail latency. `workers_per_gpu` workers on each of `gpus`
    GPUs (CUDA_VISIBLE_DEVICES=0, 1, ...). With `client_shared_memory` the clients place their
    inputs in registered /dev/shm regions (Triton's system shared-memory extension)."""
    cluster = Cluster(
        repository,
        out / f"logs_{model}",
        worker_args=("--models", model, "--pin-shared-memory", str(pin_shared_memory).lower()),
        batcher_args=(
            "--processes",
            str(batchers),
            "--inflight-per-instance",
            str(inflight),
            *(
                ()
                if shared_memory_min_bytes is None
                else ("--shared-memory-min-bytes", str(shared_memory_min_bytes))
            ),
        ),
    )
    try:
        cluster.start(workers=0)
        workers = worker_names(gpus, workers_per_gpu)
        for name, gpu in workers:
            add_worker_on_gpu(cluster, name, gpu, device)
        cluster.wait_workers(len(workers))
    except TimeoutError:
        for name in cluster.processes:  # why it did not come up
            print(f"--- {name} log ---\n{cluster.log(name)[-3000:]}", flush=True)
        cluster.stop()
        raise
    runs: dict[str, Any] = {}
    half_load: dict[str, Any] = {}
    spy: dict[str, list[str]] = {}
    try:
        for rows in client_rows:
            repeats = [
                saturate(
                    cluster,
                    model,
                    workers[0][0],
                    rows,
                    seconds,
                    warmup_s,
                    client_processes,
                    clients_for(concurrency, rows),
                    client_shared_memory,
                    spy if repeat == 0 else None,
                )
                for repeat in range(repeat_count)
            ]
            runs[f"rows{rows}"] = {"repeats": repeats, **summarize(repeats)}
        for rows in client_rows:
            half = drive(
                "open",
                cluster.batcher,
                model,
                seconds,
                client_processes,
                runs[f"rows{rows}"]["throughput"] / 2,
                rows,
                client_shared_memory,
                warmup_s,
            )
            half_load[f"rows{rows}"] = {
                **half,
                "p99_over_batch_compute": half["p99_ms"] / 1000 / batch_compute_s
                if batch_compute_s
                else None,
            }
    finally:
        cluster.stop()
    return {
        "saturated": runs,
        "half_load": half_load,
        "profile": spy,
        "batchers": batchers,
        "client_processes": client_processes,
        "concurrency_per_process": concurrency,
    }


def at_wall_time(wall_time: float, action: Callable[[], object]) -> threading.Timer:
    timer = threading.Timer(max(0.0, wall_time - time.time()), action)
    timer.start()
    return timer


def saturate(
    cluster: Cluster,
    model: str,
    first_worker: str,
    rows: int,
    seconds: float,
    warmup_s: float,
    client_processes: int,
    clients_per_process: int,
    client_shared_memory: bool,
    spy: dict[str, list[str]] | None,
) -> dict[str, Any]:
    """One closed-loop saturation run: throughput in the shared window, CPU by role over exactly
    that window, GPU utilisation, batch sizes formed, and (with `spy`) py-spy profiles taken in
    its middle."""
    roles = process_roles(cluster)
    pids = {
        "worker": cluster.processes[first_worker].pid,
        "balancer": cluster.processes["balancer"].pid,
        # One of the serving processes, or the only one (--batchers 1).
        "batcher": next(
            (
                p
                for p, r in roles.items()
                if r == "batcher" and p != cluster.processes["batcher"].pid
            ),
            cluster.processes["batcher"].pid,
        ),
    }
    meters: list[CpuMeter] = []
    cores: dict[str, float] = {}
    before: dict[int, int] = {}
    samplers: list[GpuSampler] = []
    timers: list[threading.Timer] = []

    def measure_over(window: Window) -> None:
        def begin() -> None:
            meters.append(CpuMeter(cluster))
            before.update(snapshot_sizes(cluster))
            samplers.append(GpuSampler())

        timers.append(at_wall_time(window.start, begin))
        timers.append(at_wall_time(window.end - 0.1, lambda: cores.update(meters[0].cores())))
        if spy is not None:
            timers.append(
                at_wall_time(
                    window.start + seconds / 4,
                    lambda: spy.update({f"rows{rows}": profile(pids, seconds / 2)}),
                )
            )

    saturated = drive(
        "closed",
        cluster.batcher,
        model,
        seconds,
        client_processes,
        clients_per_process,
        rows,
        client_shared_memory,
        warmup_s,
        on_window=measure_over,
    )
    for timer in timers:
        timer.join()
    gpu = samplers[0].stop()
    sizes = {
        s: n - before.get(s, 0) for s, n in snapshot_sizes(cluster).items() if n - before.get(s, 0)
    }
    batches = sum(sizes.values())
    # The clients' share comes from the clients themselves; the meter's "clients" row counts
    # the pool's processes from their start.
    cores.pop("clients", None)
    return {
        "cpu_cores_by_role": cores,
        **saturated,
        **gpu,
        "batch_sizes": sizes,
        "mean_batch": sum(s * n for s, n in sizes.items()) / max(batches, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--workloads", default="cnn,resnet50")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--precision", default="fp16")
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--batchers", type=int, default=4)
    parser.add_argument("--client-processes", type=int, default=6)
    parser.add_argument(
        "--concurrency",
        type=int,
        default=48,
        help="clients per process sending one-row requests; larger requests use fewer clients "
        "(the same rows outstanding, at least 2)",
    )
    parser.add_argument(
        "--client-rows", default="1,16", help="rows per client request, one saturation run each"
    )
    parser.add_argument(
        "--inflight-per-instance",
        type=int,
        default=1,
        help="batches each batcher process keeps in flight per model instance of a worker",
    )
    parser.add_argument("--device", default="cuda", help="cpu: a smoke run of this script")
    parser.add_argument(
        "--gpus", type=int, default=1, help="workers, one per GPU; the limit is for one GPU"
    )
    parser.add_argument(
        "--workers-per-gpu",
        type=int,
        default=1,
        help="worker processes sharing each GPU, each with --instances instances; the limit is "
        "then that many processes measuring at once",
    )
    parser.add_argument(
        "--shared-memory-min-bytes",
        type=int,
        default=None,
        help="the batcher's setting (0: inputs always inline); default: the batcher's default",
    )
    parser.add_argument(
        "--client-shared-memory",
        action="store_true",
        help="clients send inputs through registered system shared-memory regions",
    )
    parser.add_argument(
        "--no-pin-shared-memory",
        dest="pin_shared_memory",
        action="store_false",
        help="workers stage shared-memory inputs through pinned buffers instead of pinning "
        "the segments (the worker's --pin-shared-memory false)",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="saturation runs per request size (median, spread)"
    )
    parser.add_argument(
        "--warmup-seconds",
        type=float,
        default=3.0,
        help="load before each measured window, after every client process has started",
    )
    parser.add_argument(
        "--make-models", type=Path, default=ROOT.parent / "shared" / "workloads" / "make_models.py"
    )
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark runs on the GPU machine")
    workloads = args.workloads.split(",")
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path("/tmp/tideserve-gpu-bench")
    shutil.rmtree(work, ignore_errors=True)
    repository = build_repository(work, args.make_models, workloads, args.precision, args.instances)
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if args.device != "cpu" else "cpu",
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "settings": vars(args) | {"out": str(args.out), "make_models": str(args.make_models)},
        "workloads": {},
    }
    for model in workloads:
        limit = inprocess_limit_of_processes(
            repository, model, args.seconds / 2, args.device, args.workers_per_gpu
        )
        print(model, "in-process", json.dumps(limit), flush=True)
        served = serve_and_measure(
            repository,
            model,
            args.out,
            args.seconds,
            args.batchers,
            args.client_processes,
            args.concurrency,
            limit["batch64_compute_s"],
            args.device,
            [int(r) for r in args.client_rows.split(",")],
            args.inflight_per_instance,
            args.gpus,
            args.shared_memory_min_bytes,
            args.client_shared_memory,
            args.pin_shared_memory,
            args.workers_per_gpu,
            args.repeats,
            args.warmup_seconds,
        )
        # Measured again after serving: a limit that moved in between (clocks, a neighbour on
        # the host) shows as two different figures instead of skewing the fraction unseen.
        after = inprocess_limit_of_processes(
            repository, model, args.seconds / 2, args.device, args.workers_per_gpu
        )
        limit["runner_samples_per_s_before"] = limit["runner_samples_per_s"]
        limit["runner_samples_per_s_after"] = after["runner_samples_per_s"]
        limit["runner_samples_per_s"] = statistics.mean(
            [limit["runner_samples_per_s"], after["runner_samples_per_s"]]
        )
        print(model, "in-process again", json.dumps(after), flush=True)
        for run in served["saturated"].values():
            # The limit is one GPU's: with several workers, compare with that many GPUs.
            gpu_limit = limit["runner_samples_per_s"] * args.gpus
            run["fraction_of_inprocess"] = run["samples_per_s"] / gpu_limit
            run["fraction_min"] = run["samples_per_s_min"] / gpu_limit
            run["fraction_max"] = run["samples_per_s_max"] / gpu_limit
        results["workloads"][model] = {"inprocess": limit, "served": served}
        print(
            model,
            "served",
            json.dumps({k: v for k, v in served.items() if k != "profile"}),
            flush=True,
        )
        (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    lines = [
        "| model | rows/request | in-process limit (samples/s, before / after) | bare module "
        "| served (samples/s, median of repeats) | fraction (min-max) | GPU util | mean batch "
        "| CPU cores: batcher / balancer / worker / clients |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    tails = [
        "",
        "| model | rows/request | p99 at 50% load (ms) | batch-64 compute (ms) | p99 / compute |",
        "|---|---|---|---|---|",
    ]
    for model, r in results["workloads"].items():
        served, lim = r["served"], r["inprocess"]
        for run in served["saturated"].values():
            cores = run["cpu_cores_by_role"]
            by_role = " / ".join(
                f"{cores.get(role, 0.0):.2f}" for role in ("batcher", "balancer", "worker")
            )
            bound = " **client-bound**" if run["client_bound"] else ""
            lines.append(
                f"| {model} | {run['rows_per_request']} | "
                f"{lim['runner_samples_per_s_before']:,.0f} / "
                f"{lim['runner_samples_per_s_after']:,.0f} | "
                f"{lim['bare_module_samples_per_s']:,.0f} | {run['samples_per_s']:,.0f} | "
                f"{run['fraction_of_inprocess']:.2f} ({run['fraction_min']:.2f}-"
                f"{run['fraction_max']:.2f}) | {run['gpu_util_mean']:.0f}% | "
                f"{run['mean_batch']:.1f} | {by_role} / {run['client_cores']:.2f}{bound} |"
            )
        for half in served["half_load"].values():
            tails.append(
                f"| {model} | {half['rows_per_request']} | {half['p99_ms']:.1f} "
                f"| {1000 * lim['batch64_compute_s']:.2f} | {half['p99_over_batch_compute']:.1f} |"
            )
    lines += tails
    table = "\n".join(lines) + f"\n\ndevice: {results['device']}, torch {results['torch']}\n"
    (args.out / "table.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
