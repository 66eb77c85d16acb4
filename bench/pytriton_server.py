"""Serve a TorchScript file with PyTriton (real Triton server + dynamic batcher) as the baseline.

Why: tideserve's batcher is compared with a real Triton server on the same machine, model and
perf_analyzer command. PyTriton ships Triton's server binary and runs the model in a Python
backend, so it is the closest "Triton as users actually deploy it on CPU" we can run here.

Run it with the PyTriton venv made by ``bench/setup.sh`` (numpy<2 lives there); started from any
other interpreter this script re-executes itself under that venv. It also puts the interpreter's
libpython directory on ``LD_LIBRARY_PATH`` before Triton starts, because Triton's Python backend
stub otherwise loads a foreign libpython and model load fails (``_thread.RLock ...
_recursion_count``).

Batcher tuning (2-core CPU, batch-1 requests, measured with perf_analyzer; see the results JSON):
``--queue-delay-us`` sets ``max_queue_delay_microseconds``. Triton forms a batch from whatever is
queued when an instance frees up, and waits up to the delay only for more. With one model instance
on 2 cores, a zero delay already yields big batches under load (the instance is busy while requests
queue), and any positive delay adds directly to the concurrency-1 latency. The tuning sweep the
numbers came from is in ``bench/README.md``. One torch intra-op thread beat torch's default of
two by about 3x at c=64 (the model's threads otherwise fight Triton's own threads for 2 cores).

Usage:
    bench/.tools/pytriton-venv/bin/python bench/pytriton_server.py --model mlp.pt --name mlp \
        [--grpc-port 8011] [--max-batch 64] [--queue-delay-us 0] [--instances 1]
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import sysconfig
import threading
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
VENV_PYTHON = HERE / ".tools" / "pytriton-venv" / "bin" / "python"
_REEXEC_MARK = "TIDESERVE_BENCH_PYTRITON_REEXEC"

log = logging.getLogger("bench.pytriton")


def _ensure_runtime() -> None:
    """Re-exec under the PyTriton venv and with libpython on LD_LIBRARY_PATH if either is missing.

    LD_LIBRARY_PATH is read by the dynamic loader only at process start, so setting it inside the
    running process would not reach the Triton child processes reliably; a re-exec does.
    """
    try:
        import pytriton  # noqa: F401

        have_pytriton = True
    except ImportError:
        have_pytriton = False
    python = sys.executable if have_pytriton else str(VENV_PYTHON)
    if not have_pytriton and not VENV_PYTHON.exists():
        sys.exit(f"PyTriton not importable and {VENV_PYTHON} missing: run bench/setup.sh first")
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    paths = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p]
    need_env = bool(libdir) and libdir not in paths
    if have_pytriton and not need_env:
        return
    if os.environ.get(_REEXEC_MARK):
        # Already re-executed once; the venv python has the same LIBDIR, so this is unexpected.
        if not have_pytriton:
            sys.exit("PyTriton still not importable after re-exec under the bench venv")
        return
    env = dict(os.environ)
    env[_REEXEC_MARK] = "1"
    if libdir:
        env["LD_LIBRARY_PATH"] = ":".join([libdir, *paths])
    os.execve(python, [python, os.path.abspath(__file__), *sys.argv[1:]], env)


def free_port() -> int:
    """Return a currently free TCP port on 127.0.0.1 (for the HTTP and metrics endpoints)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; defaults are the tuned settings for this 2-core machine."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", required=True, type=Path, help="TorchScript file")
    p.add_argument("--name", default=None, help="model name (default: file stem)")
    p.add_argument("--grpc-port", type=int, default=8011)
    p.add_argument("--http-port", type=int, default=0, help="0 = pick a free port")
    p.add_argument("--metrics-port", type=int, default=0, help="0 = pick a free port")
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--queue-delay-us", type=int, default=0)
    p.add_argument(
        "--preferred", type=int, nargs="*", default=[], help="preferred batch sizes (none=off)"
    )
    p.add_argument("--instances", type=int, default=1, help="model instances (Python stubs)")
    p.add_argument(
        "--torch-threads", type=int, default=1, help="torch intra-op threads (0 = torch default)"
    )
    p.add_argument("--log-verbose", type=int, default=0)
    return p.parse_args(argv)


