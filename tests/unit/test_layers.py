"""The layering of the code ([tool.importlinter] in pyproject.toml) holds, and the check would
catch a break: a plain pytest run fails as scripts/test.sh does when, say, the shared runtime
imports a service or two modules import each other."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cluster import ROOT

PACKAGES = (
    "tideserve",
    "services",
    "tideserve_learning",
    "tideserve_tools",
    "harness",
    "bench",
    "tests",
)
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    # lint-imports reads the contracts of root/pyproject.toml and imports the packages from root
    # (it puts the working directory first on the path).
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def source_copy(tmp_path: Path) -> Path:
    """The packages and contracts of the source tree, in a folder of the test's own."""
    for package in PACKAGES:
        shutil.copytree(
            ROOT / package,
            tmp_path / package,
            ignore=shutil.ignore_patterns("__pycache__", "results", ".tools"),
        )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_source_tree_keeps_every_layering_contract() -> None:
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def test_the_shared_runtime_importing_a_service_breaks_the_layers(source_copy: Path) -> None:
    errors = source_copy / "tideserve" / "errors.py"
    errors.write_text(errors.read_text() + "\nimport services.batcher.core  # noqa: E402\n")
    done = lint_imports(source_copy)
    assert done.returncode != 0
    assert "The shared runtime imports no service" in done.stdout
    assert "tideserve.errors -> services.batcher.core" in done.stdout


def test_the_running_scaler_importing_torch_breaks_a_contract(source_copy: Path) -> None:
    context = source_copy / "services" / "scaler" / "context.py"
    context.write_text(context.read_text() + "\nimport torch  # noqa: E402\n")
    done = lint_imports(source_copy)
    assert done.returncode != 0
    assert "The running scaler imports no training code, torch or stable-baselines3 BROKEN" in (
        " ".join(done.stdout.split())
    )


def test_an_import_cycle_breaks_the_acyclic_contract(source_copy: Path) -> None:
    record = source_copy / "tideserve_tools" / "record.py"
    record.write_text(record.read_text() + "\nfrom tideserve_tools import report  # noqa: E402\n")
    done = lint_imports(source_copy)
    assert done.returncode != 0
    assert "No cycles are allowed in tideserve_tools" in done.stdout
