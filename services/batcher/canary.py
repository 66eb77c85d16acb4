"""Splitting a model's unversioned requests between served versions by weight (a canary).

The split is smooth weighted round-robin (as nginx balances upstreams): deterministic, and over
every run of sum(weights) consecutive picks each version is picked exactly its weight times,
interleaved rather than in blocks. So a 90/10 split sends the canary one request in ten from
the first ten on, with no random drift to explain in a metrics panel."""

from __future__ import annotations

from collections.abc import Mapping


class WeightedSplit:
    """Picks among `weights` (version -> weight >= 0, some above 0); versions of weight 0 are
    never picked."""

    def __init__(self, weights: Mapping[str, int]) -> None:
        if any(w < 0 for w in weights.values()) or not any(weights.values()):
            raise ValueError(f"weights must be >= 0 with some above 0, got {dict(weights)}")
        self.weights = {version: w for version, w in sorted(weights.items()) if w > 0}
        self.total = sum(self.weights.values())
        self._current = dict.fromkeys(self.weights, 0)

    def choose(self) -> str:
        for version, weight in self.weights.items():
            self._current[version] += weight
        chosen = max(self._current, key=lambda v: self._current[v])
        self._current[chosen] -= self.total
        return chosen


def effective_weights(
    served: tuple[str, ...], configured: Mapping[str, int], override: Mapping[str, int]
) -> dict[str, int]:
    """The weights in force among the `served` versions: the operator's `override` if any,
    else the config's. Empty when neither weighs a served version above 0: then the latest
    version takes every unversioned request, as without a canary."""
    return {v: w for v, w in (override or configured).items() if v in served and w > 0}