def make_infer_fn(model_path: Path, torch_threads: int) -> Any:
    """Build one batched inference callable holding its own TorchScript module.

    Each instance loads its own copy so instances never share module state across threads.
    """
    import numpy as np
    import torch
    from pytriton.decorators import batch

    if torch_threads > 0:
        torch.set_num_threads(torch_threads)
    module = torch.jit.load(str(model_path), map_location="cpu").eval()
    # torch's thread count is per OS thread and PyTriton calls `infer` from threads of its own:
    # set it there too, or each op runs on every core with spinning OpenMP threads (as
    # tideserve's worker did before services/worker/runner.py set it per executor thread).
    threads_set = threading.local()

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        if torch_threads > 0 and not getattr(threads_set, "done", False):
            torch.set_num_threads(torch_threads)
            threads_set.done = True
        x = torch.from_numpy(inputs["INPUT__0"])
        with torch.inference_mode():
            y = module(x)
        return {"OUTPUT__0": y.numpy()}

    return infer


def input_shape(model_path: Path) -> tuple[int, ...]:
    """Per-sample input shape, known for the standard workloads, else probed from the file name."""
    stem = model_path.stem
    if stem.startswith("cnn"):
        return (3, 64, 64)
    if stem.startswith("mlp"):
        return (256,)
    raise SystemExit(f"unknown input shape for {model_path}; name it mlp*.pt or cnn*.pt")


def main(argv: list[str] | None = None) -> None:
    """Start Triton via PyTriton and block until SIGINT/SIGTERM."""
    _ensure_runtime()
    import numpy as np
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import (
        DEFAULT_PROTECTED_ENDPOINTS,
        Triton,
        TritonConfig,
        TritonSecurityConfig,
    )

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    model_path = args.model.resolve()
    name = args.name or model_path.stem
    http_port = args.http_port or free_port()
    metrics_port = args.metrics_port or free_port()
    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=http_port,
        grpc_address="127.0.0.1",
        grpc_port=args.grpc_port,
        metrics_port=metrics_port,
        allow_gpu_metrics=False,
        log_verbose=args.log_verbose,
    )
    batcher = DynamicBatcher(
        max_queue_delay_microseconds=args.queue_delay_us,
        preferred_batch_size=list(args.preferred) or None,
    )
    model_config = ModelConfig(max_batch_size=args.max_batch, batcher=batcher)
    fns = [make_infer_fn(model_path, args.torch_threads) for _ in range(args.instances)]
    # PyTriton 0.7 token-protects "statistics" by default; perf_analyzer calls ModelStatistics (the
    # server advertises the extension) and aborts without the token. Statistics are read-only and
    # the server listens on loopback only, so unprotect just that endpoint and keep the others.
    security = TritonSecurityConfig(
        restricted_endpoints=[e for e in DEFAULT_PROTECTED_ENDPOINTS if e != "statistics"]
    )
    with Triton(config=config, security_config=security) as triton:
        triton.bind(
            model_name=name,
            infer_func=fns if len(fns) > 1 else fns[0],
            inputs=[Tensor(name="INPUT__0", dtype=np.float32, shape=input_shape(model_path))],
            outputs=[Tensor(name="OUTPUT__0", dtype=np.float32, shape=(10,))],
            config=model_config,
            strict=False,
        )
        log.info(
            "serving %s as %r on grpc 127.0.0.1:%d (http %d, metrics %d) max_batch=%d delay=%dus "
            "instances=%d",
            model_path, name, args.grpc_port, http_port, metrics_port, args.max_batch,
            args.queue_delay_us, args.instances,
        )
        triton.serve()


if __name__ == "__main__":
    main()
