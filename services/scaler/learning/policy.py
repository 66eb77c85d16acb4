"""The learned scaling policy, as the live scaler runs it.

`LearnedPolicy` loads a policy written by `tideserve policy train`: the actor (<name>.npz, run in
numpy by `services.scaler.learning.inference`) and the record beside it (<name>.json: features,
action scheme, the range of every feature seen in training). It turns each ScalingContext into the
observation the policy was trained on (the ObservationBuilder the simulator uses) and proposes what
its action means in the simulator (hold, or a count sized for the demand at a target load:
`services.scaler.learning.actions`).

The stable-baselines3 file (<name>.zip) is never read here: exporting it needs torch and
stable-baselines3, which the scaler does not carry (they belong to the offline tideserve_learning
package). A policy whose .npz is missing or was exported from another .zip is refused with the
command that fixes it, `tideserve policy export`.

It decides only on observations like those it was trained on. A feature that is not a finite
number raises NonFiniteObservation; one outside the range seen in training raises
ObservationOutOfRange (both are UntrustedObservation). The scaler then falls back to a rule policy
for that decision and says so (`services.scaler.learning.fallback`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from services.scaler.context import ScalingContext
from services.scaler.learning import DEFAULT_POLICY, actions, observation
from services.scaler.learning.inference import NumpyActor, file_sha256

# Slack around the trained range, in units of each feature's observation-space span: noise at
# the edges of the training distribution is not a reason to abandon the policy.
RANGE_SLACK = 0.05


class PolicyFileError(ValueError):
    """The policy file cannot be run here (stale or missing actor, other features or action)."""


class UntrustedObservation(ValueError):
    """The live observation is unlike what the policy was trained on; use a fallback policy."""

    def __init__(self, message: str, feature: str, value: float) -> None:
        super().__init__(message)
        self.feature = feature
        self.value = value


class ObservationOutOfRange(UntrustedObservation):
    """A feature is outside the range seen in training."""

    def __init__(self, feature: str, value: float, low: float, high: float) -> None:
        super().__init__(
            f"observation {feature}={value:.3f} outside the trained range [{low:.3f}, {high:.3f}]",
            feature, value,
        )


class NonFiniteObservation(UntrustedObservation):
    """An input or feature is NaN or infinite (a range check cannot catch NaN: every comparison
    with it is false)."""

    def __init__(self, feature: str, value: float) -> None:
        super().__init__(f"observation {feature}={value} is not a finite number", feature, value)


def load_actor(path: Path) -> NumpyActor:
    """The actor of the policy file `path` (.zip, .npz or the name without suffix): its .npz,
    refused when it is missing or was exported from another .zip."""
    npz, zip_file = path.with_suffix(".npz"), path.with_suffix(".zip")
    if npz.exists():
        actor = NumpyActor.load(npz)
        if not zip_file.exists() or actor.source_sha256 == file_sha256(zip_file):
            return actor
        why = f"{npz.name} was exported from another {zip_file.name}"
    elif zip_file.exists():
        why = f"{npz.name} is missing"
    else:
        raise FileNotFoundError(f"policy file {npz} (or {zip_file.name} to export it from) "
                                "is missing")
    raise PolicyFileError(
        f"{why}: run `tideserve policy export {zip_file}` where the learning extra "
        "(tideserve[learning]) is installed"
    )


class LearnedPolicy:
    """A trained policy behind the ScalingPolicy interface. Decides deterministically."""

    name = "learned"

    def __init__(self, path: str | Path = DEFAULT_POLICY) -> None:
        path = Path(path)
        metadata_path = path.with_suffix(".json")
        if not metadata_path.exists():
            raise FileNotFoundError(f"policy record {metadata_path} is missing")
        self.path = path
        self.metadata = json.loads(metadata_path.read_text())
        if self.metadata["features"] != list(observation.FEATURES):
            raise PolicyFileError(
                f"{path} was trained on other features: {self.metadata['features']}")
        if self.metadata.get("action") != actions.ACTION_SCHEME:
            raise PolicyFileError(f"{path} was trained with another action: "
                                  f"{self.metadata.get('action', 'down/hold/up')}")
        span = observation.HIGH - observation.LOW
        self._low = np.asarray(self.metadata["feature_low"]) - RANGE_SLACK * span
        self._high = np.asarray(self.metadata["feature_high"]) + RANGE_SLACK * span
        self._observer = observation.ObservationBuilder(int(self.metadata["max_replicas"]))
        self.actor = load_actor(path)
        if (self.actor.observation_size, self.actor.n_actions) != (
            len(observation.FEATURES), actions.N_ACTIONS
        ):
            raise PolicyFileError(
                f"{path}'s actor maps {self.actor.observation_size} features to "
                f"{self.actor.n_actions} actions, not {len(observation.FEATURES)} to "
                f"{actions.N_ACTIONS}")
        self.last_untrusted: UntrustedObservation | None = None

    def decide(self, ctx: ScalingContext) -> int:
        """Propose a count for `ctx`; raises UntrustedObservation (and records it in
        `last_untrusted`) when the policy has not seen inputs like these."""
        features = self._observer.update(ctx)
        self.last_untrusted = self._untrusted(ctx, features)
        if self.last_untrusted is not None:
            raise self.last_untrusted
        action = self.actor.act(observation.clip(features))
        return actions.replicas_for(int(action), ctx)

    def _untrusted(
        self, ctx: ScalingContext, features: np.ndarray
    ) -> UntrustedObservation | None:
        # An infinite input can still give finite features (a rate over an infinite service
        # rate is 0), so the inputs are checked as well as the features.
        for name, value in vars(ctx).items():
            if not math.isfinite(value):
                return NonFiniteObservation(name, value)
        non_finite = np.flatnonzero(~np.isfinite(features))
        if non_finite.size:
            i = int(non_finite[0])
            return NonFiniteObservation(observation.FEATURES[i], float(features[i]))
        outside = np.flatnonzero((features < self._low) | (features > self._high))
        if outside.size:
            i = int(outside[0])
            return ObservationOutOfRange(observation.FEATURES[i], float(features[i]),
                                         float(self._low[i]), float(self._high[i]))
        return None
