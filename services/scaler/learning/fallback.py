"""The learned policy as the live scaler runs it: with the HPA rule behind it.

The trained policy is only trusted where it was trained. `LearnedWithFallback` decides with the HPA
rule instead, and says why in `fallback_reason`, when
  * the policy file is missing or unusable (wrong features or action, stable-baselines3 absent):
    for as long as this policy object lives, and
  * one observation is outside the range the policy saw in training, or the cluster has no
    traffic at all (no training trace goes quiet): for that decision only.
The HPA rule sees every context even while the learned policy decides, so its stabilisation window
is warm at the moment it has to take over.

This module imports no stable-baselines3 or torch: `LearnedPolicy` is imported when the first
object is built, so a scaler that never runs the learned policy never loads them.
"""

from __future__ import annotations

import logging
from pathlib import Path

from services.scaler.policies import HpaPolicy, ScalingContext

logger = logging.getLogger(__name__)

DEFAULT_POLICY_FILE = Path(__file__).parent / "default_policy.zip"


class LearnedWithFallback:
    """A LearnedPolicy guarded by an HpaPolicy (built from `hpa_parameters`)."""

    name = "learned"

    def __init__(self, policy_file: str | Path = "", **hpa_parameters: float) -> None:
        self.fallback = HpaPolicy(**hpa_parameters)
        self.policy_file = Path(policy_file or DEFAULT_POLICY_FILE)
        self.fallback_reason = ""
        try:
            from services.scaler.learning.policy import LearnedPolicy

            self.learned: LearnedPolicy | None = LearnedPolicy(self.policy_file)
        except (FileNotFoundError, ValueError, KeyError, ImportError) as error:
            self.learned = None
            self._unusable = f"policy file unusable, running hpa: {error}"
            self.fallback_reason = self._unusable
            logger.warning("learned policy unavailable; falling back to hpa",
                           extra={"policy_file": str(self.policy_file), "error": str(error)})

    def decide(self, ctx: ScalingContext) -> int:
        rule = self.fallback.decide(ctx)
        if self.learned is None:
            return rule
        from services.scaler.learning.policy import ObservationOutOfRange

        if ctx.arrival_rate <= 0.0 and ctx.queued_requests == 0:
            # No traffic at all: the training traces never go quiet, and the policy holds any
            # count there (measured: 3 replicas kept for minutes at zero load). The rule scales
            # an idle cluster down once its stabilisation window has passed.
            self.fallback_reason = "no arrivals, which the policy was never trained on: hpa decided"
            return rule
        try:
            proposed = self.learned.decide(ctx)
        except ObservationOutOfRange as error:
            self.fallback_reason = f"observation outside the trained range, hpa decided: {error}"
            return rule
        self.fallback_reason = ""
        return proposed
