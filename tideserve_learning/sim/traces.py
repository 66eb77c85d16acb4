"""Seeded load traces for the serving-cluster simulator.

A trace is a per-second arrival rate relative to its own mean (mean 1.0) plus the coefficient of
variation (CV) of inter-arrival times within a second; the simulator scales it to requests/s for
the cluster it models. Four archetypes, after the AAPA taxonomy and the Azure Functions 2019 trace:

  diurnal  one compressed day per episode: 1 + A sin(2 pi t / T), A in [0.25, 0.5], so peak/mean
           1.25-1.5 (Azure's aggregate hourly load spans 0.78-1.55 x mean); CV 1-2
  ramp     low plateau, linear ramp to 2-4x the low level, high plateau; CV 1-2
  spike    flash crowd: baseline, a rise over 10-30 s to 3-5x, 20-60 s at peak, exponential decay;
           peak/mean 2.5-4.5; CV 1-2
  mmpp     bursty two-state Markov-modulated Poisson: high state 2-4x the low one, sojourns of
           60-120 s (low) and 10-30 s (high); CV 2-4 (Azure: 85% of apps have CV <= 4)

The split is fixed: training uses seeds 0-89 of diurnal, ramp and mmpp; validation (choosing among
trained candidates or reward weights) uses seeds 90-99 of the same shapes; evaluation uses seeds
1000-1004 of all four, so `spike` is a shape the learned policy never saw and every evaluation
trace is a seed it never saw.

Out of family, never trained or tuned on (seeds 2000-2004), two shapes real services show that
none of the four is:

  double_peak  two daily peaks of different heights (morning and evening) over a base of 1, plus
               a flash crowd that jumps 2-3x within 2-5 s, holds 20-60 s and decays in 10-30 s;
               CV 1-2
  staircase    4-7 sudden jumps between levels 1-5 (releases, batch jobs, a failover moving
               traffic), each held 40-150 s; CV 1-2
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

SHAPES = ("diurnal", "ramp", "spike", "mmpp")
OUT_OF_FAMILY_SHAPES = ("double_peak", "staircase")
TRAIN_SHAPES = ("diurnal", "ramp", "mmpp")
HELD_OUT_SHAPES = ("spike",)
TRAIN_SEEDS = tuple(range(90))
VALIDATION_SEEDS = tuple(range(90, 100))
TEST_SEEDS = tuple(range(1000, 1005))
OUT_OF_FAMILY_SEEDS = tuple(range(2000, 2005))
DEFAULT_DURATION_S = 600


@dataclass(frozen=True)
class Trace:
    """Relative arrival rate per second (mean 1.0) and the within-second inter-arrival CV.

    `scale` is the trace's own requests/s per unit of rate (its mean rate) when it comes from real
    traffic; None for a generated shape, which the simulator scales to its cluster."""

    shape: str
    seed: int
    rates: np.ndarray
    cv: float
    scale: float | None = None

    @property
    def peak_to_mean(self) -> float:
        return float(self.rates.max() / self.rates.mean())


def _diurnal(rng: np.random.Generator, n: int) -> np.ndarray:
    t = np.arange(n)
    amplitude = rng.uniform(0.25, 0.5)
    phase = rng.uniform(0, 2 * np.pi)
    return 1.0 + amplitude * np.sin(2 * np.pi * t / n + phase)


def _ramp(rng: np.random.Generator, n: int) -> np.ndarray:
    high = rng.uniform(2.0, 4.0)
    start = int(rng.uniform(0.1, 0.4) * n)
    length = int(rng.uniform(0.1, 0.4) * n)
    rates = np.interp(np.arange(n), [start, start + length], [1.0, high])
    return rates[::-1] if rng.random() < 0.3 else rates


def _spike(rng: np.random.Generator, n: int) -> np.ndarray:
    t = np.arange(n, dtype=float)
    start = rng.uniform(0.2, 0.6) * n
    rise, hold = rng.uniform(10, 30), rng.uniform(20, 60)
    height, decay = rng.uniform(2.0, 4.0), rng.uniform(30, 60)
    up = np.clip((t - start) / rise, 0.0, 1.0)
    down = np.exp(-np.clip(t - start - rise - hold, 0.0, None) / decay)
    return 1.0 + height * up * down


def _mmpp(rng: np.random.Generator, n: int) -> np.ndarray:
    high = rng.uniform(2.0, 4.0)
    mean_sojourn = (rng.uniform(60, 120), rng.uniform(10, 30))
    rates = np.empty(n)
    state, i = 0, 0
    while i < n:
        length = max(1, int(round(rng.exponential(mean_sojourn[state]))))
        rates[i : i + length] = high if state else 1.0
        i += length
        state = 1 - state
    return rates


def _double_peak(rng: np.random.Generator, n: int) -> np.ndarray:
    t = np.arange(n, dtype=float)
    rates = np.ones(n)
    for centre, height in ((rng.uniform(0.2, 0.35), rng.uniform(1.0, 2.0)),
                           (rng.uniform(0.6, 0.8), rng.uniform(1.5, 2.5))):
        width = rng.uniform(0.06, 0.1) * n
        rates += height * np.exp(-0.5 * ((t - centre * n) / width) ** 2)
    start = rng.uniform(0.1, 0.85) * n
    rise, hold, decay = rng.uniform(2, 5), rng.uniform(20, 60), rng.uniform(10, 30)
    up = np.clip((t - start) / rise, 0.0, 1.0)
    down = np.exp(-np.clip(t - start - rise - hold, 0.0, None) / decay)
    return rates * (1.0 + rng.uniform(1.0, 2.0) * up * down)


def _staircase(rng: np.random.Generator, n: int) -> np.ndarray:
    rates = np.empty(n)
    i, level = 0, rng.uniform(1.0, 2.0)
    while i < n:
        length = int(rng.uniform(40, 150))
        rates[i : i + length] = level
        i += length
        level = float(np.clip(level * rng.choice([0.5, 1.8, 2.5]), 1.0, 5.0))
    return rates


_GENERATORS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "diurnal": _diurnal, "ramp": _ramp, "spike": _spike, "mmpp": _mmpp,
    "double_peak": _double_peak, "staircase": _staircase,
}


def generate(shape: str, seed: int, duration_s: int = DEFAULT_DURATION_S) -> Trace:
    """The trace of `shape` for `seed`: the same arrays on every machine and every call."""
    if shape not in _GENERATORS:
        raise ValueError(f"unknown trace shape {shape!r}; choose one of {', '.join(_GENERATORS)}")
    rng = np.random.default_rng([seed, list(_GENERATORS).index(shape)])
    rates = _GENERATORS[shape](rng, duration_s)
    # Slow multiplicative noise, so that no two seeds of a shape are scaled copies of each other.
    noise = np.exp(np.convolve(rng.normal(0, 0.05, duration_s), np.ones(5) / 5**0.5, "same"))
    rates = rates * noise
    cv = float(rng.choice([2.0, 4.0]) if shape == "mmpp" else rng.choice([1.0, 2.0]))
    return Trace(shape=shape, seed=seed, rates=rates / rates.mean(), cv=cv)


def compress(trace: Trace, factor: int) -> Trace:
    """`trace` played `factor` times faster: each second is the mean rate of `factor` seconds
    (the mean stays 1.0). For replaying a 10-minute trace against a real stack in 2-3 minutes."""
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    n = len(trace.rates) // factor * factor
    rates = trace.rates[:n].reshape(-1, factor).mean(axis=1)
    scale = None if trace.scale is None else trace.scale * float(rates.mean())
    return Trace(trace.shape, trace.seed, rates / rates.mean(), trace.cv, scale)


def train_set(mmpp_repeat: int = 1) -> list[tuple[str, int]]:
    """(shape, seed) pairs the policy may be trained and tuned on. With `mmpp_repeat` k each MMPP
    pair is listed k times, so an environment drawing uniformly from the list trains on MMPP in
    k / (k + 2) of its episodes (1/3 at k = 1): MMPP is where the policy spends its misses."""
    if mmpp_repeat < 1:
        raise ValueError(f"mmpp_repeat must be >= 1, got {mmpp_repeat}")
    return [(shape, seed) for shape in TRAIN_SHAPES
            for seed in TRAIN_SEEDS * (mmpp_repeat if shape == "mmpp" else 1)]


def validation_set() -> list[tuple[str, int]]:
    """(shape, seed) pairs for choosing among trained policies: training shapes, unseen seeds."""
    return [(shape, seed) for shape in TRAIN_SHAPES for seed in VALIDATION_SEEDS]


def test_set() -> list[tuple[str, int]]:
    """(shape, seed) pairs held out for evaluation: unseen seeds, and the unseen spike shape."""
    return [(shape, seed) for shape in SHAPES for seed in TEST_SEEDS]


def out_of_family_set() -> list[tuple[str, int]]:
    """(shape, seed) pairs of shapes outside the training family, for evaluation only."""
    return [(shape, seed) for shape in OUT_OF_FAMILY_SHAPES for seed in OUT_OF_FAMILY_SEEDS]
