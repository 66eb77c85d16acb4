"""Learned policy: training writes its files, save/load keeps actions, range checks fall back."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from stable_baselines3 import PPO

from services.scaler.learning import actions, observation
from services.scaler.learning.inference import NumpyActor, file_sha256
from services.scaler.learning.policy import LearnedPolicy, ObservationOutOfRange
from tideserve_learning import train
from tideserve_learning.sim import traces
from tideserve_learning.sim.env import ServingClusterEnv


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("policy")
    code = train.main(["--timesteps", "512", "--n-envs", "2", "--out", str(out), "--name", "p",
                       "--log-dir", str(out / "log"), "--no-progress"])
    assert code == 0
    return out / "p.zip"


def test_training_writes_policy_metadata_and_csv_log(trained: Path) -> None:
    metadata = json.loads(trained.with_suffix(".json").read_text())
    assert metadata["algorithm"] == "PPO"
    assert metadata["timesteps"] == 512
    assert "--timesteps 512" in metadata["command"]
    assert len(metadata["feature_low"]) == len(metadata["features"])
    assert "time/total_timesteps" in (trained.parent / "log" / "progress.csv").read_text()


def test_training_exports_the_actor_beside_the_policy(trained: Path) -> None:
    actor = NumpyActor.load(trained.with_suffix(".npz"))
    assert actor.source_sha256 == file_sha256(trained)
    env = ServingClusterEnv()
    env.reset(seed=2)
    observations = np.stack([env.step(int(a))[0] for a in np.arange(300) % actions.N_ACTIONS])
    expected, _ = PPO.load(trained, device="cpu").predict(observations, deterministic=True)
    assert np.array_equal(actor.act(observations), expected)


def test_save_load_keeps_deterministic_actions(tmp_path: Path) -> None:
    env = ServingClusterEnv()
    model = PPO("MlpPolicy", env, n_steps=64, batch_size=32, n_epochs=1, seed=0, device="cpu")
    model.learn(64)
    observations = np.stack([env.observation_space.sample() for _ in range(64)])
    before, _ = model.predict(observations, deterministic=True)
    model.save(tmp_path / "m.zip")
    after, _ = PPO.load(tmp_path / "m.zip", device="cpu").predict(observations,
                                                                  deterministic=True)
    assert np.array_equal(before, after)


def test_live_policy_matches_the_simulator(trained: Path, tmp_path: Path) -> None:
    # A 512-step policy has seen too little to trust its recorded range; this test is about the
    # live features and actions matching the simulator's, so it trusts the whole space.
    shutil.copy(trained, tmp_path / "p.zip")
    shutil.copy(trained.with_suffix(".npz"), tmp_path / "p.npz")
    metadata = json.loads(trained.with_suffix(".json").read_text())
    metadata["feature_low"] = observation.LOW.tolist()
    metadata["feature_high"] = observation.HIGH.tolist()
    (tmp_path / "p.json").write_text(json.dumps(metadata))
    env = ServingClusterEnv()
    obs, _ = env.reset(seed=3)
    live, model = LearnedPolicy(tmp_path / "p.zip"), PPO.load(trained, device="cpu")
    for _ in range(50):
        ctx = env.scaling_context()
        action, _ = model.predict(obs, deterministic=True)
        assert live.decide(ctx) == actions.replicas_for(int(action), ctx)
        obs, *_ = env.step(int(action))


def test_out_of_range_observation_raises(trained: Path) -> None:
    env = ServingClusterEnv()
    env.reset(seed=0)
    policy = LearnedPolicy(trained)
    overload = dataclasses.replace(env.scaling_context(), arrival_rate=1e7)
    with pytest.raises(ObservationOutOfRange, match="rate_1s"):
        policy.decide(overload)
    assert policy.last_untrusted is not None


def test_missing_policy_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing"):
        LearnedPolicy(tmp_path / "none.zip")


def test_shipped_default_policy_decides_in_the_simulator() -> None:
    env = ServingClusterEnv()
    env.reset(seed=1)
    ctx = env.scaling_context()
    assert 1 <= LearnedPolicy().decide(ctx) <= env.config.max_replicas


def test_oversampled_mmpp_keeps_the_uniform_objective() -> None:
    keys = traces.train_set(mmpp_repeat=2)
    share = {s: sum(k[0] == s for k in keys) / len(keys) for s in traces.TRAIN_SHAPES}
    assert share["mmpp"] == pytest.approx(0.5)
    weights = train.shape_weights(2)
    # Each shape's expected weight in training equals its share of the uniform mix.
    for shape in traces.TRAIN_SHAPES:
        assert share[shape] * weights[shape] == pytest.approx(1 / len(traces.TRAIN_SHAPES))
    assert train.shape_weights(1) == dict.fromkeys(traces.TRAIN_SHAPES, 1.0)
    assert traces.train_set() == traces.train_set(mmpp_repeat=1)
