"""The learned scaling policy, as the live scaler runs it.

`LearnedPolicy` loads a policy file written by `tideserve policy train` (the .zip and the .json
beside it), turns each ScalingContext into the observation the policy was trained on (the same
ObservationBuilder the simulator uses) and proposes what its action means in the simulator (hold,
or a count sized for the demand at a target load: `services.scaler.sim.actions`). When a feature
lies outside the range seen in training it raises ObservationOutOfRange instead of guessing: the
scaler then falls back to the HPA rule for that decision and says so
(`services.scaler.learning.fallback`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from stable_baselines3 import PPO

from services.scaler.policies import ScalingContext
from services.scaler.sim import actions, observation

DEFAULT_POLICY = Path(__file__).parent / "default_policy.zip"
# Slack around the trained range, in units of each feature's observation-space span: noise at
# the edges of the training distribution is not a reason to abandon the policy.
RANGE_SLACK = 0.05


class ObservationOutOfRange(ValueError):
    """The live observation is outside what the policy was trained on; use a fallback policy."""

    def __init__(self, feature: str, value: float, low: float, high: float) -> None:
        super().__init__(
            f"observation {feature}={value:.3f} outside the trained range [{low:.3f}, {high:.3f}]"
        )
        self.feature = feature
        self.value = value


class LearnedPolicy:
    """A trained PPO policy behind the ScalingPolicy interface. Decides deterministically."""

    name = "learned"

    def __init__(self, path: str | Path = DEFAULT_POLICY) -> None:
        path = Path(path)
        metadata_path = path.with_suffix(".json")
        if not path.exists() or not metadata_path.exists():
            raise FileNotFoundError(f"policy file {path} or its {metadata_path.name} is missing")
        self.path = path
        self.metadata = json.loads(metadata_path.read_text())
        if self.metadata["features"] != list(observation.FEATURES):
            raise ValueError(f"{path} was trained on other features: {self.metadata['features']}")
        if self.metadata.get("action") != actions.ACTION_SCHEME:
            raise ValueError(f"{path} was trained with another action: "
                             f"{self.metadata.get('action', 'down/hold/up')}")
        span = observation.HIGH - observation.LOW
        self._low = np.asarray(self.metadata["feature_low"]) - RANGE_SLACK * span
        self._high = np.asarray(self.metadata["feature_high"]) + RANGE_SLACK * span
        self._observer = observation.ObservationBuilder(int(self.metadata["max_replicas"]))
        self._model = PPO.load(path, device="cpu")
        self.last_out_of_range: ObservationOutOfRange | None = None

    def decide(self, ctx: ScalingContext) -> int:
        """Propose a count for `ctx`; raises ObservationOutOfRange (and records it in
        `last_out_of_range`) when the policy has not seen inputs like these."""
        features = self._observer.update(ctx)
        outside = np.flatnonzero((features < self._low) | (features > self._high))
        if outside.size:
            i = int(outside[0])
            self.last_out_of_range = ObservationOutOfRange(
                observation.FEATURES[i], float(features[i]), float(self._low[i]),
                float(self._high[i]),
            )
            raise self.last_out_of_range
        self.last_out_of_range = None
        action, _ = self._model.predict(observation.clip(features), deterministic=True)
        return actions.replicas_for(int(action), ctx)
