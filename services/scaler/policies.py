"""Scaling policies: given what the scaler can observe, propose a replica count.

A policy only proposes; the guards (`services.scaler.guards`) decide what is applied. Every
policy implements `decide(ctx) -> int`, which depends only on `ctx` and on the policy's own
history of earlier contexts (windows, stabilisation), never on a clock it reads itself, so the
same policy runs unchanged in the live scaler and in the simulator.

  static           a fixed count (the baseline every autoscaler has to beat on cost)
  hpa              Kubernetes Horizontal Pod Autoscaler on busy fraction (utilisation)
  kpa              Knative Pod Autoscaler on concurrency, stable and panic windows
  target_tracking  Ray Serve's default policy on ongoing requests per replica
  learned          the trained policy, with the HPA rule as its fallback
                   (services.scaler.learning.fallback; its actor runs in numpy, so the scaler
                   never loads stable-baselines3 or torch)

Time base: the production defaults (HPA 300 s stabilisation, Knative 60 s stable window, Ray
Serve 30 s/600 s delays) are sized for pods that take a minute to start and traffic that moves over
hours. Our workers start in seconds and our traces are time-compressed, so each policy's windows
default to `time_scale` (0.1) times the production value; `time_scale=1.0` gives the production
windows and every window can also be set in seconds directly.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import Any

from services.scaler.context import ScalingContext, ScalingPolicy
from services.scaler.learning.fallback import LearnedWithFallback

DEFAULT_TIME_SCALE = 0.1


def _positive(name: str, value: float) -> float:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return float(value)


def _window(explicit: float | None, production_s: float, time_scale: float) -> float:
    """The window in seconds: explicit if given, else the production default scaled."""
    seconds = production_s * _positive("time_scale", time_scale) if explicit is None else explicit
    if seconds < 0:
        raise ValueError(f"windows must be >= 0 s, got {seconds}")
    return float(seconds)


class _TimedSamples:
    """(time, value) samples kept for the longest window a policy needs; means over a suffix."""

    def __init__(self, horizon_s: float) -> None:
        self._horizon = horizon_s
        self._samples: deque[tuple[float, float]] = deque()

    def add(self, now: float, value: float) -> None:
        # A NaN or infinite reading is not kept: in the window it would make every mean over the
        # next window_s NaN, and ceil() of that raises, stalling the policy for as long.
        if math.isfinite(value):
            self._samples.append((now, value))
        while self._samples and self._samples[0][0] < now - self._horizon:
            self._samples.popleft()

    def mean(self, now: float, window_s: float) -> float:
        values = [v for t, v in self._samples if t >= now - window_s]
        return sum(values) / len(values) if values else 0.0

    def maximum(self, now: float, window_s: float) -> float:
        return max(v for t, v in self._samples if t >= now - window_s)


class StaticPolicy:
    """A fixed replica count: what a hand-provisioned deployment does."""

    name = "static"

    def __init__(self, replicas: float = 1) -> None:
        if replicas < 0 or replicas != int(replicas):
            raise ValueError(f"replicas must be a whole number >= 0, got {replicas}")
        self.replicas = int(replicas)

    def decide(self, ctx: ScalingContext) -> int:
        return self.replicas


class HpaPolicy:
    """Kubernetes HPA (autoscaling/v2 with the default behaviour), on utilisation.

    desired = ceil(current * metric / target), skipped while |metric/target - 1| <= tolerance.
    As in the HPA's replica calculator, the metric is the mean over ready replicas, and on a scale
    up the replicas that are still starting count as 0% busy (so a scale-up already under way is
    not repeated). Scale-down stabilisation: the recommendation applied is the maximum of the
    recommendations made within the window (300 s in Kubernetes, 30 s here by default); scale-up
    is not stabilised. Rate limits (100%/4 pods per 15 s) belong to the guards' max step.
    """

    name = "hpa"

    def __init__(
        self, target: float = 0.6, tolerance: float = 0.1,
        stabilisation_s: float | None = None, time_scale: float = DEFAULT_TIME_SCALE,
    ) -> None:
        self.target = _positive("target", target)
        if tolerance < 0:
            raise ValueError(f"tolerance must be >= 0, got {tolerance}")
        self.tolerance = float(tolerance)
        self.stabilisation_s = _window(stabilisation_s, 300.0, time_scale)
        self._recommendations = _TimedSamples(self.stabilisation_s)

    def _recommend(self, ctx: ScalingContext) -> int:
        current, ready = ctx.current_replicas, ctx.ready_replicas
        if ready == 0:
            return max(current, 1)
        if not math.isfinite(ctx.utilisation):
            # As the HPA skips a metric it cannot compute: a NaN or infinite reading is no reason
            # to move (and ceil() of it would raise, stalling every decision after it).
            return current
        ratio = ctx.utilisation / self.target
        if abs(ratio - 1.0) <= self.tolerance:
            return current
        if ratio > 1.0 and current > ready:
            ratio = ctx.utilisation * ready / (current * self.target)
            if ratio <= 1.0 + self.tolerance:
                return current
            return math.ceil(current * ratio)
        return math.ceil(ready * ratio)

    def decide(self, ctx: ScalingContext) -> int:
        recommendation = self._recommend(ctx)
        self._recommendations.add(ctx.now, recommendation)
        if recommendation >= ctx.current_replicas:
            return recommendation
        return int(self._recommendations.maximum(ctx.now, self.stabilisation_s))


class KpaPolicy:
    """Knative Pod Autoscaler (KPA), on concurrency (ongoing requests).

    Averages the observed cluster concurrency over a stable window (60 s in Knative, 6 s here by
    default) and a panic window (panic_fraction of it: 10%). desired = ceil(avg / target) per
    window. Panic starts when the panic window asks for >= panic_threshold (2.0) times the ready
    replicas and lasts until a full stable window has passed without that; in panic the count
    never goes down. Outside panic a single decision removes at most ready / max_scale_down_rate
    (2.0) replicas. `target` is the concurrency per replica Knative derives as
    container-concurrency x target-utilisation (100 x 0.7).
    """

    name = "kpa"

    def __init__(
        self, target: float = 70.0, stable_window_s: float | None = None,
        panic_fraction: float = 0.1, panic_threshold: float = 2.0,
        max_scale_down_rate: float = 2.0, time_scale: float = DEFAULT_TIME_SCALE,
    ) -> None:
        self.target = _positive("target", target)
        self.stable_window_s = _window(stable_window_s, 60.0, time_scale)
        self.panic_window_s = self.stable_window_s * _positive("panic_fraction", panic_fraction)
        self.panic_threshold = _positive("panic_threshold", panic_threshold)
        self.max_scale_down_rate = _positive("max_scale_down_rate", max_scale_down_rate)
        self._concurrency = _TimedSamples(self.stable_window_s)
        self._panic_since: float | None = None
        self._panic_desired = 0

    @property
    def in_panic(self) -> bool:
        return self._panic_since is not None

    def decide(self, ctx: ScalingContext) -> int:
        self._concurrency.add(ctx.now, ctx.ongoing_requests)
        stable = self._concurrency.mean(ctx.now, self.stable_window_s) / self.target
        panic = self._concurrency.mean(ctx.now, self.panic_window_s) / self.target
        ready = max(ctx.ready_replicas, 1)
        if panic / ready >= self.panic_threshold:
            if self._panic_since is None:
                self._panic_desired = ctx.current_replicas
            self._panic_since = ctx.now
        elif self._panic_since is not None and ctx.now - self._panic_since >= self.stable_window_s:
            self._panic_since = None
        if self._panic_since is not None:
            self._panic_desired = max(self._panic_desired, math.ceil(panic))
            return self._panic_desired
        floor = math.floor(ctx.ready_replicas / self.max_scale_down_rate)
        return max(math.ceil(stable), floor)


class TargetTrackingPolicy:
    """Ray Serve's default autoscaling policy: ongoing requests per replica against a target.

    desired = ceil(mean total ongoing requests over look_back / target), acted on only after the
    proposal has pointed the same way (up or down) for upscale_delay (30 s in Ray Serve, 3 s here)
    or downscale_delay (600 s, 60 s here). A proposal equal to the current count resets both.
    `target` defaults to Ray Serve's target_ongoing_requests of 2.
    """

    name = "target_tracking"

    def __init__(
        self, target: float = 2.0, upscale_delay_s: float | None = None,
        downscale_delay_s: float | None = None, look_back_s: float | None = None,
        time_scale: float = DEFAULT_TIME_SCALE,
    ) -> None:
        self.target = _positive("target", target)
        self.upscale_delay_s = _window(upscale_delay_s, 30.0, time_scale)
        self.downscale_delay_s = _window(downscale_delay_s, 600.0, time_scale)
        self.look_back_s = _window(look_back_s, 30.0, time_scale)
        self._ongoing = _TimedSamples(self.look_back_s)
        self._direction = 0
        self._since = 0.0

    def decide(self, ctx: ScalingContext) -> int:
        self._ongoing.add(ctx.now, ctx.ongoing_requests)
        desired = math.ceil(self._ongoing.mean(ctx.now, self.look_back_s) / self.target)
        if ctx.current_replicas == 0 and ctx.ongoing_requests > 0:
            desired = max(desired, 1)
        direction = (desired > ctx.current_replicas) - (desired < ctx.current_replicas)
        if direction != self._direction:
            self._direction, self._since = direction, ctx.now
        delay = self.upscale_delay_s if direction > 0 else self.downscale_delay_s
        if direction == 0 or ctx.now - self._since < delay:
            return ctx.current_replicas
        # Acting restarts the delay, so a second step in the same direction waits a full delay.
        self._since = ctx.now
        return desired


def _learned(policy_file: str = "", **hpa_parameters: float) -> ScalingPolicy:
    """The trained policy with the HPA rule (built from the other parameters) as its fallback."""
    return LearnedWithFallback(HpaPolicy(**hpa_parameters), policy_file)


POLICIES: dict[str, Callable[..., ScalingPolicy]] = {
    cls.name: cls for cls in (StaticPolicy, HpaPolicy, KpaPolicy, TargetTrackingPolicy)
}
POLICIES["learned"] = _learned


def create_policy(name: str, **params: Any) -> ScalingPolicy:
    """Build a registered policy by name; `params` are its constructor's keyword arguments
    (numbers; the learned policy also takes `policy_file`)."""
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(
            f"unknown scaling policy {name!r}; choose one of {', '.join(sorted(POLICIES))}"
        ) from None
    try:
        policy: ScalingPolicy = cls(**params)
    except TypeError as exc:
        raise ValueError(f"bad parameters for scaling policy {name!r}: {exc}") from None
    return policy
