"""`tideserve policy train --traces DIR` fine-tunes the shipped policy on an operator's traces: a
short run writes a policy the live scaler loads, started from the shipped weights (not fresh
ones), trusted over at least the range the shipped policy was."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from services.scaler.learning import DEFAULT_POLICY
from services.scaler.learning.inference import NumpyActor
from services.scaler.learning.policy import LearnedPolicy
from services.scaler.policies import ScalingContext
from tideserve_learning import train


def test_train_on_own_traces_writes_a_loadable_fine_tuned_policy(tmp_path: Path) -> None:
    traces_dir = tmp_path / "traces"
    traces_dir.mkdir()
    (traces_dir / "weekday.csv").write_text("# second,rate\n0,60\n60,200\n120,90\n179,90\n")
    (traces_dir / "notes.txt").write_text("not a trace: ignored")
    (traces_dir / "burst.csv").write_text("0,80\n30,300\n45,80\n119,80\n")
    out = tmp_path / "policy"
    code = train.main(
        [
            "--traces",
            str(traces_dir),
            "--timesteps",
            "256",
            "--n-envs",
            "1",
            "--out",
            str(out),
            "--name",
            "mine",
            "--log-dir",
            str(tmp_path / "log"),
            "--no-progress",
        ]
    )
    assert code == 0

    policy = LearnedPolicy(out / "mine.zip")
    context = ScalingContext(
        now=0.0,
        current_replicas=3,
        ready_replicas=3,
        arrival_rate=100.0,
        queued_requests=2,
        ongoing_requests=8.0,
        latency_p99_s=0.3,
        slo_s=0.5,
        utilisation=0.5,
        service_rate_per_replica=48.0,
    )
    assert 1 <= policy.decide(context) <= 10

    record = json.loads((out / "mine.json").read_text())
    assert record["train_traces"]["traces"] == ["burst", "weekday"]
    assert record["fine_tuned_from"] == str(DEFAULT_POLICY)
    shipped = json.loads(DEFAULT_POLICY.with_suffix(".json").read_text())
    assert np.all(np.asarray(record["feature_low"]) <= np.asarray(shipped["feature_low"]))
    assert np.all(np.asarray(record["feature_high"]) >= np.asarray(shipped["feature_high"]))

    # A few gradient steps move the shipped weights a little; a fresh network is far from them.
    tuned = NumpyActor.load(out / "mine.npz").hidden[0][0]
    start = NumpyActor.load(DEFAULT_POLICY.with_suffix(".npz")).hidden[0][0]
    assert not np.array_equal(tuned, start)
    assert np.max(np.abs(tuned - start)) < 0.05


def test_train_refuses_a_directory_without_traces(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        train.main(["--traces", str(tmp_path), "--out", str(tmp_path / "p")])
    assert "no trace files" in capsys.readouterr().err
