"""The model repository on disk, laid out as Triton's:

    <repository>/<model>/config.pbtxt        Triton text format (see tideserve.modelconfig)
    <repository>/<model>/<version>/model.pt  TorchScript, or model.pt2 from torch.export

The config's version_policy picks the versions served (unset: the highest numeric version).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tideserve.errors import NotFound
from tideserve.modelconfig import read_config, select_versions
from tideserve.v1 import model_config_pb2 as mc

MODEL_FILES = {"model.pt": "pytorch_libtorch", "model.pt2": "torch_export"}


@dataclass(frozen=True)
class RepositoryEntry:
    config: mc.ModelConfig
    version: str
    model_path: Path


def _model_file(version_dir: Path) -> Path | None:
    return next((version_dir / f for f in MODEL_FILES if (version_dir / f).exists()), None)


def _model_dirs(repository: Path) -> list[Path]:
    """The repository's model directories, by name. A hidden directory is a copy being staged,
    to be renamed into place: not a model yet, at a poll or at a worker's start."""
    return sorted(p for p in repository.iterdir() if p.is_dir() and not p.name.startswith("."))


def model_names(repository: Path) -> list[str]:
    """The models a poll finds in the repository now: directories with a config.pbtxt and some
    version directory holding a model file (one still being copied in lacks them)."""
    if not repository.is_dir():
        return []
    return sorted(
        model_dir.name
        for model_dir in _model_dirs(repository)
        if (model_dir / "config.pbtxt").is_file()
        and any(
            p.is_dir() and p.name.isdigit() and _model_file(p) is not None
            for p in model_dir.iterdir()
        )
    )


def scan(repository: Path, names: Iterable[str] = ()) -> list[RepositoryEntry]:
    """Every servable model of the repository (or just `names`), one entry per version its
    version_policy serves, by name and then ascending version. A version directory without a
    model file does not count as a version."""
    wanted = set(names)
    if not repository.is_dir():
        raise NotFound(f"model repository {repository} does not exist")
    entries = []
    found = set()
    for model_dir in _model_dirs(repository):
        if wanted and model_dir.name not in wanted:
            continue
        config_path = model_dir / "config.pbtxt"
        files = {
            int(p.name): path
            for p in model_dir.iterdir()
            if p.is_dir() and p.name.isdigit() and (path := _model_file(p)) is not None
        }
        if not config_path.exists() or not files:
            continue
        config = read_config(config_path, model_dir.name)
        found.add(model_dir.name)
        for version in select_versions(config, files):
            model_path = files[version]
            served = mc.ModelConfig()
            served.CopyFrom(config)
            if not served.platform:
                served.platform = MODEL_FILES[model_path.name]
            entries.append(RepositoryEntry(served, str(version), model_path))
    missing = wanted - found
    if missing:
        raise NotFound(f"models {sorted(missing)} not found in repository {repository}")
    return entries
