"""The learned policy's numpy actor: the same deterministic action as stable-baselines3, exported
by training and by `tideserve policy export`, and the running scaler without torch,
stable-baselines3 or gymnasium."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from stable_baselines3 import PPO

from services.scaler.learning import DEFAULT_POLICY, observation
from services.scaler.learning.fallback import LearnedWithFallback
from services.scaler.learning.inference import NumpyActor, file_sha256
from services.scaler.learning.policy import LearnedPolicy, PolicyFileError
from services.scaler.policies import HpaPolicy
from tideserve_learning import export
from tideserve_learning.sim import traces
from tideserve_learning.sim.env import ServingClusterEnv

SHIPPED_NPZ = DEFAULT_POLICY.with_suffix(".npz")


@pytest.fixture(scope="module")
def model() -> PPO:
    return PPO.load(DEFAULT_POLICY, device="cpu")


@pytest.fixture(scope="module")
def recorded(model: PPO) -> np.ndarray:
    """Observations of the simulator on every trace shape (the held-out spike included), two
    seeds each: one run by the shipped policy, one by random actions (states it would avoid)."""
    rng = np.random.default_rng(0)
    seen = []
    for shape in traces.SHAPES:
        for seed, by_policy in ((1000, True), (7, False)):
            env = ServingClusterEnv(trace_keys=[(shape, seed)])
            obs, _ = env.reset(seed=seed)
            truncated = False
            while not truncated:
                seen.append(obs)
                action = (
                    int(model.predict(obs, deterministic=True)[0])
                    if by_policy
                    else int(rng.integers(env.action_space.n))
                )
                obs, _, _, truncated, _ = env.step(action)
    return np.stack(seen)


def bounds() -> np.ndarray:
    """Every corner of the observation space, its centre, and each feature alone at a bound."""
    corners = [
        np.where(np.array(c), observation.HIGH, observation.LOW)
        for c in itertools.product((False, True), repeat=len(observation.FEATURES))
    ]
    centre = (observation.LOW + observation.HIGH) / 2
    alone = []
    for i in range(len(observation.FEATURES)):
        for bound in (observation.LOW, observation.HIGH):
            edge = centre.copy()
            edge[i] = bound[i]
            alone.append(edge)
    return np.stack([*corners, centre, *alone]).astype(np.float32)


def test_numpy_actor_acts_as_stable_baselines3(model: PPO, recorded: np.ndarray) -> None:
    actor = NumpyActor.load(SHIPPED_NPZ)
    observations = np.concatenate([recorded, bounds()])
    assert len(observations) > 5000
    expected, _ = model.predict(observations, deterministic=True)
    actions = actor.act(observations)
    assert len(np.unique(expected)) > 3, "the observations exercise several actions"
    mismatches = np.flatnonzero(actions != expected)
    assert mismatches.size == 0, f"{mismatches.size} differ, first {observations[mismatches[0]]}"
    # Each observation alone, as the live scaler asks, gives the same as the batch.
    for obs in observations[:: len(observations) // 50]:
        assert int(actor.act(obs)) == int(model.predict(obs, deterministic=True)[0])


def test_shipped_npz_is_the_export_of_the_shipped_zip() -> None:
    shipped = NumpyActor.load(SHIPPED_NPZ)
    fresh = export.export(DEFAULT_POLICY)
    assert shipped.source_sha256 == file_sha256(DEFAULT_POLICY)
    assert shipped.activation == fresh.activation
    assert len(shipped.hidden) == len(fresh.hidden) == 2
    for (w, b), (fw, fb) in zip(shipped.hidden, fresh.hidden, strict=True):
        assert np.array_equal(w, fw)
        assert np.array_equal(b, fb)
    assert np.array_equal(shipped.action_weight, fresh.action_weight)
    assert np.array_equal(shipped.action_bias, fresh.action_bias)


def test_export_command_writes_the_npz(tmp_path: Path) -> None:
    shutil.copy(DEFAULT_POLICY, tmp_path / "p.zip")
    assert export.main([str(tmp_path / "p.zip")]) == 0
    written = NumpyActor.load(tmp_path / "p.npz")
    assert written.source_sha256 == file_sha256(tmp_path / "p.zip")
    probe = bounds()
    assert np.array_equal(written.act(probe), NumpyActor.load(SHIPPED_NPZ).act(probe))


def policy_without_npz(tmp_path: Path) -> Path:
    for suffix in (".zip", ".json"):
        shutil.copy(DEFAULT_POLICY.with_suffix(suffix), tmp_path / f"p{suffix}")
    return tmp_path / "p.zip"


def test_a_policy_file_without_npz_is_refused_with_the_command_that_exports_it(
    tmp_path: Path,
) -> None:
    path = policy_without_npz(tmp_path)
    with pytest.raises(PolicyFileError, match="p.npz is missing"):
        LearnedPolicy(path)
    policy = LearnedWithFallback(HpaPolicy(), path)
    assert policy.learned is None
    assert f"tideserve policy export {path}" in policy.fallback_reason
    assert export.main([str(path)]) == 0
    probe = bounds()
    assert np.array_equal(LearnedPolicy(path).actor.act(probe),
                          NumpyActor.load(SHIPPED_NPZ).act(probe))


def test_an_npz_exported_from_another_zip_is_not_run(tmp_path: Path) -> None:
    path = policy_without_npz(tmp_path)
    stale = NumpyActor.load(SHIPPED_NPZ)
    NumpyActor(
        stale.hidden,
        stale.activation,
        stale.action_weight,
        stale.action_bias,
        source_sha256="0" * 64,
    ).save(tmp_path / "p.npz")
    with pytest.raises(PolicyFileError, match="exported from another p.zip"):
        LearnedPolicy(path)
    assert export.main([str(path)]) == 0
    assert LearnedPolicy(path).actor.source_sha256 == file_sha256(path), "exported again"


def test_an_npz_alone_is_a_policy(tmp_path: Path) -> None:
    shutil.copy(SHIPPED_NPZ, tmp_path / "p.npz")
    shutil.copy(DEFAULT_POLICY.with_suffix(".json"), tmp_path / "p.json")
    env = ServingClusterEnv()
    env.reset(seed=1)
    ctx = env.scaling_context()
    assert LearnedPolicy(tmp_path / "p.zip").decide(ctx) == LearnedPolicy().decide(ctx)


def test_a_file_that_is_not_an_actor_is_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "p.npz", weights=np.zeros(3))
    with pytest.raises(ValueError, match="not a tideserve-actor"):
        NumpyActor.load(tmp_path / "p.npz")


def test_shipped_record_matches_the_actor() -> None:
    metadata = json.loads(DEFAULT_POLICY.with_suffix(".json").read_text())
    actor = NumpyActor.load(SHIPPED_NPZ)
    assert actor.observation_size == len(metadata["features"])


RUNNING_SCALER = """
import json, sys
import services.scaler.__main__, services.scaler.server, services.scaler.controller
from services.scaler.context import ScalingContext
from services.scaler.policies import create_policy

policy = create_policy("learned")
ctx = ScalingContext(now=0.0, current_replicas=2, ready_replicas=2, arrival_rate=60.0,
                     queued_requests=0, ongoing_requests=5.0, latency_p99_s=0.25, slo_s=0.5,
                     utilisation=0.5, service_rate_per_replica=48.0)
replicas = policy.decide(ctx)
print(json.dumps({"reason": policy.fallback_reason, "replicas": replicas,
                  "modules": sorted(sys.modules)}))
"""


def test_the_running_scaler_imports_no_torch_sb3_gymnasium_or_offline_code() -> None:
    done = subprocess.run(
        [sys.executable, "-c", RUNNING_SCALER],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    report = json.loads(done.stdout)
    assert report["reason"] == "", "the shipped policy decided itself"
    assert report["replicas"] >= 1
    modules = report["modules"]
    assert "services.scaler.learning.inference" in modules
    heavy = [m for m in modules if m.split(".")[0] in {"torch", "stable_baselines3", "gymnasium"}]
    assert heavy == []
    assert [m for m in modules if m.split(".")[0] == "tideserve_learning"] == []
