"""What a worker finds in its model repository: staged copies (hidden directories) are not
models, whether it polls or starts while one is being copied in."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from services.worker.repository import model_names, scan
from tideserve.errors import NotFound

CONFIG = """name: "{name}"
platform: "pytorch_libtorch"
max_batch_size: 8
input [ {{ name: "INPUT__0" data_type: TYPE_FP32 dims: [4] }} ]
output [ {{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [2] }} ]
"""


def add_model(repository: Path, name: str, version: str = "1") -> Path:
    model_dir = repository / name
    (model_dir / version).mkdir(parents=True)
    (model_dir / version / "model.pt").write_bytes(b"weights")
    (model_dir / "config.pbtxt").write_text(CONFIG.format(name=name))
    return model_dir


@pytest.fixture
def staged(tmp_path: Path) -> Path:
    """A repository serving `mlp`, with a copy of it being staged under a hidden name (its
    config still names `mlp`, as a copy would) and a hidden model of its own."""
    repository = tmp_path / "repository"
    shutil.copytree(add_model(repository, "mlp"), repository / ".incoming-mlp")
    (repository / ".incoming-mlp" / "2").mkdir()
    (repository / ".incoming-mlp" / "2" / "model.pt").write_bytes(b"new weights")
    add_model(repository, ".hidden")
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
