"""The one latency record and percentile definition of the load drivers, the benchmarks and their
reports, so that a p99 from one benchmark can be set beside a p99 from another.

What is measured: end-to-end latency of a request, from just before its RPC is issued until its
response (or error) arrives, on `time.perf_counter()`. Not from a scheduled arrival time: an open
loop whose client falls behind would otherwise charge its own lateness to the server.

Which percentile: nearest rank. The q-th percentile of n samples is the smallest sample with at
least q % of the samples at or below it (the sample of rank ceil(q/100 * n)). Chosen over linear
interpolation because it is always a latency some request really had, p100 is the maximum, and a
tail figure from few samples is not softened by interpolating towards a faster neighbour: with
100 samples p99 is the 99th-fastest request, not a blend of the two slowest. It is also what
Triton's perf_analyzer reports, so figures beside its runs compare directly."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

OK = "OK"


def percentile(values: Iterable[float], q: float) -> float:
    """The nearest-rank `q`-th percentile (0 <= q <= 100) of `values`; NaN when there are none.

    q = 0 is the minimum and q = 100 the maximum."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be within [0, 100], got {q}")
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class LatencyRecord:
    """Every request's outcome: the latency (seconds) of each one answered, and per gRPC status
    name the count of those that failed, with their latencies where a request was issued (a
    request refused by the client itself, before any RPC, has none)."""

    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    error_latencies: dict[str, list[float]] = field(default_factory=dict)

    def add(self, code: str, latency_s: float | None) -> None:
        """One request's outcome: `code` "OK" or a status name; `latency_s` None if no RPC was
        issued."""
        if code == OK:
            if latency_s is None:
                raise ValueError("an answered request has a latency")
            self.latencies.append(latency_s)
            return
        self.errors[code] = self.errors.get(code, 0) + 1
        if latency_s is not None:
            self.error_latencies.setdefault(code, []).append(latency_s)

    def error(self, code: str) -> None:
        """A failure with no latency to record."""
        self.add(code, None)

    @property
    def ok(self) -> int:
        return len(self.latencies)

    @property
    def failed(self) -> int:
        return sum(self.errors.values())

    @property
    def sent(self) -> int:
        return self.ok + self.failed

    def codes(self) -> dict[str, int]:
        """Requests per outcome, "OK" included."""
        return {OK: self.ok, **self.errors} if self.ok else dict(self.errors)

    def percentile_ms(self, q: float, code: str = OK) -> float:
        """The `q`-th percentile (see `percentile`) of requests ending with `code`, in ms; NaN if
        there are none."""
        values = self.latencies if code == OK else self.error_latencies.get(code, [])
        return percentile(values, q) * 1000

    def merge(self, other: LatencyRecord) -> None:
        """Add `other`'s requests to these (the parts of one load spread over clients)."""
        self.latencies.extend(other.latencies)
        for code, count in other.errors.items():
            self.errors[code] = self.errors.get(code, 0) + count
        for code, values in other.error_latencies.items():
            self.error_latencies.setdefault(code, []).extend(values)
