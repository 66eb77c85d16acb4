"""The model repository on disk, laid out as Triton's:

    <repository>/<model>/config.pbtxt        Triton text format (see tideserve.modelconfig)
    <repository>/<model>/<version>/model.pt  TorchScript, or model.pt2 from torch.export

The highest numeric version is served.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tideserve.errors import NotFound
from tideserve.modelconfig import read_config
from tideserve.v1 import model_config_pb2 as mc

MODEL_FILES = {"model.pt": "pytorch_libtorch", "model.pt2": "torch_export"}


@dataclass(frozen=True)
class RepositoryEntry:
    config: mc.ModelConfig
    version: str
    model_path: Path


def _latest_version(model_dir: Path) -> Path | None:
    versions = [p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    return max(versions, key=lambda p: int(p.name), default=None)


def scan(repository: Path, names: Iterable[str] = ()) -> list[RepositoryEntry]:
    """Every servable model of the repository (or just `names`), each at its latest version."""
    wanted = set(names)
    if not repository.is_dir():
        raise NotFound(f"model repository {repository} does not exist")
    entries = []
    for model_dir in sorted(p for p in repository.iterdir() if p.is_dir()):
        if wanted and model_dir.name not in wanted:
            continue
        config_path = model_dir / "config.pbtxt"
        version_dir = _latest_version(model_dir)
        if not config_path.exists() or version_dir is None:
            continue
        model_path = next(
            (version_dir / f for f in MODEL_FILES if (version_dir / f).exists()), None
        )
        if model_path is None:
            continue
        config = read_config(config_path, model_dir.name)
        if not config.platform:
            config.platform = MODEL_FILES[model_path.name]
        entries.append(RepositoryEntry(config, version_dir.name, model_path))
    missing = wanted - {e.config.name for e in entries}
    if missing:
        raise NotFound(f"models {sorted(missing)} not found in repository {repository}")
    return entries
