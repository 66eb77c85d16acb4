"""`tideserve policy train`: PPO on the serving-cluster simulator over the training traces.

Writes <out>/<name>.zip (the stable-baselines3 policy), <out>/<name>.npz (its actor for the live
scaler, as `tideserve policy export` writes it), <out>/<name>.json (how it was trained: the
command, simulator settings, hyperparameters, trace split, versions, wall time, and the range of
every observation feature seen in training, which the live scaler uses to detect inputs the policy
was never trained on) and <log-dir>/progress.csv (SB3's training log; no TensorBoard). With
--checkpoint-every, also the model every so many steps, to score prefixes of one run on validation.

With `--traces DIR` it fine-tunes a trained policy (`--init`, the shipped one by default) on an
operator's own traffic instead: every .csv (`second,rate`) and RUN.json in DIR
(`tideserve_learning.sim.trace_files`), replayed at its own requests/s against the simulated
cluster of `--profile`. `--init` alone fine-tunes on the generated traces (e.g. at other reward
weights). A fine-tuned policy's trusted range is the union of what it saw here and what `--init`
was trained on, since it keeps what it learned there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import gymnasium
import numpy as np
import stable_baselines3
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, CheckpointCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import VecNormalize

from services.scaler.learning import DEFAULT_POLICY, actions, observation
from services.scaler.learning.inference import file_sha256
from tideserve.logs import configure_logging
from tideserve_learning.export import actor_from_policy
from tideserve_learning.sim import trace_files, traces
from tideserve_learning.sim.env import DEFAULT_PROFILE, EnvConfig, ServingClusterEnv

logger = logging.getLogger(__name__)

GAMMA = 0.98
PPO_PARAMS = {
    "n_steps": 256,
    "batch_size": 256,
    "n_epochs": 10,
    "learning_rate": 3e-4,
    "gamma": GAMMA,
    "gae_lambda": 0.95,
    "ent_coef": 0.01,
    "policy_kwargs": {"net_arch": [64, 64]},
}


class FeatureRange(BaseCallback):
    """Records the min and max of each unclipped observation feature the policy trained on."""

    def __init__(self) -> None:
        super().__init__()
        self.low = np.full(len(observation.FEATURES), np.inf)
        self.high = np.full(len(observation.FEATURES), -np.inf)

    def _on_step(self) -> bool:
        features = np.asarray(self.training_env.get_attr("last_features"))
        self.low = np.minimum(self.low, features.min(axis=0))
        self.high = np.maximum(self.high, features.max(axis=0))
        return True


class ShapeWeightedReward(gymnasium.RewardWrapper):
    """Scales each episode's rewards by its trace shape's weight. With weights of (uniform share)
    / (share in training) a mix that oversamples one shape keeps the uniform mix's objective: more
    episodes of it to learn from, without pricing its misses higher than evaluation does."""

    def __init__(self, env: gymnasium.Env, weights: dict[str, float]) -> None:
        super().__init__(env)
        self.weights = weights

    def reward(self, reward: float) -> float:
        return reward * self.weights[self.env.unwrapped.trace.shape]


def shape_weights(mmpp_repeat: int) -> dict[str, float]:
    """Importance weights that undo `traces.train_set(mmpp_repeat)`'s oversampling of MMPP."""
    n = len(traces.TRAIN_SHAPES)
    listed = {s: mmpp_repeat if s == "mmpp" else 1 for s in traces.TRAIN_SHAPES}
    total = sum(listed.values())
    return {s: (1 / n) / (k / total) for s, k in listed.items()}


