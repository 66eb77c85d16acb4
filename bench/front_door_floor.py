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
import json
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

from bench.floor_servers import MODEL, floor_server
from harness.repeats import rotated_rounds
from tideserve.procs import free_port


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
