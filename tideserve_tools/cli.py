"""The `tideserve` command.

tideserve up [--demo]        run the whole suite locally (no Docker), optionally with a demo load
tideserve plan ...           replicas needed for a rate and an SLO (M/M/m, Erlang C)
tideserve policy train|eval  train / evaluate the learned autoscaling policy
tideserve policy export      a policy file's actor for the scaler (POLICY.npz from POLICY.zip)
tideserve top [--once]       live view of workers, load, batch sizes, replicas and policy
tideserve profile MODEL      measure a model's batch service times and a worker's cold start
tideserve report RUN.json    PNG plots of a run: load vs replicas, latency, batch sizes
tideserve bench [--quick]    the batching benchmark against Triton and the layout floor (checkout)
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tideserve.logs import configure_logging

if TYPE_CHECKING:
    from tideserve_tools.launcher import Suite, SuiteConfig

# The optional dependency group (pyproject.toml) each heavier command needs: `up` and `profile` run
# workers (torch), `policy` trains and evaluates (stable-baselines3, gymnasium), `report` plots.
COMMAND_EXTRAS = {"up": "worker", "profile": "worker", "policy": "learning", "report": "report"}
OWN_PACKAGES = {"tideserve", "tideserve_tools", "tideserve_learning", "services"}


def _add_up(commands: argparse._SubParsersAction) -> None:
    up = commands.add_parser("up", help="run balancer, batcher, scaler and workers on loopback")
    up.add_argument(
        "--model-repository",
        type=Path,
        default=Path("model_repository"),
        help="created with the default model if absent (default: %(default)s)",
    )
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--batcher-port", type=int, default=8001)
    up.add_argument("--balancer-port", type=int, default=8100)
    up.add_argument("--scaler-port", type=int, default=8200)
    up.add_argument("--batcher-metrics-port", type=int, default=8002)
    up.add_argument("--balancer-metrics-port", type=int, default=8102)
    up.add_argument("--scaler-metrics-port", type=int, default=8202)
    up.add_argument("--min-replicas", type=int, default=1)
    up.add_argument(
        "--max-replicas",
        type=int,
        default=None,
        help="default: fitted to this host (tideserve_tools.launcher.host_max_replicas)",
    )
    up.add_argument(
        "--scaler-policy",
        default="learned",
        help="the scaler's policy; learned falls back to hpa outside its training range",
    )
    up.add_argument("--worker-threads", type=int, default=0, help="torch threads per worker")
    up.add_argument(
        "--batcher-processes",
        type=int,
        default=1,
        help="batcher processes sharing the port (SO_REUSEPORT)",
    )
    up.add_argument("--log-dir", type=Path, default=Path(".tideserve/logs"))
    up.add_argument(
        "--credentials-dir",
        type=Path,
        help="where this run's balancer tokens are written (default: beside --log-dir, "
        ".tideserve/credentials)",
    )
    up.add_argument(
        "--state-dir",
        type=Path,
        default=Path(".tideserve/state"),
        help="where the scaler records its workers, to adopt them after a restart",
    )
    up.add_argument("--demo", action="store_true", help="drive a short load and print figures")
    up.add_argument("--exit-after-demo", action="store_true", help="stop the suite after the demo")
    up.add_argument(
        "--demo-model", default=None, help="model for the demo (default: the default model)"
    )
    up.add_argument("--demo-seconds", type=float, default=10.0)
    up.add_argument("--demo-concurrency", type=int, default=32)
    up.add_argument("--demo-stream", action="store_true", help="use ModelStreamInfer for the demo")


async def _batch_sizes(balancer: str, token_file: str) -> dict[int, int]:
    from tideserve import serving
    from tideserve.credentials import read_token_file
    from tideserve.v1 import cluster_pb2, cluster_pb2_grpc

    async with serving.channel(balancer) as channel:
        stub = cluster_pb2_grpc.BalancerStub(channel)
        call = stub.WatchCluster(
            cluster_pb2.WatchClusterRequest(),
            metadata=serving.bearer(read_token_file(token_file)),
        )
        snapshot = await call.read()
        call.cancel()
    return dict(snapshot.batch_size_counts)


async def _demo(
    args: argparse.Namespace, batcher: str, balancer: str, token_file: str, model: str
) -> None:
    from tideserve_tools.loadgen import closed_loop

    before = await _batch_sizes(balancer, token_file)
    mode = "stream" if args.demo_stream else "unary"
    print(
        f"demo: {args.demo_concurrency} concurrent {mode} clients on {model} for "
        f"{args.demo_seconds:.0f} s ...",
        flush=True,
    )
    result = await closed_loop(
        batcher,
        model,
        concurrency=args.demo_concurrency,
        seconds=args.demo_seconds,
        stream=args.demo_stream,
    )
    after = await _batch_sizes(balancer, token_file)
    sizes = {size: after.get(size, 0) - before.get(size, 0) for size in after}
    sizes = {s: n for s, n in sorted(sizes.items()) if n > 0}
    batches = sum(sizes.values())
    mean_size = sum(s * n for s, n in sizes.items()) / batches if batches else 0.0
    print(f"  requests ok {result.ok}, errors {result.errors or 0}")
    print(f"  throughput  {result.throughput:,.0f} infer/s")
    print(
        f"  latency ms  p50 {result.percentile_ms(50):.2f}  p90 {result.percentile_ms(90):.2f}"
        f"  p99 {result.percentile_ms(99):.2f}"
    )
    print(f"  batches     {batches}, mean size {mean_size:.1f}, largest {max(sizes, default=0)}")
    print("  batch sizes " + " ".join(f"{s}:{n}" for s, n in sizes.items()), flush=True)


def _up(args: argparse.Namespace) -> int:
    from tideserve_tools.launcher import SuiteConfig, host_max_replicas

    repository = args.model_repository
    if not repository.exists() or not any(repository.iterdir()):
        from services.worker.models import DEFAULT_MODEL, write_default_model

        write_default_model(repository)
        print(f"created model repository {repository} with the default model {DEFAULT_MODEL}")
    fitted = args.max_replicas is None
    max_replicas = host_max_replicas() if fitted else args.max_replicas
    config = SuiteConfig(
        host=args.host,
        batcher_port=args.batcher_port,
        balancer_port=args.balancer_port,
        scaler_port=args.scaler_port,
        batcher_metrics_port=args.batcher_metrics_port,
        balancer_metrics_port=args.balancer_metrics_port,
        scaler_metrics_port=args.scaler_metrics_port,
        model_repository=repository,
        min_replicas=args.min_replicas,
        max_replicas=max(max_replicas, args.min_replicas),
        scaler_policy=args.scaler_policy,
        worker_threads=args.worker_threads,
        batcher_processes=args.batcher_processes,
        log_dir=args.log_dir,
        credentials_dir=args.credentials_dir,
        state_dir=args.state_dir,
    )
    print(
        f"scaler policy {config.scaler_policy}, workers {config.min_replicas}.."
        f"{config.max_replicas}"
        + (" (max fitted to this host's cores and memory)" if fitted else ""),
        flush=True,
    )
    return asyncio.run(_run_suite(args, config))


async def _run_suite(args: argparse.Namespace, config: SuiteConfig) -> int:
    """Start the suite, then run until Ctrl-C/SIGTERM, the end of the demo with
    --exit-after-demo, or a service crash loop; stop everything either way. 1 if the suite
    failed (no ready model in time, crash loop), else 0."""
    from tideserve_tools.launcher import Suite

    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    # SIGINT explicitly too: a shell starts background jobs with SIGINT ignored, and Python then
    # keeps ignoring it, so `tideserve up &` would never stop on `kill -INT`.
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop_requested.set)
    suite = Suite(config)
    suite.start()
    tasks = [
        asyncio.create_task(suite.supervise(lambda line: print(line, flush=True))),
        asyncio.create_task(_serve(args, config, suite)),
        asyncio.create_task(stop_requested.wait()),
    ]
    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in tasks:
        task.cancel()
    failure = next((t.exception() for t in done if not t.cancelled() and t.exception()), None)
    if failure is not None:
        print(f"tideserve up: {failure}", file=sys.stderr, flush=True)
    print("stopping ...", flush=True)
    await suite.stop()
    print("stopped.", flush=True)
    return 1 if failure is not None else 0


async def _serve(args: argparse.Namespace, config: SuiteConfig, suite: Suite) -> None:
    """Wait for the suite, say where it is, run the demo if asked; then serve until cancelled
    (or return after the demo with --exit-after-demo)."""
    await suite.wait_ready(args.demo_model)
    print(f"tideserve is up (logs in {config.log_dir}/)")
    print(f"  inference (KServe v2 / Triton gRPC)  {config.batcher}")
    print(f"  balancer                             {config.balancer}")
    print(f"  balancer operator token              {config.token_file('operator')}")
    print(f"  scaler admin                         {config.scaler}")
    print(
        "  Prometheus /metrics                  "
        f"{config.host}:{config.batcher_metrics_port}, :{config.balancer_metrics_port}, "
        f":{config.scaler_metrics_port}; workers via "
        f"http://{config.host}:{config.balancer_metrics_port}/sd/workers"
    )
    if args.demo:
        from services.worker.models import DEFAULT_MODEL

        await _demo(
            args,
            config.batcher,
            config.balancer,
            config.token_file("operator"),
            args.demo_model or DEFAULT_MODEL,
        )
        if args.exit_after_demo:
            return
    print("Ctrl-C stops everything.", flush=True)
    await asyncio.Event().wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tideserve", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default=None,
                        help="default: INFO for `policy` (its progress), WARNING otherwise")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_up(commands)
    commands.add_parser("plan", help="replicas for a rate and SLO (M/M/m)", add_help=False)
    policy = commands.add_parser("policy", help="learned autoscaling policy")
    policy.add_argument("action", choices=["train", "eval", "export"])
    commands.add_parser("top", help="live view of the cluster", add_help=False)
    commands.add_parser("report", help="PNG plots of a run (or --record one)", add_help=False)
    commands.add_parser(
        "profile", help="measure t(b) and cold start; write a profile", add_help=False
    )
    commands.add_parser(
        "bench",
        help="the batching benchmark against Triton and the layout floor (a source checkout)",
        add_help=False,
    )
    args, rest = parser.parse_known_args(argv)
    # Configured here, once, before any command runs: `policy` reports its progress in INFO
    # lines, which a WARNING default would drop (the commands do not configure logging).
    configure_logging("cli", args.log_level or ("INFO" if args.command == "policy" else "WARNING"))
    try:
        return _run(parser, args, rest)
    except ModuleNotFoundError as error:
        # A plain install lacks the libraries of the heavier commands; say which extra has them.
        extra = COMMAND_EXTRAS.get(args.command)
        if extra is None or (error.name or "").split(".")[0] in OWN_PACKAGES:
            raise
        print(
            f"tideserve {args.command}: {error.name} is not installed; it comes with the "
            f"{extra} extra: pip install 'tideserve[{extra}]'",
            file=sys.stderr,
        )
        return 2


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace, rest: list[str]) -> int:
    if args.command == "up":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        return _up(args)
    if args.command == "plan":
        from tideserve_tools.plan import main as plan_main

        return plan_main(rest) or 0
    if args.command == "top":
        from tideserve_tools.top import main as top_main

        return top_main(rest)
    if args.command == "report":
        from tideserve_tools.report import main as report_main

        return report_main(rest)
    if args.command == "bench":
        return _bench(rest)
    if args.command == "profile":
        from tideserve_tools.profile import main as profile_main

        return profile_main(rest) or 0
    if args.action == "train":
        from tideserve_learning.train import main as train_main

        return train_main(rest) or 0
    if args.action == "export":
        from tideserve_learning.export import main as export_main

        return export_main(rest) or 0
    from tideserve_learning.evaluate import main as eval_main

    return eval_main(rest) or 0


def _bench(rest: list[str]) -> int:
    """`python -m bench.suite` of the checkout this command runs from. The benchmarks are not
    in the wheel (they need perf_analyzer, PyTriton and the shared workloads), so they are run
    as a program, never imported: the installed tools do not depend on them."""
    checkout = Path(__file__).resolve().parent.parent
    if not (checkout / "bench" / "suite.py").is_file():
        print(
            "tideserve bench: the benchmarks come with a source checkout of tideserve, not with "
            "the installed package; run it from the checkout (`.venv/bin/tideserve bench`)",
            file=sys.stderr,
        )
        return 2
    command = [sys.executable, "-m", "bench.suite", *rest]
    return subprocess.run(command, cwd=checkout, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
