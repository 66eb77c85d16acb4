"""An operator's own traffic as simulator traces: `tideserve policy eval --trace FILE` and
`tideserve policy train --traces DIR`.

Two formats are read:

* CSV, one row per point: `second,rate` (seconds from the start, requests/s). Lines starting with
  `#` and blank lines are skipped, as is a header row `second,rate`. Seconds must increase; each
  whole second takes the rate of the last row at or before it, so a trace sampled every minute
  holds each rate for that minute.
* RUN.json (`tideserve report --record BALANCER --out RUN.json`): the arrival rate the batchers
  reported, averaged per second. The batchers report it over their last 5 s, so the trace is that
  much smoother than the arrivals were; bursts within those 5 s come back through `cv`.

The simulator replays the trace at its own requests/s (`Trace.scale`) and draws each second's
arrivals around it: Poisson for `cv` 1, negative binomial (burstier) above.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tideserve.runs import RunFormatError, load_run
from tideserve_learning.sim.traces import Trace

SUFFIXES = (".csv", ".json")


class TraceFileError(ValueError):
    """A trace file cannot be read; the message names the file, the line and what to fix."""


def load(path: Path, cv: float = 1.0, seed: int = 0) -> Trace:
    """The trace in `path` (.csv or RUN.json), named after the file, with arrivals of `cv`."""
    if not cv >= 1.0:
        raise TraceFileError(f"cv must be >= 1 (1 is Poisson), got {cv}")
    if path.suffix == ".json":
        try:
            run = load_run(path)
        except RunFormatError as error:
            raise TraceFileError(str(error)) from error
        points = [(sample.t, sample.arrival_rate) for sample in run.samples]
        rates = _per_second_means(points, str(path))
    else:
        try:
            text = path.read_text()
        except OSError as error:
            raise TraceFileError(f"{path}: cannot read: {error.strerror or error}") from error
        rates = _held_per_second(parse_csv(text, str(path)), str(path))
    mean = float(rates.mean())
    if mean <= 0:
        raise TraceFileError(f"{path}: every rate is 0; a trace needs some traffic")
    return Trace(shape=path.stem, seed=seed, rates=rates / mean, cv=float(cv), scale=mean)


def load_dir(directory: Path, cv: float = 1.0) -> list[Trace]:
    """Every .csv and .json trace in `directory`, in name order (each its own seed)."""
    if not directory.is_dir():
        raise TraceFileError(f"{directory}: not a directory of traces")
    paths = sorted(p for p in directory.iterdir() if p.suffix in SUFFIXES)
    if not paths:
        raise TraceFileError(f"{directory}: no trace files (*.csv with second,rate, or RUN.json)")
    return [load(path, cv, seed) for seed, path in enumerate(paths)]


def parse_csv(text: str, source: str = "trace") -> list[tuple[float, float]]:
    """(second, rate) rows of a `second,rate` CSV; TraceFileError names the first bad line."""
    rows: list[tuple[float, float]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        fields = [f.strip() for f in stripped.split(",")]
        if not rows and [f.lower() for f in fields] == ["second", "rate"]:
            continue
        where = f"{source}:{number}"
        if len(fields) != 2:
            raise TraceFileError(f"{where}: expected two columns 'second,rate', got {line!r}")
        try:
            second, rate = float(fields[0]), float(fields[1])
        except ValueError:
            raise TraceFileError(f"{where}: 'second,rate' must be numbers, got {line!r}") from None
        if not (math.isfinite(second) and second >= 0):
            raise TraceFileError(f"{where}: second must be a number >= 0, got {fields[0]!r}")
        if not (math.isfinite(rate) and rate >= 0):
            raise TraceFileError(f"{where}: rate must be requests/s >= 0, got {fields[1]!r}")
        if rows and second <= rows[-1][0]:
            raise TraceFileError(
                f"{where}: seconds must increase, got {second:g} after {rows[-1][0]:g}"
            )
        rows.append((second, rate))
    if not rows:
        raise TraceFileError(f"{source}: no 'second,rate' rows")
    return rows


def _held_per_second(rows: Sequence[tuple[float, float]], source: str) -> np.ndarray:
    seconds = np.array([s for s, _ in rows]) - rows[0][0]
    length = int(math.floor(seconds[-1])) + 1
    if length < 2:
        raise TraceFileError(f"{source}: a trace must span at least 2 s")
    index = np.searchsorted(seconds, np.arange(length), side="right") - 1
    return np.array([r for _, r in rows])[index]


def _per_second_means(points: Sequence[tuple[float, float]], source: str) -> np.ndarray:
    """Mean rate of the samples within each whole second; a second without one holds the last."""
    start = points[0][0]
    length = int(math.floor(points[-1][0] - start)) + 1
    if length < 2:
        raise TraceFileError(f"{source}: a trace must span at least 2 s")
    sums, counts = np.zeros(length), np.zeros(length)
    for t, rate in points:
        second = int(math.floor(t - start))
        sums[second] += rate
        counts[second] += 1
    rates = np.empty(length)
    last = 0.0
    for second in range(length):
        if counts[second]:
            last = sums[second] / counts[second]
        rates[second] = last
    return rates
