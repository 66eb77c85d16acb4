"""Scale-up latency: from the scaler's decision to the first batch a new worker serves.

For each runtime (local processes, Docker containers) the suite runs with one worker under light
steady load; `ScaleTo(2)` is the decision, and the clock stops when the balancer's snapshot shows
the new worker with a completed batch. Then `ScaleTo(1)` drains one worker away and the next round
starts. Prints the median (and min/max) of N rounds per runtime; writes JSON to bench/results/.

    python -m bench.scale_up [--rounds 10] [--runtimes process,docker]

Docker needs a running engine and the tideserve-worker:dev image (scripts/docker_offline.sh).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import grpc

from harness.cluster import Cluster, free_port, wait_for, wait_healthy
from services.worker.models import DEFAULT_MODEL, write_default_model
from tideserve.v1 import cluster_pb2, cluster_pb2_grpc
from tideserve_tools.loadgen import SteadyLoad

RESULTS = Path(__file__).parent / "results"


def new_worker_served(cluster: Cluster, known: set[str]) -> str | None:
    """The id of a worker not in `known` that has completed a batch, if any."""
    for worker in cluster.snapshot().workers:
        if worker.worker_id not in known and worker.completed_batches > 0:
            return worker.worker_id
    return None


def measure(runtime: str, rounds: int, repository: Path, work: Path) -> list[float]:
    cluster = Cluster(repository, work / f"logs-{runtime}").start(workers=0)
    scaler_port = free_port()
    extra = []
    if runtime == "docker":
        extra = ["--worker-image", "tideserve-worker:dev", "--worker-cpus", "1", "--scaler-id",
                 f"bench-{int(time.time())}"]
    cluster.spawn(
        "scaler", "services.scaler", "--port", str(scaler_port), "--balancers", cluster.balancer,
        "--runtime", runtime, "--model-repository", str(repository), "--policy", "static",
        "--min-replicas", "1", "--max-replicas", "2", "--tick-s", "0.1",
        "--up-cooldown-s", "0", "--down-cooldown-s", "0", "--worker-threads", "1", *extra,
        *cluster.scaler_flags(),
    )
    wait_healthy(f"127.0.0.1:{scaler_port}")
    cluster.wait_workers(1, timeout_s=120)
    admin = cluster_pb2_grpc.ScalerAdminStub(grpc.insecure_channel(f"127.0.0.1:{scaler_port}"))
    samples: list[float] = []
    try:
        with SteadyLoad(cluster.batcher, DEFAULT_MODEL) as load:
            for _ in range(rounds):
                known = cluster.registered()
                began = time.monotonic()
                admin.ScaleTo(cluster_pb2.ScaleToRequest(replicas=2), timeout=10)
                wait_for(lambda k=known: new_worker_served(cluster, k), 120,
                         "a new worker's batch", interval_s=0.01)
                samples.append(time.monotonic() - began)
                admin.ScaleTo(cluster_pb2.ScaleToRequest(replicas=1), timeout=10)
                wait_for(lambda: len(cluster.registered()) == 1, 120, "scale back to 1")
        if load.errors:
            raise RuntimeError(f"{load.errors} requests failed during the measurement: "
                               f"{dict(load.failures)}")
    finally:
        cluster.stop()
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--runtimes", default="process,docker")
    args = parser.parse_args(argv)
    report: dict[str, object] = {"machine": platform.node(), "cpus": platform.processor(),
                                 "rounds": args.rounds, "runtimes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        repository = work / "models"
        write_default_model(repository)
        for path in [repository, *repository.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        for runtime in args.runtimes.split(","):
            samples = measure(runtime, args.rounds, repository, work)
            report["runtimes"][runtime] = {  # type: ignore[index]
                "samples_s": samples,
                "median_s": statistics.median(samples),
                "min_s": min(samples),
                "max_s": max(samples),
            }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scale_up.json").write_text(json.dumps(report, indent=2))
    print("| runtime | median (s) | min (s) | max (s) | rounds |")
    print("|---|---|---|---|---|")
    for runtime, figures in report["runtimes"].items():  # type: ignore[attr-defined]
        print(f"| {runtime} | {figures['median_s']:.2f} | {figures['min_s']:.2f} | "
              f"{figures['max_s']:.2f} | {len(figures['samples_s'])} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
