"""Baseline measurements: PyTriton (real Triton) and the in-process limit, saved as JSON.

Why: the batcher's targets are ratios against these two numbers on this machine, so
they are measured by one script with the settings recorded next to the figures.

    .venv/bin/python -m bench.baseline                 # the standard baseline set
    .venv/bin/python -m bench.baseline --sweep         # PyTriton batcher tuning sweep (mlp, c=64)

Results go to bench/results/ (gitignored). Needs ``bench/setup.sh`` to have run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from harness.perf_analyzer import run_perf_analyzer  # noqa: E402

RESULTS = HERE / "results"
MODELS = HERE / ".tools" / "models"
VENV_PY = HERE / ".tools" / "pytriton-venv" / "bin" / "python"
# ../shared beside the checkout, as in CI.
MAKE_MODELS = ROOT.parent / "shared" / "workloads" / "make_models.py"


def ensure_models() -> None:
    """Write mlp.pt and cnn.pt once with the shared generator (fixed seeds: same bytes for all)."""
    if (MODELS / "mlp.pt").exists() and (MODELS / "cnn.pt").exists():
        return
    subprocess.run(
        ["timeout", "300", sys.executable, str(MAKE_MODELS), str(MODELS)], check=True
    )


def _wait_ready(url: str, model: str, timeout_s: float, proc: subprocess.Popen[bytes]) -> None:
    """Poll ModelReady over gRPC until the model answers ready (PyTriton start takes ~15 s)."""
    import grpc

    from tideserve.v1 import inference_pb2, inference_pb2_grpc

    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(url) as ch:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(ch)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode} before ready")
            try:
                if stub.ModelReady(inference_pb2.ModelReadyRequest(name=model), timeout=2).ready:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.5)
    raise TimeoutError(f"{model} not ready on {url} after {timeout_s} s")


@contextlib.contextmanager
def pytriton(
    model_path: Path,
    name: str,
    grpc_port: int = 8011,
    queue_delay_us: int = 0,
    instances: int = 1,
    torch_threads: int = 1,
    max_batch: int = 64,
    log_path: Path | None = None,
) -> Iterator[str]:
    """Start bench/pytriton_server.py in its own process group; yield its gRPC address; stop it.

    A process group so the Triton server and its Python-backend stubs are stopped with it; only
    the group this function created is signalled.
    """
    cmd = [
        "timeout", "3600", str(VENV_PY), str(HERE / "pytriton_server.py"),
        "--model", str(model_path), "--name", name, "--grpc-port", str(grpc_port),
        "--queue-delay-us", str(queue_delay_us), "--instances", str(instances),
        "--torch-threads", str(torch_threads), "--max-batch", str(max_batch),
    ]
    if log_path is None:
        log_path = RESULTS / "logs" / f"pytriton_{name}_d{queue_delay_us}_i{instances}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "w")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"127.0.0.1:{grpc_port}"
        _wait_ready(url, name, 120, proc)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        # The `timeout` wrapper exits at once on SIGINT while tritonserver takes seconds to drain
        # and release its port; wait for the whole group to be gone so the next start can bind.
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        log.close()


def machine_info() -> dict[str, Any]:
    """What the figures were measured on (recorded with every result file)."""
    import torch

    load = os.getloadavg()
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "perf_analyzer": "tritonclient 2.48.0 wheel",
        "loadavg_at_start": [round(x, 2) for x in load],
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def save(name: str, record: dict[str, Any]) -> Path:
    """Write one JSON result under bench/results/."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def sweep(measurement_ms: int) -> dict[str, Any]:
    """PyTriton tuning sweep for mlp at c=64 (and c=1 for the delay cost on a lone request)."""
    ensure_models()
    info = machine_info()
    runs: list[dict[str, Any]] = []
    for instances, delay, tthreads in (
        (1, 0, 0), (1, 500, 0), (1, 2000, 0), (1, 0, 1), (2, 0, 1), (2, 1000, 1),
    ):
        cfg = {"instances": instances, "queue_delay_us": delay, "torch_threads": tthreads}
        with pytriton(MODELS / "mlp.pt", "mlp", **cfg) as url:
            for c in (64, 1):
                r = run_perf_analyzer(url, "mlp", c, measurement_ms=measurement_ms)
                row = {**cfg, "concurrency": c, **{
                    k: r.get(k) for k in ("ok", "throughput_infer_per_s", "p50_ms", "p99_ms")
                }}
                print(json.dumps(row), flush=True)
                runs.append({**cfg, **r})
                # Saved after every run: a sweep that dies midway still leaves its figures.
                save("pytriton_sweep", {"kind": "pytriton_sweep", "machine": info, "runs": runs})
    return {"kind": "pytriton_sweep", "machine": info, "runs": runs}


def baseline(measurement_ms: int, pytriton_cfg: dict[str, Any]) -> dict[str, Any]:
    """The standard set: PyTriton mlp c=1, c=64, cnn c=16 (unary), and the in-process limits."""
    from bench import inprocess

    ensure_models()
    out: dict[str, Any] = {"machine": machine_info(), "pytriton_settings": pytriton_cfg}
    for model, levels in (("mlp", (1, 64)), ("cnn", (16,))):
        with pytriton(MODELS / f"{model}.pt", model, **pytriton_cfg) as url:
            for c in levels:
                r = run_perf_analyzer(url, model, c, measurement_ms=measurement_ms)
                out[f"pytriton_{model}_c{c}"] = r
                print(model, c, r.get("throughput_infer_per_s"), r.get("p50_ms"),
                      r.get("p99_ms"), r.get("ok"), flush=True)
    for model, threads in (("mlp", 1), ("cnn", 1)):
        rec = inprocess.run(MODELS / f"{model}.pt", [1, 8, 16, 32, 64], threads=threads,
                            seconds=3.0)
        out[f"inprocess_{model}"] = rec
        print(model, "in-process best", rec["best_samples_per_s"], flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    """CLI entry point; see the module docstring."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sweep", action="store_true")
    p.add_argument("--measurement-ms", type=int, default=4000)
    p.add_argument("--queue-delay-us", type=int, default=0)
    p.add_argument("--instances", type=int, default=1)
    p.add_argument("--torch-threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.sweep:
        path = save("pytriton_sweep", sweep(args.measurement_ms))
    else:
        cfg = {"queue_delay_us": args.queue_delay_us, "instances": args.instances,
               "torch_threads": args.torch_threads}
        path = save("baseline", baseline(args.measurement_ms, cfg))
    print("wrote", path)


if __name__ == "__main__":
    main()
