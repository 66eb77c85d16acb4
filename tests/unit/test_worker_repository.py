"""What a worker finds in its model repository: staged copies (hidden directories) are not
models, whether it polls or starts while one is being copied in."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from services.worker.repository import model_names, scan
from tests.unit.test_worker_lifecycle import add_version
from tideserve.errors import NotFound


@pytest.fixture
def staged(tmp_path: Path) -> Path:
    """A repository serving `mlp`, with a copy of it being staged under a hidden name, a new
    version added to the copy, and a hidden model of its own."""
    repository = tmp_path / "repository"
    add_version(repository, "mlp", "1")
    shutil.copytree(repository / "mlp", repository / ".incoming-mlp")
    add_version(repository, ".incoming-mlp", "2", b"new weights")
    add_version(repository, ".hidden", "1")
    return repository


def test_a_start_scan_skips_copies_being_staged(staged: Path) -> None:
    entries = scan(staged)
    assert [(e.config.name, e.version, e.model_path.parent.parent) for e in entries] == [
        ("mlp", "1", staged / "mlp")
    ]


def test_a_poll_and_a_start_scan_find_the_same_models(staged: Path) -> None:
    assert model_names(staged) == [e.config.name for e in scan(staged)] == ["mlp"]


def test_a_staged_copy_cannot_be_asked_for_by_name(staged: Path) -> None:
    with pytest.raises(NotFound):
        scan(staged, [".hidden"])
