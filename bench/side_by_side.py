"""Two source trees of tideserve measured side by side: each runs its own stack (as `tideserve
up` starts it for the suite: one batcher, one balancer, one worker), both up at once, and Triton's
perf_analyzer measures them in alternation, the order swapped every round. Drift on a shared
machine (other work, the host's own load) then falls on both alike, which consecutive runs of
the suite cannot promise: its rounds of one build come minutes before the other's. Each figure is
the median over the rounds, every round beside it.

    python -m bench.side_by_side --before DIR --after DIR --out FILE [--rounds 4] [--window-ms 3000]

DIR is a tideserve checkout (e.g. `git worktree add --detach /tmp/before <commit>`); both run on
this interpreter's packages. The points: mlp at concurrency 1, 16 and 64 over unary calls, and
64 over `ModelStreamInfer`, from perf_analyzer; and the lone request from a blocking client
(`c1_blocking`: tideserve's own stubs, 1,500 requests one at a time), whose only cost on the
machine's cores is its own call, where perf_analyzer keeps threads of its own busy beside the
servers. Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from bench import baseline, suite
from tideserve.latency import percentile
from tideserve.v1 import inference_pb2 as pb
from tideserve.v1 import inference_pb2_grpc

# (name, concurrency, over a stream); concurrency 0: the blocking client's lone requests.
POINTS = (
    ("c1_blocking", 0, False),
    ("c1", 1, False),
    ("c16", 16, False),
    ("c64", 64, False),
    ("c64_stream", 64, True),
)
MODEL = "mlp"
LONE_REQUESTS = 1500


def lone_requests(url: str, dims: list[int], count: int = LONE_REQUESTS) -> dict[str, Any]:
    """`count` one-row requests sent one at a time (after 100 unmeasured): their rate and p50."""
    request = pb.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="INPUT__0", datatype="FP32", shape=[1, *dims])
    request.raw_input_contents.append(np.zeros([1, *dims], dtype=np.float32).tobytes())
    latencies = []
    with grpc.insecure_channel(url) as channel:
        infer = inference_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer
        for _ in range(100):
            infer(request, timeout=10)
        for _ in range(count):
            started = time.perf_counter()
            infer(request, timeout=10)
            latencies.append(time.perf_counter() - started)
    return {
        "throughput_infer_per_s": count / sum(latencies),
        "p50_ms": percentile(latencies, 50) * 1000,
    }


def revision(tree: Path) -> str:
    """The tree's commit, marked when it has changes of its own."""
    head = subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return f"{head}{'+changes' if dirty else ''}" if head else str(tree)


def measure(trees: dict[str, Path], rounds: int, window_ms: int) -> dict[str, Any]:
    """Per point and tree, each round's perf_analyzer record."""
    workload = next(w for w in suite.WORKLOADS if w.name == MODEL)
    records: dict[str, dict[str, list[dict[str, Any]]]] = {
        name: {tree: [] for tree in trees} for name, _, _ in POINTS
    }
    with tempfile.TemporaryDirectory() as work, contextlib.ExitStack() as stack:
        root = Path(work)
        repository = suite.write_repository(root, slo_ms=25.0)
        urls = {
            tree: stack.enter_context(
                suite.tideserve(
                    repository, workload.threads, root / f"logs-{tree}", MODEL, checkout=path
                )
            ).batcher
            for tree, path in trees.items()
        }
        order = list(trees)
        for index in range(rounds):
            print(f"round {index + 1} of {rounds}", flush=True)
            for name, concurrency, streaming in POINTS:
                for tree in order if index % 2 == 0 else order[::-1]:
                    if concurrency:
                        record = suite.pa(
                            urls[tree], MODEL, concurrency, window_ms, streaming=streaming
                        )
                    else:
                        record = lone_requests(urls[tree], workload.input_dims)
                    records[name][tree].append(record)
    return records


def summarise(records: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    """Medians per point and tree, and after / before."""
    points = {}
    for name, by_tree in records.items():
        point: dict[str, Any] = {}
        for tree, runs in by_tree.items():
            throughputs = [r.get("throughput_infer_per_s") or 0.0 for r in runs]
            p50s = [r["p50_ms"] for r in runs if r.get("p50_ms") is not None]
            point[tree] = {
                "throughput": statistics.median(throughputs),
                "p50_ms": statistics.median(p50s) if p50s else None,
                "rounds": throughputs,
            }
        before, after = point["before"]["throughput"], point["after"]["throughput"]
        point["ratio"] = after / before if before else None
        points[name] = point
    return points


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.side_by_side", description=__doc__)
    parser.add_argument("--before", type=Path, required=True, help="a tideserve checkout")
    parser.add_argument("--after", type=Path, required=True, help="a tideserve checkout")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--window-ms", type=int, default=3000, help="perf_analyzer's window")
    parser.add_argument("--out", type=Path, required=True, help="the JSON written")
    args = parser.parse_args(argv)
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    started = time.strftime("%Y-%m-%d, %H:%M", time.gmtime())
    points = summarise(measure(trees, args.rounds, args.window_ms))
    result = {
        "bench": "bench.side_by_side",
        "machine": baseline.machine_info(),
        "date": f"{started}-{time.strftime('%H:%M', time.gmtime())} UTC",
        "revisions": {tree: revision(path) for tree, path in trees.items()},
        "rounds": args.rounds,
        "window_ms": args.window_ms,
        "points": points,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name, point in points.items():
        print(
            f"{name}: before {point['before']['throughput']:,.0f} infer/s, after "
            f"{point['after']['throughput']:,.0f} infer/s ({point['ratio']:.3f}x)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
