"""The one latency record and percentile definition of the load drivers, the benchmarks and their
reports, so that a p99 from one benchmark can be set beside a p99 from another.

What is measured: end-to-end latency of a request, from just before its RPC is issued until its
response (or error) arrives, on `time.perf_counter()`. Not from a scheduled arrival time: an open
loop whose client falls behind would otherwise charge its own lateness to the server.

Which percentile: nearest rank, defined once in tideserve.latency (the batcher reports its
latencies with it too) and re-exported here for the tools."""

from __future__ import annotations

from dataclasses import dataclass, field

from tideserve.latency import percentile

__all__ = ["OK", "LatencyRecord", "percentile"]

OK = "OK"


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
