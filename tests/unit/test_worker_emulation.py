"""A worker with a service profile emulates that device: its wiring wraps each model's runner in
an EmulatedDeviceRunner, each batch is padded up to the profile's t(b), never shortened, and the
padded time is the service time it reports to the balancer. Without emulation settings the
model's own runner serves, unpadded."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from services.scaler.settings import ScalerSettings
from services.worker.core import WorkerCore
from services.worker.repository import scan
from services.worker.runner import EmulatedDeviceRunner, ModelRunner
from services.worker.settings import parse
from tideserve.profiles import ServiceTimeProfile


class Double(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2.0


PROFILE = ServiceTimeProfile(batch_sizes=(1, 8, 16), seconds=(0.02, 0.05, 0.09))


def runner(tmp_path: Path, module: torch.nn.Module) -> ModelRunner:
    model_dir = tmp_path / "double"
    (model_dir / "1").mkdir(parents=True)
    torch.jit.script(module).save(str(model_dir / "1" / "model.pt"))
    (model_dir / "config.pbtxt").write_text(
        "max_batch_size: 16\n"
        'input [ { name: "x" data_type: TYPE_FP32 dims: [4] } ]\n'
        'output [ { name: "y" data_type: TYPE_FP32 dims: [4] } ]\n'
    )
    (entry,) = scan(tmp_path)
    return ModelRunner(entry.config, entry.version, entry.model_path, torch.device("cpu"))


def emulated(tmp_path: Path, module: torch.nn.Module) -> EmulatedDeviceRunner:
    return EmulatedDeviceRunner(runner(tmp_path, module), service_profile=PROFILE)


def timed_run(model: ModelRunner | EmulatedDeviceRunner, rows: int) -> float:
    x = np.ones((rows, 4), dtype=np.float32)
    started = time.perf_counter()
    (y,) = model.run([x])
    np.testing.assert_allclose(y, 2 * x)  # the real model ran
    return time.perf_counter() - started


def test_profile_is_piecewise_linear_and_extended_past_its_last_point() -> None:
    assert PROFILE.seconds_for(1) == pytest.approx(0.02)
    assert PROFILE.seconds_for(4) == pytest.approx(0.02 + 3 / 7 * 0.03)
    assert PROFILE.seconds_for(16) == pytest.approx(0.09)
    assert PROFILE.seconds_for(24) == pytest.approx(0.13)


def test_profile_loads_what_tideserve_profile_writes(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"model": "m", "batch_sizes": [1, 8, 16],
                                "seconds": [0.02, 0.05, 0.09], "cold_start_s": 2.0}))
    assert ServiceTimeProfile.load(path) == PROFILE
    with pytest.raises(ValueError, match="increasing"):
        ServiceTimeProfile((8, 1), (0.1, 0.2))


@pytest.mark.parametrize("rows", [1, 8, 16])
def test_batch_is_padded_to_the_profile_and_reported_so(
    tmp_path: Path, rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = emulated(tmp_path, Double())
    model.runner.warm_up()
    target = PROFILE.seconds_for(rows)
    # The padding asked for, not the wall time, is what is asserted from above: on a loaded
    # machine a sleep may overrun by any amount.
    padding: list[float] = []
    real_sleep = time.sleep
    monkeypatch.setattr(time, "sleep", lambda s: (padding.append(s), real_sleep(s)))
    took = timed_run(model, rows)
    assert took >= target
    (padded,) = padding
    assert 0 <= padded <= target  # nothing to pad when the compute alone took t(rows)
    assert target <= model.service_times[rows] <= took
    # What the balancer and batcher get: the worker's load report carries the padded time.
    (reported,) = [t for t in WorkerCore("w", {"double": {"1": model}}).load_report().service_times
                   if t.batch_size == rows]
    assert reported.seconds == pytest.approx(model.service_times[rows])
    model.close()


def test_a_batch_slower_than_the_profile_is_never_shortened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = emulated(tmp_path, Double())
    (instance,) = model.runner.instances
    forward = instance.forward

    def slow_forward(inputs: list[np.ndarray]) -> list[np.ndarray]:
        time.sleep(0.08)  # real compute longer than the profile's t(1)
        return forward(inputs)

    monkeypatch.setattr(instance, "forward", slow_forward)
    took = timed_run(model, 1)
    assert took >= 0.08
    # No padding on top of real compute that already exceeds t(1) = 20 ms.
    assert model.service_times[1] == pytest.approx(took, abs=0.01)
    model.close()


def test_without_emulation_the_batch_is_not_padded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = runner(tmp_path, Double())
    model.warm_up()
    sleeps: list[float] = []
    monkeypatch.setattr(time, "sleep", sleeps.append)
    took = timed_run(model, 1)
    assert sleeps == []
    assert 0 < model.service_times[1] <= took
    model.close()


def test_slowdown_multiplies_the_compute_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = EmulatedDeviceRunner(runner(tmp_path, Double()), slowdown=3.0)
    (instance,) = model.runner.instances
    forward = instance.forward

    def slow_forward(inputs: list[np.ndarray]) -> list[np.ndarray]:
        time.sleep(0.02)
        return forward(inputs)

    monkeypatch.setattr(instance, "forward", slow_forward)
    took = timed_run(model, 1)
    assert took >= 0.06
    assert model.service_times[1] >= 0.06
    model.close()


def test_slowdown_below_one_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="slowdown"):
        EmulatedDeviceRunner(runner(tmp_path, Double()), slowdown=0.5)


def test_setting_reaches_workers_started_by_the_scaler() -> None:
    assert parse(["--service-profile", "p.json"]).service_profile == "p.json"
    assert parse([]).service_profile == ""
    env = ScalerSettings(worker_service_profile="/p.json").worker_settings_env()
    assert env["TIDESERVE_WORKER_SERVICE_PROFILE"] == "/p.json"
