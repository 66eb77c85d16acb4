"""An operator's traffic as simulator traces: `second,rate` CSVs (comments, header, held rates,
bad rows refused with the line named) and recorded RUN.json files, replayed by the simulator at
their own requests/s; `tideserve policy eval --trace` scores them."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from tideserve.runs import Run
from tideserve.v1 import cluster_pb2
from tideserve_learning import evaluate
from tideserve_learning.sim import trace_files
from tideserve_learning.sim.env import EnvConfig
from tideserve_learning.sim.scaler import PolicySpec, run_episode
from tideserve_tools import cli
from tideserve_tools.record import sample_from_snapshot

CSV = """# recorded on the shop frontend, Monday
second,rate

0,10
# the lunch peak
3,40.5
5,20
"""


def test_a_csv_trace_skips_comments_and_holds_each_rate_until_the_next_row(
    tmp_path: Path,
) -> None:
    path = tmp_path / "shop.csv"
    path.write_text(CSV)
    trace = trace_files.load(path, cv=2.0)
    absolute = trace.rates * trace.scale
    assert np.allclose(absolute, [10, 10, 10, 40.5, 40.5, 20])
    assert trace.rates.mean() == pytest.approx(1.0)
    assert (trace.shape, trace.cv) == ("shop", 2.0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0,10\n1,ten\n", "shop.csv:2: 'second,rate' must be numbers, got '1,ten'"),
        ("0,10\n1\n", "shop.csv:2: expected two columns 'second,rate', got '1'"),
        ("0,10\n1,2,3\n", "shop.csv:2: expected two columns"),
        ("0,10\n1,-4\n", "shop.csv:2: rate must be requests/s >= 0, got '-4'"),
        ("0,10\n1,nan\n", "shop.csv:2: rate must be requests/s >= 0, got 'nan'"),
        ("# only\n0,10\n2,3\n2,4\n", "shop.csv:4: seconds must increase, got 2 after 2"),
        ("# nothing\n", "shop.csv: no 'second,rate' rows"),
        ("0,0\n5,0\n", "every rate is 0"),
        ("0,10\n", "at least 2 s"),
    ],
)
def test_a_bad_csv_is_refused_naming_the_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "shop.csv"
    path.write_text(text)
    with pytest.raises(trace_files.TraceFileError, match=re.escape(message)):
        trace_files.load(path)


def _snapshot(t: float, rate: float) -> cluster_pb2.ClusterSnapshot:
    return cluster_pb2.ClusterSnapshot(
        timestamp_unix=t, frontends=[cluster_pb2.FrontendReport(arrival_rate=rate)]
    )


def test_a_recorded_run_is_a_trace_of_its_per_second_arrival_rates(tmp_path: Path) -> None:
    t0 = 1000.0
    points = [(0.0, 10.0), (0.5, 20.0), (1.0, 30.0), (1.5, 30.0), (3.2, 8.0)]
    run = Run([sample_from_snapshot(_snapshot(t0 + t, r), t0) for t, r in points], {}, {})
    trace = trace_files.load(run.write(tmp_path / "RUN.json"))
    # Second 2 had no sample: it holds second 1's rate.
    assert np.allclose(trace.rates * trace.scale, [15, 30, 30, 8])


def test_the_simulator_replays_a_trace_at_its_own_rate(tmp_path: Path) -> None:
    path = tmp_path / "steady.csv"
    path.write_text("0,30\n299,30\n")
    trace = trace_files.load(path)
    config = EnvConfig(duration_s=len(trace.rates))
    log = run_episode((trace.shape, trace.seed), PolicySpec("hpa"), config, preload=[trace]).log
    assert len(log.arrivals) == 300
    assert np.mean(log.arrivals) == pytest.approx(30, rel=0.05)  # Poisson around 30 a second


def test_policy_eval_scores_an_operator_trace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(evaluate, "_rule_grid", lambda env: {"hpa": [{"target": 0.5}]})
    (tmp_path / "mine.csv").write_text("# a step\n0,40\n60,120\n119,120\n")
    code = cli.main(
        [
            "policy",
            "eval",
            "--trace",
            str(tmp_path / "mine.csv"),
            "--tune-seeds",
            "1",
            "--out",
            str(tmp_path),
            "--no-progress",
        ]
    )
    assert code == 0
    out = capfd.readouterr().out
    assert "your traces: 1" in out
    rows = {
        line.split()[0]: line.split()
        for line in out.splitlines()
        if line.startswith(("learned ", "hpa "))
    }
    assert set(rows) == {"learned", "hpa"}
    assert (tmp_path / "eval_mine.png").exists()


def test_policy_eval_refuses_a_bad_trace_with_its_line(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "mine.csv").write_text("0,40\n1;50\n")
    with pytest.raises(SystemExit) as exited:
        cli.main(["policy", "eval", "--trace", str(tmp_path / "mine.csv")])
    assert exited.value.code == 2
    assert "mine.csv:2: expected two columns 'second,rate', got '1;50'" in capfd.readouterr().err


def test_a_cv_below_one_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "shop.csv"
    path.write_text(CSV)
    with pytest.raises(trace_files.TraceFileError, match="cv must be >= 1"):
        trace_files.load(path, cv=0.5)
    assert math.isfinite(trace_files.load(path, cv=1.0).cv)
