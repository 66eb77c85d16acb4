"""`tideserve report`: PNG plots of one benchmark or autoscaling run, from a RUN.json file.

    tideserve report RUN.json [--out DIR]
        writes DIR/load_vs_replicas.png, DIR/latency.png and DIR/batch_sizes.png (DIR defaults to
        the file's folder) and prints their paths.
    tideserve report --record BALANCER --seconds N --out RUN.json [--scaler ADDR] [--slo-ms MS]
        samples a live stack's WatchCluster stream for N seconds and writes RUN.json
        (tideserve/record.py).

One file format for every producer — the recorder, `bench.sim_to_real --run-json`, `tideserve
policy eval --run-json` — so a simulated run and a real one are read and plotted the same way.

RUN.json (version 1), a JSON object:

    {
      "version": 1,
      "samples": [                      # the time series, in time order, at least one sample
        {
          "t": 0.0,                     # seconds since the run began
          "arrival_rate": 41.5,         # requests/s arriving at the frontend(s)
          "replicas_ready": 1,          # workers serving
          "replicas_desired": 2,        # workers the scaler asked for (ready + starting)
          "latency_p50_ms": 12.3,       # null when no request finished in the interval
          "latency_p99_ms": 48.0,       # null likewise
          "slo_ms": 500.0               # optional (absent or null): the latency target then
        },
        ...
      ],
      "batch_size_counts": {"1": 20, "8": 311},   # optional: batches dispatched per size
      "meta": {"source": "record", ...}           # optional, free-form: what produced the run
    }

JSON has no NaN or infinity, so a latency that is undefined (nothing finished) or unbounded (no
replica ready) is null and plotted as a gap. "version" may be omitted; any other version is refused
so an old reader never misplots a newer file.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tideserve.credentials import OPERATOR_TOKEN_HELP

VERSION = 1
PLOTS = ("load_vs_replicas.png", "latency.png", "batch_sizes.png")


class RunFormatError(ValueError):
    """RUN.json is not valid JSON or does not follow the schema; the message names the field."""


@dataclass(frozen=True)
class Sample:
    """One point of the time series; see the module docstring for each field."""

    t: float
    arrival_rate: float
    replicas_ready: int
    replicas_desired: int
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    slo_ms: float | None = None


@dataclass(frozen=True)
class Run:
    samples: list[Sample]
    batch_size_counts: dict[int, int] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        samples = []
        for sample in self.samples:
            row = asdict(sample)
            for key in ("latency_p50_ms", "latency_p99_ms", "slo_ms"):
                row[key] = _finite_or_none(row[key])
            if row["slo_ms"] is None:
                del row["slo_ms"]
            samples.append(row)
        return {
            "version": VERSION,
            "samples": samples,
            "batch_size_counts": {str(s): n for s, n in sorted(self.batch_size_counts.items())},
            "meta": self.meta,
        }

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        # allow_nan=False: a stray inf must fail here, not produce a file other readers reject.
        path.write_text(json.dumps(self.to_json(), indent=1, allow_nan=False) + "\n")
        return path


def batch_size_delta(before: Mapping[int, int], after: Mapping[int, int]) -> dict[int, int]:
    """Batches per size between two cumulative counts (the balancer's counts never reset)."""
    return {s: n - before.get(s, 0) for s, n in sorted(after.items()) if n - before.get(s, 0) > 0}


def _finite_or_none(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _float(where: str, value: object) -> float:
    # bool is an int in Python, but `true` as a latency is a producer bug, not a number.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RunFormatError(f"{where}: expected a number, got {value!r}")
    return float(value)


def _optional_float(where: str, value: object) -> float | None:
    return None if value is None else _float(where, value)


def _count(where: str, value: object) -> int:
    number = _float(where, value)
    if number < 0 or number != int(number):
        raise RunFormatError(f"{where}: expected a whole number >= 0, got {value!r}")
    return int(number)


def parse_run(data: object, source: str = "RUN.json") -> Run:
    """Validate `data` (decoded JSON) against the schema; RunFormatError names the bad field."""
    if not isinstance(data, dict):
        raise RunFormatError(f"{source}: expected a JSON object, got {type(data).__name__}")
    if data.get("version", VERSION) != VERSION:
        raise RunFormatError(f"{source}: version {data['version']!r} unsupported (want {VERSION})")
    rows = data.get("samples")
    if not isinstance(rows, list) or not rows:
        raise RunFormatError(f"{source}: 'samples' must be a non-empty list")
    samples = []
    for index, row in enumerate(rows):
        where = f"{source}: samples[{index}]"
        if not isinstance(row, dict):
            raise RunFormatError(f"{where}: expected an object, got {row!r}")
        missing = [k for k in ("t", "arrival_rate", "replicas_ready", "replicas_desired",
                               "latency_p50_ms", "latency_p99_ms") if k not in row]
        if missing:
            raise RunFormatError(f"{where}: missing {', '.join(missing)}")
        samples.append(Sample(
            t=_float(f"{where}.t", row["t"]),
            arrival_rate=_float(f"{where}.arrival_rate", row["arrival_rate"]),
            replicas_ready=_count(f"{where}.replicas_ready", row["replicas_ready"]),
            replicas_desired=_count(f"{where}.replicas_desired", row["replicas_desired"]),
            latency_p50_ms=_optional_float(f"{where}.latency_p50_ms", row["latency_p50_ms"]),
            latency_p99_ms=_optional_float(f"{where}.latency_p99_ms", row["latency_p99_ms"]),
            slo_ms=_optional_float(f"{where}.slo_ms", row.get("slo_ms")),
        ))
    counts = data.get("batch_size_counts") or {}
    if not isinstance(counts, dict):
        raise RunFormatError(f"{source}: 'batch_size_counts' must be an object of size -> count")
    batch_sizes = {}
    for size, n in counts.items():
        try:
            key = int(size)
        except ValueError:
            raise RunFormatError(f"{source}: batch_size_counts key {size!r} is not a "
                                 "batch size") from None
        batch_sizes[key] = _count(f"{source}: batch_size_counts[{size!r}]", n)
    meta = data.get("meta") or {}
    if not isinstance(meta, dict):
        raise RunFormatError(f"{source}: 'meta' must be an object")
    return Run(samples, batch_sizes, meta)


def load_run(path: Path) -> Run:
    try:
        data = json.loads(path.read_text())
    except OSError as error:
        raise RunFormatError(f"{path}: cannot read: {error.strerror or error}") from error
    except json.JSONDecodeError as error:
        raise RunFormatError(f"{path}: not JSON: {error}") from error
    return parse_run(data, str(path))


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
        epilog="RUN.json's schema: see tideserve/report.py.",
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
    from tideserve.record import record

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
