"""The trained actor's deterministic action in numpy, so the live scaler runs the learned policy
without torch or stable-baselines3.

`tideserve policy train` saves a stable-baselines3 PPO policy (<name>.zip) and exports from it
<name>.npz, the weights of the one path the scaler needs: its deterministic action. For the
policies trained here (`MlpPolicy` on a 1-D Box observation and a Discrete action) that path in
stable-baselines3 2.x is

    observation (float32; a Box observation is not otherwise preprocessed, no image scaling)
    -> FlattenExtractor (identity on a 1-D observation)
    -> mlp_extractor.policy_net: Linear, activation, ..., Linear, activation (net_arch pi)
    -> action_net: Linear to one logit per action
    -> CategoricalDistribution.mode(): argmax of softmax(logits), i.e. of the logits (the
       first on a tie, as torch.argmax).

There is no observation normalisation to carry: training wraps its environments in
VecNormalize(norm_obs=False), normalising rewards only, and the ObservationBuilder already scales
every feature. The value network is left out; it is used only in training.

The .npz records the SHA-256 of the .zip it was exported from, so a .zip retrained or replaced
after the export is noticed instead of run with the old weights. `tideserve_learning.export`
writes the file (it needs stable-baselines3); this module only reads it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT = "tideserve-actor-v1"
ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "tanh": np.tanh,
    "relu": lambda x: np.maximum(x, 0.0),
}


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class NumpyActor:
    """An MLP actor: hidden layers with one activation, then a linear layer of action logits.

    Weights have torch's Linear layout, (out features, in features). They are applied in
    float64, so the logits differ from the float32 network's by its rounding (up to 6e-6 on the
    shipped policy): an action can differ from stable-baselines3's only where its two largest
    logits are that close (tests/unit/scaler/test_numpy_policy.py compares the actions on the
    simulator's observations of every trace shape and at the bounds of the observation space)."""

    hidden: tuple[tuple[np.ndarray, np.ndarray], ...]
    activation: str
    action_weight: np.ndarray
    action_bias: np.ndarray
    source_sha256: str

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {self.activation!r}; "
                f"supported: {', '.join(sorted(ACTIVATIONS))}"
            )
        layers = [*self.hidden, (self.action_weight, self.action_bias)]
        for i, (weight, bias) in enumerate(layers):
            if weight.ndim != 2 or bias.shape != (weight.shape[0],):
                raise ValueError(
                    f"layer {i}: weight {weight.shape} and bias {bias.shape} "
                    "do not form a linear layer"
                )
            if i and weight.shape[1] != layers[i - 1][0].shape[0]:
                raise ValueError(
                    f"layer {i} takes {weight.shape[1]} inputs but layer {i - 1} "
                    f"gives {layers[i - 1][0].shape[0]}"
                )

    @property
    def observation_size(self) -> int:
        first = self.hidden[0][0] if self.hidden else self.action_weight
        return int(first.shape[1])

    @property
    def n_actions(self) -> int:
        return int(self.action_bias.shape[0])

    def logits(self, observations: np.ndarray) -> np.ndarray:
        """Action logits for one observation (shape (n,)) or a batch (shape (k, n))."""
        x = np.asarray(observations, dtype=np.float32).astype(np.float64)
        if x.shape[-1] != self.observation_size:
            raise ValueError(
                f"observation has {x.shape[-1]} features, the policy takes {self.observation_size}"
            )
        activation = ACTIVATIONS[self.activation]
        for weight, bias in self.hidden:
            x = activation(x @ weight.T + bias)
        return x @ self.action_weight.T + self.action_bias

    def act(self, observations: np.ndarray) -> np.ndarray:
        """The deterministic action(s): argmax of the logits, the first one on a tie."""
        return np.argmax(self.logits(observations), axis=-1)

    def save(self, path: Path) -> None:
        arrays: dict[str, np.ndarray] = {
            "format": np.array(FORMAT),
            "activation": np.array(self.activation),
            "source_sha256": np.array(self.source_sha256),
            "action_weight": self.action_weight,
            "action_bias": self.action_bias,
        }
        for i, (weight, bias) in enumerate(self.hidden):
            arrays[f"hidden_{i}_weight"] = weight
            arrays[f"hidden_{i}_bias"] = bias
        with path.open("wb") as file:
            np.savez(file, **arrays)

    @classmethod
    def load(cls, path: Path) -> NumpyActor:
        """Read an actor written by `save`; ValueError when the file is not one."""
        with np.load(path, allow_pickle=False) as data:
            if "format" not in data.files or str(data["format"]) != FORMAT:
                raise ValueError(f"{path} is not a {FORMAT} actor file")
            n_hidden = sum(1 for key in data.files if key.endswith("_weight")) - 1
            hidden = tuple(
                (
                    data[f"hidden_{i}_weight"].astype(np.float64),
                    data[f"hidden_{i}_bias"].astype(np.float64),
                )
                for i in range(n_hidden)
            )
            return cls(
                hidden=hidden,
                activation=str(data["activation"]),
                action_weight=data["action_weight"].astype(np.float64),
                action_bias=data["action_bias"].astype(np.float64),
                source_sha256=str(data["source_sha256"]),
            )
