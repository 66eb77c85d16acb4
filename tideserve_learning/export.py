"""`tideserve policy export [POLICY.zip ...]`: write POLICY.npz, the numpy actor the live scaler
runs (`services.scaler.learning.inference`), from a stable-baselines3 policy file.

`tideserve policy train` exports every policy it saves; this command is for policy files that
predate that, or were replaced by hand. The shipped default_policy.npz is made from the shipped
default_policy.zip by `tideserve policy export` (no argument: the shipped policy).

Needs stable-baselines3 and torch: this module is offline tooling, never imported by the running
scaler except to export a policy file that has no .npz (`services.scaler.learning.policy`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.distributions import CategoricalDistribution
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import FlattenExtractor
from torch import nn

from services.scaler.learning import DEFAULT_POLICY
from services.scaler.learning.inference import NumpyActor, file_sha256
from tideserve.logs import configure_logging

logger = logging.getLogger(__name__)

# torch activation modules and the inference module's names for them.
_ACTIVATIONS = {nn.Tanh: "tanh", nn.ReLU: "relu"}


def _numpy(layer: nn.Linear) -> tuple[np.ndarray, np.ndarray]:
    return (layer.weight.detach().cpu().numpy().copy(), layer.bias.detach().cpu().numpy().copy())


def actor_from_policy(policy: ActorCriticPolicy, source_sha256: str) -> NumpyActor:
    """The deterministic action path of `policy` as a NumpyActor; ValueError for a policy whose
    path is not the one the inference module computes (see its docstring)."""
    obs_space, action_space = policy.observation_space, policy.action_space
    if not isinstance(obs_space, spaces.Box) or len(obs_space.shape) != 1:
        raise ValueError(f"need a 1-D Box observation space, got {obs_space}")
    if not isinstance(action_space, spaces.Discrete) or int(action_space.start) != 0:
        raise ValueError(f"need a Discrete action space starting at 0, got {action_space}")
    if not isinstance(policy.action_dist, CategoricalDistribution):
        raise ValueError(f"need a categorical action distribution, got {policy.action_dist}")
    if not isinstance(policy.pi_features_extractor, FlattenExtractor):
        raise ValueError(
            f"need the default FlattenExtractor, got {type(policy.pi_features_extractor).__name__}"
        )
    modules = list(policy.mlp_extractor.policy_net)
    linears, activations = modules[0::2], modules[1::2]
    if len(linears) != len(activations) or not all(isinstance(m, nn.Linear) for m in linears):
        raise ValueError(f"need alternating Linear and activation layers, got {modules}")
    names = {_ACTIVATIONS.get(type(m)) for m in activations}
    if None in names or len(names) > 1:
        raise ValueError(
            f"need one activation of {', '.join(sorted(_ACTIVATIONS.values()))}, got {activations}"
        )
    weight, bias = _numpy(policy.action_net)
    return NumpyActor(
        hidden=tuple(_numpy(m) for m in linears),
        # Without hidden layers there is no activation to apply; tanh is then a placeholder.
        activation=names.pop() if names else "tanh",
        action_weight=weight,
        action_bias=bias,
        source_sha256=source_sha256,
    )


def export(zip_path: Path) -> NumpyActor:
    """The actor of the stable-baselines3 PPO file `zip_path` (read on the CPU)."""
    model = PPO.load(zip_path, device="cpu")
    return actor_from_policy(model.policy, file_sha256(zip_path))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tideserve policy export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "policies",
        nargs="*",
        type=Path,
        default=[DEFAULT_POLICY],
        metavar="POLICY.zip",
        help="default: the shipped %(default)s",
    )
    args = parser.parse_args(argv)
    for zip_path in args.policies:
        out = zip_path.with_suffix(".npz")
        export(zip_path).save(out)
        logger.info("exported the actor of %s -> %s", zip_path, out)
    return 0


if __name__ == "__main__":
    configure_logging("policy", "INFO")
    sys.exit(main())
