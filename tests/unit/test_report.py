"""`tideserve report`: RUN.json in, three PNGs out; malformed files are refused by field; the
recorder's snapshot -> sample mapping (tideserve_tools/record.py) without a network."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from tideserve.runs import Run, RunFormatError, Sample, load_run
from tideserve.v1 import cluster_pb2
from tideserve_tools import cli
from tideserve_tools.record import sample_from_snapshot
from tideserve_tools.report import PLOTS, main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def synthetic_run() -> Run:
    """A ramp up and down with a scale-up that lags it, an overload spike and a gap."""
    samples = []
    for second in range(120):
        rate = 20 + 180 * math.sin(math.pi * second / 120) ** 2
        ready = 1 if second < 40 else (2 if second < 50 else 3)
        p50 = 8 + rate / 20
        samples.append(Sample(
            t=float(second), arrival_rate=rate, replicas_ready=ready,
            replicas_desired=3 if second >= 35 else 1,
            latency_p50_ms=None if second == 10 else p50,
            latency_p99_ms=None if second == 10 else p50 * (8 if 35 <= second < 50 else 3),
            slo_ms=250.0,
        ))
    return Run(samples, {1: 40, 2: 60, 4: 200, 8: 520, 16: 90}, {"source": "unit test"})


def test_a_synthetic_run_makes_three_pngs(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                          ) -> None:
    path = synthetic_run().write(tmp_path / "run.json")
    assert main([str(path), "--out", str(tmp_path / "plots")]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / "plots" / name) for name in PLOTS]
    for name in PLOTS:
        png = (tmp_path / "plots" / name).read_bytes()
        assert png.startswith(PNG_SIGNATURE), name
        # A blank 900x400 canvas compresses to a few kB; curves, bars and labels take more.
        assert len(png) > 15_000, (name, len(png))


def test_the_file_round_trips_and_is_strict_json(tmp_path: Path) -> None:
    run = synthetic_run()
    path = run.write(tmp_path / "run.json")
    text = path.read_text()
    assert "NaN" not in text
    assert "Infinity" not in text
    assert load_run(path) == run
    assert json.loads(text)["version"] == 1


def test_unbounded_latency_is_written_as_null(tmp_path: Path) -> None:
    run = Run([Sample(0.0, 5.0, 0, 1, math.inf, math.nan)])
    data = json.loads(run.write(tmp_path / "run.json").read_text())
    assert data["samples"][0]["latency_p50_ms"] is None
    assert data["samples"][0]["latency_p99_ms"] is None
    assert "slo_ms" not in data["samples"][0]


def test_a_run_without_batch_sizes_still_plots(tmp_path: Path) -> None:
    run = Run([Sample(0.0, 5.0, 1, 1, 3.0, 9.0), Sample(1.0, 6.0, 1, 1, None, None)])
    path = run.write(tmp_path / "run.json")
    assert main([str(path)]) == 0
    for name in PLOTS:
        assert (tmp_path / name).read_bytes().startswith(PNG_SIGNATURE)


def _sample(**overrides: object) -> dict[str, object]:
    row: dict[str, object] = {"t": 0, "arrival_rate": 1.5, "replicas_ready": 1,
                              "replicas_desired": 1, "latency_p50_ms": 2.0,
                              "latency_p99_ms": None}
    row.update(overrides)
    return row


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "not JSON"),
    ("[]", "expected a JSON object"),
    (json.dumps({"samples": []}), "'samples' must be a non-empty list"),
    (json.dumps({"version": 2, "samples": [_sample()]}), "version 2 unsupported"),
    (json.dumps({"samples": [{"t": 0}]}), "samples[0]: missing arrival_rate"),
    (json.dumps({"samples": [_sample(arrival_rate="fast")]}),
     "samples[0].arrival_rate: expected a number, got 'fast'"),
    (json.dumps({"samples": [_sample(), _sample(replicas_ready=1.5)]}),
     "samples[1].replicas_ready: expected a whole number"),
    (json.dumps({"samples": [_sample(latency_p99_ms=True)]}), "latency_p99_ms: expected a number"),
    (json.dumps({"samples": [_sample()], "batch_size_counts": {"big": 3}}),
     "key 'big' is not a batch size"),
    (json.dumps({"samples": [_sample()], "batch_size_counts": {"4": -1}}),
     "batch_size_counts['4']: expected a whole number >= 0"),
])
def test_a_malformed_file_names_what_is_wrong(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    path = tmp_path / "run.json"
    path.write_text(content)
    with pytest.raises(RunFormatError) as caught:
        load_run(path)
    assert message in str(caught.value)
    assert main([str(path), "--out", str(tmp_path / "plots")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tideserve report: ")
    assert message in err
    assert not (tmp_path / "plots").exists()


def test_a_missing_file_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                         ) -> None:
    assert main([str(tmp_path / "absent.json")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_plot_and_record_modes_are_exclusive(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main([])
    with pytest.raises(SystemExit):
        main([str(tmp_path / "run.json"), "--record", "127.0.0.1:1"])
    with pytest.raises(SystemExit):
        main(["--record", "127.0.0.1:1"])


def test_a_snapshot_becomes_a_sample() -> None:
    worker = cluster_pb2.WorkerState
    snapshot = cluster_pb2.ClusterSnapshot(
        timestamp_unix=1012.5,
        workers=[worker(worker_id="a", phase=worker.READY),
                 worker(worker_id="b", phase=worker.EJECTED),
                 worker(worker_id="c", phase=worker.DRAINING)],
        frontends=[
            cluster_pb2.FrontendReport(arrival_rate=30.0, latency_p50_seconds=0.004,
                                       latency_p99_seconds=0.020),
            cluster_pb2.FrontendReport(arrival_rate=12.0, latency_p50_seconds=0.006,
                                       latency_p99_seconds=0.015),
        ],
    )
    sample = sample_from_snapshot(snapshot, t0=1000.0, slo_ms=50.0)
    assert sample.t == pytest.approx(12.5)
    assert sample.arrival_rate == pytest.approx(42.0)
    assert sample.replicas_ready == 1
    # Without the scaler, desired is what the balancer still routes to or will again.
    assert sample.replicas_desired == 2
    assert sample.latency_p50_ms == pytest.approx(6.0)
    assert sample.latency_p99_ms == pytest.approx(20.0)
    assert sample.slo_ms == 50.0
    status = cluster_pb2.ScalerStatus(desired_replicas=4)
    assert sample_from_snapshot(snapshot, 1000.0, status).replicas_desired == 4


def test_a_frontend_that_answered_nothing_has_no_latency() -> None:
    snapshot = cluster_pb2.ClusterSnapshot(
        timestamp_unix=5.0, frontends=[cluster_pb2.FrontendReport(arrival_rate=0.0)]
    )
    sample = sample_from_snapshot(snapshot, t0=5.0)
    assert sample.latency_p50_ms is None
    assert sample.latency_p99_ms is None
    assert sample.arrival_rate == 0.0


def test_without_the_report_extra_the_command_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = synthetic_run().write(tmp_path / "run.json")
    # As on a plain install: matplotlib (the report extra) cannot be imported.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    # The process-wide logging setup of the command would outlive this test.
    monkeypatch.setattr(cli, "configure_logging", lambda *args: None)
    assert cli.main(["report", str(run), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "tideserve report: matplotlib is not installed" in err
    assert "pip install 'tideserve[report]'" in err
    assert not any((tmp_path / name).exists() for name in PLOTS)