def _jsonable(config: EnvConfig) -> dict[str, object]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(config).items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tideserve policy train", description=__doc__)
    # The shipped policy's length: ~10 min under `nice` on a shared 2-core machine.
    parser.add_argument("--timesteps", type=int, default=1_200_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-envs", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("build/policy"))
    parser.add_argument("--name", default="policy")
    parser.add_argument("--log-dir", type=Path, default=Path("build/policy-train"))
    parser.add_argument("--slo-weight", type=float, default=EnvConfig.slo_weight)
    parser.add_argument("--cost-weight", type=float, default=EnvConfig.cost_weight)
    parser.add_argument("--churn-weight", type=float, default=EnvConfig.churn_weight)
    parser.add_argument("--mmpp-repeat", type=int, default=1,
                        help="list each MMPP training trace this many times (k: MMPP in "
                             "k / (k + 2) of the episodes)")
    parser.add_argument("--reweight-shapes", action="store_true",
                        help="with --mmpp-repeat, scale each episode's rewards so the objective "
                             "stays that of the uniform mix of shapes")
    parser.add_argument("--checkpoint-every", type=int, default=0, metavar="STEPS",
                        help="also save the model every STEPS steps (a multiple of n_steps x "
                             "n_envs, 2048 by default) as <out>/checkpoints/<name>_<n>_steps.zip, "
                             "to score prefixes of one run; each is the model --timesteps n gives")
    parser.add_argument("--traces", type=Path, metavar="DIR",
                        help="fine-tune --init on the traces in DIR (*.csv of second,rate, or "
                             "RUN.json) instead of training from scratch on the generated ones")
    parser.add_argument("--cv", type=float, default=1.0,
                        help="--traces: coefficient of variation of the arrivals within a second "
                             "(1: Poisson)")
    parser.add_argument("--init", type=Path,
                        help="fine-tune this policy instead of starting afresh (with --traces "
                             "the shipped one by default)")
    parser.add_argument("--profile", type=Path, default=DEFAULT_PROFILE,
                        help="the served model's profile (`tideserve profile`)")
    parser.add_argument("--live-guards", action="store_true",
                        help="pass each action through the live scaler's default guards "
                             "(cooldowns, steps), as it will run")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    # A 64x64 MLP gains nothing from intra-op threads; one thread avoids oversubscription.
    torch.set_num_threads(1)
    config = EnvConfig(profile_path=args.profile, slo_weight=args.slo_weight,
                       cost_weight=args.cost_weight, churn_weight=args.churn_weight,
                       live_guards=args.live_guards)
    own: list[traces.Trace] = []
    if args.traces is not None:
        try:
            own = trace_files.load_dir(args.traces, args.cv)
        except trace_files.TraceFileError as error:
            parser.error(str(error))
        config = dataclasses.replace(config, duration_s=max(len(t.rates) for t in own))
        train_keys = [(t.shape, t.seed) for t in own]
    else:
        train_keys = traces.train_set(args.mmpp_repeat)
    weights = shape_weights(args.mmpp_repeat) if args.reweight_shapes and not own else None
    venv = make_vec_env(
        ServingClusterEnv, n_envs=args.n_envs, seed=args.seed,
        env_kwargs={"config": config, "trace_keys": train_keys, "preloaded": own},
        wrapper_class=ShapeWeightedReward if weights else None,
        wrapper_kwargs={"weights": weights} if weights else None,
    )
    # Returns run to thousands per episode; normalising rewards (training only: observations are
    # already scaled, so the saved policy needs no statistics) keeps the value loss in range.
    venv = VecNormalize(venv, norm_obs=False, norm_reward=True, gamma=GAMMA)
    init = args.init or (DEFAULT_POLICY if own else None)
    if init is not None:
        model = PPO.load(init.with_suffix(".zip"), env=venv, device="cpu", seed=args.seed)
    else:
        model = PPO("MlpPolicy", venv, seed=args.seed, device="cpu", verbose=0, **PPO_PARAMS)
    model.set_logger(configure(str(args.log_dir), ["csv"]))
    logger.info("training PPO for %d steps on %d traces with %d environments -> %s",
                args.timesteps, len(train_keys), args.n_envs, args.out / f"{args.name}.zip")
    ranges = FeatureRange()
    if init is not None:
        trained = json.loads(init.with_suffix(".json").read_text())
        ranges.low = np.minimum(ranges.low, trained["feature_low"])
        ranges.high = np.maximum(ranges.high, trained["feature_high"])
    started = time.monotonic()
    callbacks: list[BaseCallback] = [ranges]
    if args.checkpoint_every > 0:
        callbacks.append(CheckpointCallback(max(args.checkpoint_every // args.n_envs, 1),
                                            str(args.out / "checkpoints"), args.name))
    model.learn(args.timesteps, callback=CallbackList(callbacks),
                progress_bar=not args.no_progress)
    elapsed = time.monotonic() - started
    args.out.mkdir(parents=True, exist_ok=True)
    policy_path = args.out / f"{args.name}.zip"
    model.save(policy_path)
    actor_from_policy(model.policy, file_sha256(policy_path)).save(policy_path.with_suffix(".npz"))
    record = {
        "command": "tideserve policy train " + shlex.join(sys.argv[1:] if argv is None else argv),
        "algorithm": "PPO",
        "timesteps": args.timesteps,
        "seed": args.seed,
        "n_envs": args.n_envs,
        "hyperparameters": PPO_PARAMS,
        "env": _jsonable(config),
        "fine_tuned_from": None if init is None else str(init),
        "train_traces": ({"files": str(args.traces), "traces": [t.shape for t in own],
                          "cv": args.cv} if own else
                         {"shapes": list(traces.TRAIN_SHAPES),
                          "seeds": [min(traces.TRAIN_SEEDS), max(traces.TRAIN_SEEDS)],
                          "validation_seeds": [min(traces.VALIDATION_SEEDS),
                                               max(traces.VALIDATION_SEEDS)],
                          "mmpp_repeat": args.mmpp_repeat,
                          "reward_weights": weights}),
        "action": actions.ACTION_SCHEME,
        "features": list(observation.FEATURES),
        "feature_low": ranges.low.tolist(),
        "feature_high": ranges.high.tolist(),
        "max_replicas": config.max_replicas,
        "wall_time_s": round(elapsed, 1),
        "versions": {"stable_baselines3": stable_baselines3.__version__,
                     "gymnasium": gymnasium.__version__, "torch": torch.__version__},
    }
    (args.out / f"{args.name}.json").write_text(json.dumps(record, indent=2) + "\n")
    logger.info("trained %d steps in %.0f s -> %s (.npz, .json)", args.timesteps, elapsed,
                policy_path)
    return 0


if __name__ == "__main__":
    configure_logging("policy", "INFO")
    sys.exit(main())
