"""`tideserve policy ...` shows its progress: the commands' INFO lines reach the terminal (the CLI
configures logging once, at INFO for `policy`, before the command runs) and `policy eval` draws a
progress bar over its episodes. The evaluation runs for real on a shrunken grid and trace set."""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.scaler.learning import DEFAULT_POLICY
from tideserve_learning import evaluate
from tideserve_learning.sim import traces
from tideserve_tools import cli


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_policy_eval_logs_and_draws_progress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(evaluate, "_rule_grid", lambda env: {"hpa": [{"target": 0.5}]})
    monkeypatch.setattr(traces, "validation_set", lambda: [("ramp", 90)])
    code = cli.main(
        ["policy", "eval", "--split", "validation", "--tune-seeds", "1", "--out", str(tmp_path)]
    )
    assert code == 0
    out, err = capfd.readouterr()
    # 3 tuning episodes (one seed of each training shape) + learned and hpa on one trace.
    assert "INFO cli tideserve_learning.evaluate: tuning hpa on 3 training traces" in err
    assert "tuned hpa: {'target': 0.5}" in err
    assert re.search(r"validation: hpa: 100%\|.*\| 5/5", err), err
    assert "validation traces: 1" in out
    assert "actions/h" in out
    assert (tmp_path / "eval_ramp.png").exists()


def test_policy_export_logs_at_info_and_log_level_still_applies(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(DEFAULT_POLICY, tmp_path / "p.zip")
    assert cli.main(["policy", "export", str(tmp_path / "p.zip")]) == 0
    assert f"exported the actor of {tmp_path / 'p.zip'}" in capfd.readouterr().err

    assert cli.main(["--log-level", "WARNING", "policy", "export", str(tmp_path / "p.zip")]) == 0
    assert "exported" not in capfd.readouterr().err
