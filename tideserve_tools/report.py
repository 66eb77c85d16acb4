"""`tideserve report`: PNG plots of one benchmark or autoscaling run, from a RUN.json file.

    tideserve report RUN.json [--out DIR]
        writes DIR/load_vs_replicas.png, DIR/latency.png and DIR/batch_sizes.png (DIR defaults to
        the file's folder) and prints their paths.
    tideserve report --record BALANCER --seconds N --out RUN.json [--scaler ADDR] [--slo-ms MS]
        samples a live stack's WatchCluster stream for N seconds and writes RUN.json
        (tideserve_tools/record.py).

The file format (RUN.json) is tideserve/runs.py.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from tideserve.credentials import OPERATOR_TOKEN_HELP
from tideserve.runs import Run, RunFormatError, load_run

PLOTS = ("load_vs_replicas.png", "latency.png", "batch_sizes.png")


def _title(run: Run, fallback: str) -> str:
    return str(run.meta.get("title") or fallback)


def plot_run(run: Run, out: Path, title: str = "run") -> list[Path]:
    """Write the three PNGs into `out`; returns their paths in PLOTS order."""
    import matplotlib

    # Agg: no display is needed (or present on a server), and PNGs are all we write.
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out.mkdir(parents=True, exist_ok=True)
    title = _title(run, title)
    t = np.array([s.t for s in run.samples])

    def nan(values: Sequence[float | None]) -> np.ndarray:
        return np.array([np.nan if v is None else v for v in values], dtype=float)

    paths = [out / name for name in PLOTS]

    fig, load_ax = plt.subplots(figsize=(9, 4))
    load_ax.plot(t, [s.arrival_rate for s in run.samples], color="tab:blue", lw=1.0,
                 label="arrival rate")
    load_ax.set_xlabel("time (s)")
    load_ax.set_ylabel("arrival rate (requests/s)", color="tab:blue")
    load_ax.set_ylim(bottom=0)
    replica_ax = load_ax.twinx()
    replica_ax.step(t, [s.replicas_desired for s in run.samples], where="post",
                    color="tab:orange", ls="--", lw=1.2, label="desired")
    replica_ax.step(t, [s.replicas_ready for s in run.samples], where="post",
                    color="tab:green", lw=1.6, label="ready")
    replica_ax.set_ylabel("replicas")
    top = max(max(s.replicas_desired, s.replicas_ready) for s in run.samples)
    replica_ax.set_ylim(0, top + 1)
    replica_ax.yaxis.get_major_locator().set_params(integer=True)
    # One legend for both axes, so the load line is named too.
    handles = load_ax.get_legend_handles_labels()[0] + replica_ax.get_legend_handles_labels()[0]
    replica_ax.legend(handles=handles, loc="upper left", fontsize=8)
    load_ax.set_title(f"{title}: load vs replicas")
    fig.tight_layout()
    fig.savefig(paths[0], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 4))
    p50 = nan([s.latency_p50_ms for s in run.samples])
    p99 = nan([s.latency_p99_ms for s in run.samples])
    slo = nan([s.slo_ms for s in run.samples])
    ax.plot(t, p50, lw=1.0, label="p50")
    ax.plot(t, p99, lw=1.0, label="p99")
    if np.isfinite(slo).any():
        ax.step(t, slo, where="post", color="red", ls="--", lw=1.0, label="SLO")
    shown = np.concatenate([p50, p99, slo])
    shown = shown[np.isfinite(shown) & (shown > 0)]
    # Latencies under overload span orders of magnitude; a log axis keeps p50 readable then.
    if shown.size and shown.max() / shown.min() > 50:
        ax.set_yscale("log")
    else:
        ax.set_ylim(bottom=0)
    if not np.isfinite(np.concatenate([p50, p99])).any():
        ax.text(0.5, 0.5, "no latencies recorded", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("latency (ms)")
    ax.set_title(f"{title}: latency percentiles")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(paths[1], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 4))
    counts = {s: n for s, n in sorted(run.batch_size_counts.items()) if n > 0}
    if counts:
        batches = sum(counts.values())
        mean = sum(s * n for s, n in counts.items()) / batches
        ax.bar(list(counts), [n / batches for n in counts.values()], width=0.8)
        ax.set_xlabel("batch size (rows)")
        ax.set_ylabel("share of batches")
        ax.set_title(f"{title}: batch sizes ({batches} batches, mean {mean:.1f})")
        if len(counts) <= 16:
            ax.set_xticks(list(counts))
    else:
        ax.text(0.5, 0.5, "no batch sizes recorded", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_title(f"{title}: batch sizes")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(paths[2], dpi=100)
    plt.close(fig)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tideserve report", description=__doc__.splitlines()[0],
        epilog="RUN.json's schema: see tideserve/runs.py.",
    )
    parser.add_argument("run", nargs="?", type=Path, help="RUN.json to plot")
    parser.add_argument("--out", type=Path,
                        help="plots: folder for the PNGs (default: RUN.json's folder); "
                             "--record: the RUN.json to write")
    parser.add_argument("--record", metavar="BALANCER", help="record a live stack instead")
    parser.add_argument("--seconds", type=float, default=30.0, help="--record: how long")
    parser.add_argument("--interval", type=float, default=0.5,
                        help="--record: seconds between samples")
    parser.add_argument("--scaler", help="--record: scaler address, for desired replicas")
    parser.add_argument("--slo-ms", type=float, help="--record: SLO to store with each sample")
    parser.add_argument("--token-file", help=f"--record: {OPERATOR_TOKEN_HELP}")
    args = parser.parse_args(argv)
    if (args.run is None) == (args.record is None):
        parser.error("give either RUN.json to plot or --record BALANCER")
    if args.record is not None:
        if args.out is None:
            parser.error("--record needs --out RUN.json")
        return _record(args)
    try:
        run = load_run(args.run)
    except RunFormatError as error:
        print(f"tideserve report: {error}", file=sys.stderr)
        return 2
    for path in plot_run(run, args.out or args.run.parent, title=args.run.stem):
        print(path)
    return 0


def _record(args: argparse.Namespace) -> int:
    import asyncio

    import grpc

    from tideserve.credentials import operator_token_file, read_token_file
    from tideserve_tools.record import record

    try:
        token = read_token_file(operator_token_file(args.token_file), "--token-file")
        run = asyncio.run(record(args.record, args.seconds, interval_s=args.interval,
                                 scaler=args.scaler, slo_ms=args.slo_ms, token=token))
    except grpc.aio.AioRpcError as error:
        print(f"tideserve report: balancer {args.record}: {error.code().name}", file=sys.stderr)
        return 1
    except (ValueError, RuntimeError) as error:
        print(f"tideserve report: {error}", file=sys.stderr)
        return 1
    print(run.write(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
