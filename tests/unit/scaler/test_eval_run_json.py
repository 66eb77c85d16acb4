"""`tideserve policy eval --run-json`: a simulated episode becomes a RUN.json that
`tideserve report` reads back (tideserve/runs.py's schema)."""

from __future__ import annotations

import math
from pathlib import Path

from tideserve.runs import load_run
from tideserve_learning.evaluate import Result, write_run_json
from tideserve_learning.sim import traces
from tideserve_learning.sim.env import EnvConfig
from tideserve_learning.sim.scaler import PolicySpec, run_episode


def test_a_simulated_episode_round_trips_as_a_run(tmp_path: Path) -> None:
    config = EnvConfig(duration_s=120)
    key = ("spike", traces.TEST_SEEDS[0])
    log = run_episode(key, PolicySpec("hpa", {"target": 0.6}), config).log
    path = write_run_json(Result("hpa", "target=0.6", {key: log}), key, tmp_path / "r.json",
                          config)
    run = load_run(path)
    assert len(run.samples) == len(log.arrivals)
    assert [s.replicas_desired for s in run.samples] == log.replicas
    assert [s.replicas_ready for s in run.samples] == log.ready
    assert run.samples[3].arrival_rate == log.arrivals[3] / config.step_s
    assert all(s.slo_ms == config.slo_s * 1e3 for s in run.samples)
    for sample, tau in zip(run.samples, log.tau_s, strict=True):
        if math.isfinite(tau):
            assert sample.latency_p50_ms is not None
            assert sample.latency_p99_ms is not None
            assert 0 < sample.latency_p50_ms < sample.latency_p99_ms
    assert run.meta["policy"] == "hpa"
