"""The one percentile definition of tideserve: the latencies a batcher reports upstream (and the
scaler acts on), the load drivers, the benchmarks and their reports all use it, so that a p99
from one can be set beside a p99 from another.

Nearest rank: the q-th percentile of n samples is the smallest sample with at least q % of the
samples at or below it (the sample of rank ceil(q/100 * n)). Chosen over linear interpolation
because it is always a latency some request really had, p100 is the maximum, and a tail figure
from few samples is not softened by interpolating towards a faster neighbour: with 100 samples
p99 is the 99th-fastest request, not a blend of the two slowest. It is also what Triton's
perf_analyzer reports, so figures beside its runs compare directly."""

from __future__ import annotations

import math
from collections.abc import Iterable


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
