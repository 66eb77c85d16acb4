"""The learned policy as the live scaler runs it: with a rule policy behind it (the registry's
`learned` policy puts the HPA rule there: `services.scaler.policies`).

The trained policy is only trusted where it was trained. `LearnedWithFallback` lets the rule
decide instead, and says why in `fallback_reason`, when
  * the policy file is missing or unusable (wrong features or action, its actor not exported and
    stable-baselines3 absent): for as long as this policy object lives, and
  * one observation is not a finite number (a NaN or infinite input), or outside the range the
    policy saw in training, or the cluster has no traffic at all (no training trace goes quiet):
    for that decision only.
The rule sees every context even while the learned policy decides, so its windows are warm at the
moment it has to take over.

The rule is passed in rather than built here, so this module does not import the policy registry
that builds it; nothing here imports stable-baselines3 or torch.
"""

from __future__ import annotations

import logging
from pathlib import Path

from services.scaler.context import ScalingContext, ScalingPolicy
from services.scaler.learning import DEFAULT_POLICY
from services.scaler.learning.policy import (
    LearnedPolicy,
    NonFiniteObservation,
    ObservationOutOfRange,
)

logger = logging.getLogger(__name__)


class LearnedWithFallback:
    """A LearnedPolicy (read from `policy_file`, "" = the shipped one) guarded by `fallback`."""

    name = "learned"

    def __init__(self, fallback: ScalingPolicy, policy_file: str | Path = "") -> None:
        self.fallback = fallback
        self.policy_file = Path(policy_file or DEFAULT_POLICY)
        self.fallback_reason = ""
        try:
            self.learned: LearnedPolicy | None = LearnedPolicy(self.policy_file)
        except (FileNotFoundError, ValueError, KeyError, ImportError) as error:
            self.learned = None
            self.fallback_reason = f"policy file unusable, running {fallback.name}: {error}"
            logger.warning("learned policy unavailable; falling back",
                           extra={"policy_file": str(self.policy_file), "error": str(error),
                                  "fallback": fallback.name})

    def decide(self, ctx: ScalingContext) -> int:
        rule = self.fallback.decide(ctx)
        if self.learned is None:
            return rule
        if ctx.arrival_rate <= 0.0 and ctx.queued_requests == 0:
            # No traffic at all: the training traces never go quiet, and the policy holds any
            # count there (measured: 3 replicas kept for minutes at zero load). The rule scales
            # an idle cluster down once its stabilisation window has passed.
            self.fallback_reason = (
                f"no arrivals, which the policy was never trained on: {self.fallback.name} decided"
            )
            return rule
        try:
            proposed = self.learned.decide(ctx)
        except NonFiniteObservation as error:
            self.fallback_reason = f"{error}, {self.fallback.name} decided"
            return rule
        except ObservationOutOfRange as error:
            self.fallback_reason = (
                f"observation outside the trained range, {self.fallback.name} decided: {error}"
            )
            return rule
        self.fallback_reason = ""
        return proposed
