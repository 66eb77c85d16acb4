"""Service-time profiles: t(b), the seconds a worker takes for a batch of b rows, as
`tideserve profile` measures and writes them (JSON: model, batch_sizes, seconds, cold_start_s).

The scaler plans and simulates with one, adding the model and the cold start
(services/scaler/planner.py `ServiceProfile`). A worker given one (`--service-profile`) emulates
a slower device by padding each batch up to t(b). `--slowdown k` stretches a batch to k x its
measured compute time instead, which on a shared CPU also stretches whatever contention that batch
met k-fold: a scheduler hiccup of 1 ms becomes 200 ms at k = 200, so the workers stop behaving like
the profile that describes them. Padding sleeps for max(0, t(b) - real), so a batch takes
max(real, t(b)): the emulated device has exactly the profile's service curve whenever the real
model is faster than it, and contention only shows when it eats the whole budget, as it would on
a real device. The real model still runs, so outputs, memory and CPU use stay real.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class ServiceTimeProfile:
    """t(b) through measured points: piecewise linear between them, flat below the first and
    extended along the last segment above the last."""

    batch_sizes: tuple[int, ...]
    seconds: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.batch_sizes) != len(self.seconds) or len(self.batch_sizes) < 2:
            raise ValueError("a profile needs >= 2 (batch size, seconds) pairs of equal length")
        if list(self.batch_sizes) != sorted(set(self.batch_sizes)) or self.batch_sizes[0] < 1:
            raise ValueError("profile batch sizes must be increasing and >= 1")
        if min(self.seconds) <= 0:
            raise ValueError("profile times must be > 0")

    @classmethod
    def load(cls, path: str | Path) -> ServiceTimeProfile:
        data = json.loads(Path(path).read_text())
        return cls(
            batch_sizes=tuple(int(b) for b in data["batch_sizes"]),
            seconds=tuple(float(s) for s in data["seconds"]),
        )

    def seconds_for(self, rows: int) -> float:
        sizes, seconds = self.batch_sizes, self.seconds
        if rows <= sizes[-1]:
            return float(np.interp(rows, sizes, seconds))
        slope = (seconds[-1] - seconds[-2]) / (sizes[-1] - sizes[-2])
        return seconds[-1] + slope * (rows - sizes[-1])
