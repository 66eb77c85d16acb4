"""Batching policies: how large a batch to aim for and how long its oldest request may wait.

Every policy implements `target(queued_rows, now) -> (rows, max_wait_s)`; `arrived` and `observe`
feed it what it learns. The queue (batching.py) applies the answer; dispatch capacity gates it.

  fixed         Triton's rule: the max batch size, waiting at most max_queue_delay.
  queue_length  the seed's batch_size_fn(queue_length): take what is queued now, never wait.
  slo           never waits; from the measured service-time curve t(b) = a + c*b and the arrival
                rate, batches no larger than the latency budget affords while that keeps up.
  aimd          Clipper's additive-increase / multiplicative-decrease on observed latency.
Default: `slo` when the model config sets `slo_ms`, else `fixed`. `fixed` and `queue_length`
stop short of the max batch size where the measured curve shows a smaller batch serving rows
clearly faster (`throughput_cap`).

A model config names its policy in parameters.batching_policy; `create_policy` looks the name up
in `POLICIES` (filled by `register`), and an unknown name is a ValueError that lists the valid
ones. The shared runtime (tideserve/modelconfig.py) does not know these names: the batcher is the
only reader of the parameter, and the layers keep services out of the runtime.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Protocol

import numpy as np

from tideserve.modelconfig import ModelSpec

ServiceCurve = Callable[[], Mapping[int, float]]

# Share of the SLO a batch's compute may take; the rest is left for queueing behind the batch in
# flight and for the network hops.
DEFAULT_HEADROOM = 0.5
# Time constant of the arrival-rate estimate.
RATE_TAU_S = 1.0
# How much faster (rows per second) a smaller measured batch must serve than every larger
# measured one before batches stop at it: noise in the curve must not cap a model whose rows get
# cheaper with size.
CAP_MARGIN = 1.1


class BatchPolicy(Protocol):
    name: str

    def arrived(self, rows: int, now: float) -> None:
        """A request of `rows` joined the queue."""
        ...

    def target(self, queued_rows: int, now: float) -> tuple[int, float]:
        """(target rows, max wait seconds of the oldest request) for the queue as it stands."""
        ...

    def observe(self, rows: int, queue_seconds: float, service_seconds: float) -> None:
        """A batch finished: how long its oldest request queued, and how long the worker took
        to compute it (the hops excluded: they grow with the front door's load, not with the
        batch's size)."""
        ...


class ArrivalRate:
    """Rows per second, an exponentially decaying count over `tau_s`."""

    def __init__(self, tau_s: float = RATE_TAU_S) -> None:
        self.tau_s = tau_s
        self._count = 0.0
        self._last = 0.0

    def add(self, rows: int, now: float) -> None:
        self._count = self._count * math.exp(-(now - self._last) / self.tau_s) + rows
        self._last = now

    def rate(self, now: float) -> float:
        return self._count * math.exp(-(now - self._last) / self.tau_s) / self.tau_s


def fit_affine(curve: Mapping[int, float]) -> tuple[float, float] | None:
    """Least-squares t(b) = a + c*b over the measured points; None with no measurement."""
    if not curve:
        return None
    sizes = np.fromiter(curve.keys(), dtype=float)
    times = np.fromiter(curve.values(), dtype=float)
    if len(curve) == 1:
        # One point cannot split fixed from per-row cost: assume cost proportional to size.
        return 0.0, float(times[0] / sizes[0])
    slope, intercept = np.polyfit(sizes, times, 1)
    return max(float(intercept), 0.0), max(float(slope), 1e-9)


def throughput_cap(curve: Mapping[int, float], max_batch_size: int) -> int:
    """The largest batch worth forming: `max_batch_size`, unless the measured t(b) shows a
    smaller size serving rows CAP_MARGIN times as fast as every larger measured size. Some
    models' per-row cost grows past a size (caches, padding); there, a backlog taken in max-size
    batches is served slower than smaller batches would serve it (the default model measured on
    one CPU thread, tideserve_learning/sim/profiles/default.json: 91 rows/s in batches of 24, 70
    in batches of 64).
    Triton users get this by listing preferred batch sizes; here the measurement picks it."""
    rates = {b: b / t for b, t in curve.items() if t > 0 and 0 < b <= max_batch_size}
    if not rates:
        return max_batch_size
    best = max(rates, key=rates.__getitem__)
    larger = [rate for size, rate in rates.items() if size > best]
    if not larger or rates[best] < CAP_MARGIN * max(larger):
        return max_batch_size
    return best


class MeasuredCurve:
    """The workers' measured t(b) and what batching derives from it (the affine fit, the
    throughput cap), recomputed only when the catalog hands over a new curve (a new mapping at
    each cluster snapshot, every 0.25 s): a fit costs tens of microseconds (np.polyfit), too
    much for every request's admission check and every batch decision."""

    def __init__(self, source: ServiceCurve) -> None:
        self.source = source
        self._curve: Mapping[int, float] | None = None
        self._fit: tuple[float, float] | None = None
        self._caps: dict[int, int] = {}

    def _refresh(self) -> Mapping[int, float]:
        curve = self.source()
        if curve is not self._curve:
            self._curve, self._fit, self._caps = curve, fit_affine(curve), {}
        return curve

    def fit(self) -> tuple[float, float] | None:
        self._refresh()
        return self._fit

    def cap(self, max_batch_size: int) -> int:
        curve = self._refresh()
        cap = self._caps.get(max_batch_size)
        if cap is None:
            cap = self._caps[max_batch_size] = throughput_cap(curve, max_batch_size)
        return cap


class FixedPolicy:
    name = "fixed"

    def __init__(
        self, max_batch_size: int, max_queue_delay_s: float, curve: ServiceCurve = dict
    ) -> None:
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_s
        self.curve = MeasuredCurve(curve)

    def arrived(self, rows: int, now: float) -> None:
        return None

    def batch_limit(self) -> int:
        return self.curve.cap(self.max_batch_size)

    def target(self, queued_rows: int, now: float) -> tuple[int, float]:
        return self.batch_limit(), self.max_queue_delay_s

    def observe(self, rows: int, queue_seconds: float, service_seconds: float) -> None:
        return None


class QueueLengthPolicy(FixedPolicy):
    name = "queue_length"

    def __init__(self, max_batch_size: int, curve: ServiceCurve = dict) -> None:
        super().__init__(max_batch_size, 0.0, curve)

    def target(self, queued_rows: int, now: float) -> tuple[int, float]:
        return min(max(queued_rows, 1), self.batch_limit()), 0.0


class SloPolicy:
    """Never waits for company, and sizes batches to the latency budget while that keeps up.

    With a batch in flight per model instance, the queue already grows by rate x round trip
    while the workers are busy: a batch leaving as soon as a slot frees is as large as the load
    needs, and any wait on top is pure latency. Measured on mlp at 70% of capacity, one worker:
    p99 41 ms sending at once against 72 ms for the fixed delay best at peak (8 ms) and 83 ms
    for the former rule that waited (b - 1)/r to fill a budget-sized batch (bench/suite.py).

    What the SLO decides is the batch's size: at most the largest b whose compute t(b) = a + c*b
    fits the budget, so a compute-heavy model does not make the queue's head wait for a huge
    batch, unless batches that small cannot keep up with the arrival rate r (r > b / t(b)):
    then the backlog leaves in batches as large as the model takes, or the queue would
    outgrow the workers."""

    name = "slo"

    def __init__(
        self,
        max_batch_size: int,
        slo_s: float,
        curve: ServiceCurve,
        headroom: float = DEFAULT_HEADROOM,
    ) -> None:
        if slo_s <= 0:
            raise ValueError("slo_s must be > 0")
        self.max_batch_size = max_batch_size
        self.budget_s = slo_s * headroom
        self.curve = MeasuredCurve(curve)
        self.rate = ArrivalRate()

    def arrived(self, rows: int, now: float) -> None:
        self.rate.add(rows, now)

    def target(self, queued_rows: int, now: float) -> tuple[int, float]:
        return min(max(queued_rows, 1), self.batch_limit(now)), 0.0

    def batch_limit(self, now: float) -> int:
        """The largest batch the budget affords, or the model's maximum when that is too small
        for the arrival rate (or nothing is measured yet)."""
        fit = self.curve.fit()
        if fit is None:
            return self.max_batch_size
        fixed, per_row = fit
        affordable = min(int((self.budget_s - fixed) / per_row), self.max_batch_size)
        if affordable < 1:
            return self.max_batch_size
        keeps_up = affordable / (fixed + per_row * affordable) >= self.rate.rate(now)
        return affordable if keeps_up else self.max_batch_size

    def observe(self, rows: int, queue_seconds: float, service_seconds: float) -> None:
        return None


class AimdPolicy:
    """Clipper's adaptive batching: grow the target batch by one while a batch's processing
    time fits the latency budget, cut it by 10% when one does not.

    Only the worker's compute counts, as in Clipper, which bounds the latency of processing a
    batch. Queueing and hops grow with load, not with batch size, and answering them with
    smaller batches serves fewer rows a second, which lengthens both: counting the queue
    collapsed mlp at 70% of capacity to one-row batches (16,498 of 19,800 requests shed,
    bench/suite.py's SLO experiment), counting the round trip still shed 3,654."""

    name = "aimd"

    def __init__(
        self, max_batch_size: int, slo_s: float, headroom: float = DEFAULT_HEADROOM
    ) -> None:
        if slo_s <= 0:
            raise ValueError("slo_s must be > 0")
        self.max_batch_size = max_batch_size
        self.budget_s = slo_s * headroom
        self.size = 1.0
        self.last_service_s = 0.0

    def arrived(self, rows: int, now: float) -> None:
        return None

    def target(self, queued_rows: int, now: float) -> tuple[int, float]:
        return int(self.size), max(self.budget_s - self.last_service_s, 0.0)

    def observe(self, rows: int, queue_seconds: float, service_seconds: float) -> None:
        self.last_service_s = service_seconds
        if service_seconds > self.budget_s:
            self.size = max(1.0, self.size * 0.9)
        elif rows >= int(self.size):
            self.size = min(float(self.max_batch_size), self.size + 1.0)


# Builds a model's policy from its config and the workers' measured t(b).
PolicyFactory = Callable[[ModelSpec, ServiceCurve], BatchPolicy]

POLICIES: dict[str, PolicyFactory] = {}


def register(name: str, factory: PolicyFactory) -> None:
    """Make `factory` the policy a model config selects with batching_policy `name`."""
    if name in POLICIES:
        raise ValueError(f"batching policy {name!r} is already registered")
    POLICIES[name] = factory


def policy_name(spec: ModelSpec) -> str:
    """The policy the model config asks for: parameters.batching_policy, else `slo` when it sets
    slo_ms, else `fixed`."""
    return spec.parameters.get("batching_policy") or ("slo" if spec.slo_ms else "fixed")


def create_policy(spec: ModelSpec, curve: ServiceCurve) -> BatchPolicy:
    """The policy the model config asks for; ValueError for a name no policy is registered
    under, listing those that are, or for a config the policy cannot work with."""
    name = policy_name(spec)
    factory = POLICIES.get(name)
    if factory is None:
        raise ValueError(f"unknown batching_policy {name!r}; choose one of {sorted(POLICIES)}")
    return factory(spec, curve)


def _max_batch(spec: ModelSpec) -> int:
    return max(spec.max_batch_size, 1)


def _slo_s(spec: ModelSpec) -> float:
    if not spec.slo_ms:
        raise ValueError(f"batching_policy {policy_name(spec)} needs parameters.slo_ms")
    return spec.slo_ms / 1000


register(
    FixedPolicy.name,
    lambda spec, curve: FixedPolicy(
        _max_batch(spec), spec.batching.max_queue_delay_us / 1e6, curve
    ),
)
register(QueueLengthPolicy.name, lambda spec, curve: QueueLengthPolicy(_max_batch(spec), curve))
register(SloPolicy.name, lambda spec, curve: SloPolicy(_max_batch(spec), _slo_s(spec), curve))
register(AimdPolicy.name, lambda spec, curve: AimdPolicy(_max_batch(spec), _slo_s(spec)))
