"""RUN.json: one run of a serving stack or of the simulator as a time series.

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

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

VERSION = 1


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


