"""`tideserve bench` runs the checkout's benchmark as a program: the installed tools never import
bench/, and its arguments reach the suite unchanged."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tideserve_tools import cli


def test_bench_runs_the_suite_of_the_checkout_with_its_arguments() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tideserve_tools.cli", "bench", "--help"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "python -m bench.suite" in done.stdout
    assert "--skip-pytriton" in done.stdout


def test_bench_outside_a_checkout_says_where_it_comes_from(
    tmp_path: Path, monkeypatch, capsys  # type: ignore[no-untyped-def]
) -> None:
    fake = tmp_path / "site-packages" / "tideserve_tools" / "cli.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("")
    monkeypatch.setattr(cli, "__file__", str(fake))
    assert cli.main(["bench", "--quick"]) == 2
    assert "source checkout" in capsys.readouterr().err
