"""The fault tests' accounting (tests/accounting.py) and the table made from it
(scripts/reliability_table.py)."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

from harness.cluster import ROOT
from tests.accounting import ENV, record

SCRIPT = runpy.run_path(str(ROOT / "scripts" / "reliability_table.py"))


def test_record_counts_the_unanswered_as_lost_and_appends_a_json_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "accounting.jsonl"
    monkeypatch.setenv(ENV, str(out))
    record("a", cases=1, sent=10, answered=9, errors={"OK": 7, "UNAVAILABLE": 2, "INTERNAL": 0})
    record("b", cases=2, sent=3, answered=3, errors={})
    first, second = (json.loads(line) for line in out.read_text().splitlines())
    assert first["lost"] == 1
    assert first["errors"] == {"UNAVAILABLE": 2}
    assert first["test"].startswith("tests/unit/test_accounting.py::test_record_counts")
    assert second["lost"] == 0
    assert "a: 1 cases, 10 requests sent, 1 lost" in capsys.readouterr().out


def test_table_keeps_each_tests_last_line_in_first_seen_order() -> None:
    lines = [
        json.dumps({"fault": "x", "test": "tests/t.py::x", "cases": 1, "sent": 5, "lost": 1,
                    "errors": {"UNAVAILABLE": 1}}),
        json.dumps({"fault": "y", "test": "tests/t.py::y", "cases": 3, "sent": 1200, "lost": 0,
                    "errors": {}}),
        json.dumps({"fault": "x", "test": "tests/t.py::x", "cases": 1, "sent": 6, "lost": 0,
                    "errors": {}}),
    ]
    rows = SCRIPT["table"](SCRIPT["latest_entries"](lines)).splitlines()
    assert rows[2] == "| x | 1 | 6 | 0 | none | `t.py::x` |"
    assert rows[3] == "| y | 3 | 1,200 | 0 | none | `t.py::y` |"
    assert rows[4] == "| **all** |  | **1,206** | **0** |  |  |"


def test_one_test_may_record_several_faults_with_their_own_fields(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "accounting.jsonl"
    monkeypatch.setenv(ENV, str(out))
    record("kill a", cases=1, sent=4, answered=4, errors={}, detail={"seconds_until_served": 1.5})
    record("kill b", cases=1, sent=2, answered=2, errors={"UNAVAILABLE": 1})
    lines = out.read_text().splitlines()
    assert json.loads(lines[0])["seconds_until_served"] == 1.5
    rows = SCRIPT["table"](SCRIPT["latest_entries"](lines)).splitlines()
    assert rows[2].startswith("| kill a | 1 | 4 | 0 | none |")
    assert rows[3].startswith("| kill b | 1 | 2 | 0 | UNAVAILABLE 1 |")
