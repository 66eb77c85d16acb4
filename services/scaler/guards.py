"""Guards between a policy's proposal and what the scaler applies.

The policy proposes; these deterministic rules decide, whatever the policy (rule-based or learned)
asked for: bounds (min/max replicas), a scale-down stabilisation window, cooldowns and a maximum
step per decision. Keeping them outside the policies means an operator's limits hold even for a
misbehaving learned policy, and the same guards wrap every policy in the simulator and in the live
scaler. An operator's pin or new bounds pass through the same window, cooldowns and steps, so no
single request, however large, starts or stops many workers at once. Time is injected.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class GuardConfig:
    """Operator limits.

    up_cooldown_s: time after a scale-up before the next scale-up, so new replicas can become
    ready and show up in the metrics before more are added.
    down_cooldown_s: time after any change before a scale-down, so the count does not flap
    straight back after a scale-up.
    down_stabilisation_s: a scale-down goes only as low as the highest proposal made within
    this window (Kubernetes' scale-down stabilisation window, for every policy). A proposal that
    dips for a second and comes back, as a policy reacting to noisy rates does, then changes
    nothing, where a cooldown alone lets the dip through once it has passed and the next second's
    proposal starts a worker again: each such pair pays a cold start for no capacity served.
    max_step_up / max_step_down: most replicas added / removed by one decision (None: no limit).
    """

    min_replicas: int = 1
    max_replicas: int = 8
    up_cooldown_s: float = 0.0
    down_cooldown_s: float = 0.0
    down_stabilisation_s: float = 0.0
    max_step_up: int | None = None
    max_step_down: int | None = None

    def __post_init__(self) -> None:
        if self.min_replicas < 0:
            raise ValueError(f"min_replicas must be >= 0, got {self.min_replicas}")
        if self.max_replicas < max(self.min_replicas, 1):
            raise ValueError(
                f"max_replicas must be >= max(min_replicas, 1), got {self.max_replicas}"
            )
        if self.up_cooldown_s < 0 or self.down_cooldown_s < 0:
            raise ValueError("cooldowns must be >= 0 s")
        if self.down_stabilisation_s < 0:
            raise ValueError(
                f"down_stabilisation_s must be >= 0 s, got {self.down_stabilisation_s}"
            )
        for step in (self.max_step_up, self.max_step_down):
            if step is not None and step < 1:
                raise ValueError(f"max steps must be >= 1 or None, got {step}")


class Guards:
    """Applies a GuardConfig to proposals. Remembers when it last scaled up and down, and the
    proposals made within the stabilisation window."""

    def __init__(self, config: GuardConfig) -> None:
        self.config = config
        self._last_up = -math.inf
        self._last_change = -math.inf
        self._proposals: deque[tuple[float, int]] = deque()

    def bounded(self, proposed: int) -> int:
        """The proposal clamped to the bounds: the count the guards steer towards."""
        return min(max(proposed, self.config.min_replicas), self.config.max_replicas)

    def apply(self, current: int, proposed: int, now: float) -> tuple[int, str]:
        """Return (replicas to run, why): one step from `current` towards the proposal clamped
        to the bounds. A count outside new bounds is brought back the same way, through the
        cooldowns and at most one step per decision, rather than all at once."""
        cfg = self.config
        bounded = self.bounded(proposed)
        clamped = " (clamped to bounds)" if bounded != proposed else ""
        # The raw proposals are kept and bounded when used, so new bounds apply to the window
        # at once (a lowered maximum is not held up by proposals made under the old one). The
        # window is [now - down_stabilisation_s, now]; 0 keeps only this proposal, even where
        # earlier ones were made at the same instant.
        if not cfg.down_stabilisation_s:
            self._proposals.clear()
        self._proposals.append((now, proposed))
        while self._proposals[0][0] < now - cfg.down_stabilisation_s:
            self._proposals.popleft()
        if bounded == current:
            return current, "hold" + clamped
        if bounded < current:
            stable = self.bounded(max(p for _, p in self._proposals))
            if stable >= current:
                return current, (
                    f"down stabilisation: {stable} proposed within {cfg.down_stabilisation_s:g} s"
                )
            bounded = stable
        if bounded > current:
            if now - self._last_up < cfg.up_cooldown_s:
                return current, f"up cooldown until t={self._last_up + cfg.up_cooldown_s:.1f}"
            step = bounded - current
            if cfg.max_step_up is not None and step > cfg.max_step_up:
                return self._record(current, current + cfg.max_step_up, now), (
                    f"up by max step {cfg.max_step_up} of {step}"
                )
            return self._record(current, bounded, now), f"up by {step}" + clamped
        if now - self._last_change < cfg.down_cooldown_s:
            return current, f"down cooldown until t={self._last_change + cfg.down_cooldown_s:.1f}"
        step = current - bounded
        if cfg.max_step_down is not None and step > cfg.max_step_down:
            return self._record(current, current - cfg.max_step_down, now), (
                f"down by max step {cfg.max_step_down} of {step}"
            )
        return self._record(current, bounded, now), f"down by {step}" + clamped

    def _record(self, current: int, applied: int, now: float) -> int:
        if applied > current:
            self._last_up = now
        if applied != current:
            self._last_change = now
        return applied
