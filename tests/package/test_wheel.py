"""The wheel as users and the Docker image get it: built from pyproject.toml, installed
non-editable into a fresh virtualenv, and run from outside the source tree.

A data file that pyproject.toml forgets to ship (the scaler's default policy, the simulator's
profiles) would otherwise pass every test run against the source tree and fail only in the
installed product (there the learned policy silently falls back to HPA).
"""

from __future__ import annotations

import json
import shutil
import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from harness.cluster import ROOT

pytestmark = pytest.mark.integration

# Every file the installed package reads at run time lives beside the code in these packages.
PACKAGES = ("tideserve", "services", "tideserve_tools", "tideserve_learning")

# Run inside the installed venv: where the code came from, and the default policy loaded through
# the scaler's own factory, as `--policy learned` does.
PROBE = """
import json, sys
import services, tideserve, tideserve_learning, tideserve_tools
from services.scaler.planner import ServiceProfile
from services.scaler.policies import create_policy
from tideserve_learning.sim.env import DEFAULT_PROFILE

policy = create_policy("learned")
profile = ServiceProfile.load(DEFAULT_PROFILE)
json.dump({
    "tideserve": tideserve.__file__,
    "services": services.__file__,
    "tideserve_tools": tideserve_tools.__file__,
    "tideserve_learning": tideserve_learning.__file__,
    "policy_file": str(policy.policy_file),
    "learned": policy.learned is not None,
    "fallback_reason": policy.fallback_reason,
    "profile_model": profile.model,
}, sys.stdout)
"""


def source_files() -> list[str]:
    """The files of the source tree that git knows of (committed or not, never ignored)."""
    return subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Built from a copy of the source files only, as the Docker build context holds them: a
    # working tree's leftover build metadata (an editable install's tideserve.egg-info lists
    # every file) would otherwise put files in the wheel that pyproject.toml does not name.
    source = tmp_path_factory.mktemp("source")
    for name in source_files():
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(out), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = out.glob("tideserve-*.whl")
    return built


def runtime_data_files() -> set[str]:
    """Every non-Python file of the packages: what the code may open at run time."""
    return {
        path
        for path in source_files()
        if path.split("/")[0] in PACKAGES and not path.endswith(".py")
    }


def test_the_wheel_holds_every_runtime_data_file(wheel: Path) -> None:
    wanted = runtime_data_files()
    assert "services/scaler/learning/default_policy.zip" in wanted
    assert "tideserve_learning/sim/profiles/default.json" in wanted
    with zipfile.ZipFile(wheel) as archive:
        shipped = set(archive.namelist())
    assert wanted - shipped == set(), f"{wheel.name} lacks these files"


def test_the_installed_wheel_runs_the_learned_policy_without_fallback(
    wheel: Path, tmp_path: Path
) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    new_site = Path(
        subprocess.run(
            [python, "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    # The dependencies (torch, stable-baselines3, ...) come from this interpreter's site
    # directories, reached by a plain path line: their editable-install hooks (.pth files) are
    # not run from there, so the source tree stays off the path.
    dependencies = [path for path in sys.path if path.endswith("site-packages")]
    dependencies += [site.getusersitepackages()]
    (new_site / "zz_dependencies.pth").write_text("\n".join(dependencies) + "\n")
    # --ignore-installed: pip would otherwise see the source tree's editable install through the
    # path line and try to uninstall it.
    subprocess.run(
        [
            python,
            "-I",
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--ignore-installed",
            "--no-index",
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
        cwd=tmp_path,
    )
    done = subprocess.run(
        [python, "-I", "-c", PROBE], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    for package in PACKAGES:
        assert Path(found[package]).is_relative_to(new_site), (package, found[package])
    assert Path(found["policy_file"]).is_relative_to(new_site)
    assert found["fallback_reason"] == ""
    assert found["learned"]
    assert found["profile_model"]
