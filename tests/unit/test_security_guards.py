"""Guards on the code base itself: no shell, no unpickling or unsafe YAML, the Docker socket only
in the scaler, and model files only from inside the configured repository.

Worker-container limits (CPU, memory, no privileges, capabilities dropped, no-new-privileges) and
the scaler touching only containers with its own owner label are asserted against a fake Docker
client in tests/unit/scaler/test_docker_runtime.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from services.worker.models import write_default_model
from services.worker.repository import scan
from tideserve.errors import NotFound

ROOT = Path(__file__).resolve().parents[2]
SOURCE_DIRS = ("tideserve", "services", "bench", "scripts", "tests", "docker", "deploy")
# Patterns are assembled so that this file does not match itself.
FORBIDDEN = {
    "shell" + "=True": re.compile(r"shell\s*=\s*True"),
    "pickle" + ".load": re.compile(r"\bpickle\.loads?\("),
    "torch" + ".load (unpickles)": re.compile(r"\btorch\.load\("),
    "yaml.load without SafeLoader": re.compile(r"\byaml\.load\((?![^)]*SafeLoader)"),
    "yaml" + ".unsafe_load": re.compile(r"\byaml\.unsafe_load"),
    "os" + ".system": re.compile(r"\bos\.system\("),
}


def python_sources() -> list[Path]:
    files = []
    for directory in SOURCE_DIRS:
        for path in (ROOT / directory).rglob("*.py"):
            # Third-party environments that bench/setup.sh installs under bench/.tools.
            if ".tools" not in path.parts and path != Path(__file__).resolve():
                files.append(path)
    return files


def test_source_tree_has_no_shell_pickle_or_unsafe_yaml() -> None:
    sources = python_sources()
    assert len(sources) > 50
    found = [
        f"{path.relative_to(ROOT)}:{number}: {name}"
        for path in sources
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        for name, pattern in FORBIDDEN.items()
        if pattern.search(line)
    ]
    assert found == []


@pytest.mark.parametrize("stack", ["compose.yaml", "deploy/swarm/stack.yaml"])
def test_only_the_scaler_mounts_the_docker_socket(stack: str) -> None:
    services = yaml.safe_load((ROOT / stack).read_text())["services"]
    mounting = sorted(
        name
        for name, service in services.items()
        if any("docker.sock" in str(volume) for volume in service.get("volumes", ()))
    )
    assert mounting == ["scaler"]
    for name, service in services.items():
        assert not service.get("privileged", False), name


@pytest.mark.parametrize("name", ["../../etc", "..", "../model_repository", "/etc", "tiny_cnn/.."])
def test_a_model_name_cannot_escape_the_repository(tmp_path: Path, name: str) -> None:
    repository = tmp_path / "repository"
    write_default_model(repository)
    outside = tmp_path / "etc"
    (outside / "1").mkdir(parents=True)
    (outside / "config.pbtxt").write_text('name: "etc"\n')
    (outside / "1" / "model.pt").write_bytes(b"not a model")
    with pytest.raises(NotFound):
        scan(repository, [name])
    assert [e.model_path.parent.parent for e in scan(repository)] == [repository / "tiny_cnn"]
