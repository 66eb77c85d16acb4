"""`python -m tideserve.credentials DIR`, as compose's credentials step and the Swarm and
Kubernetes docs run it: a fresh owner-only token per role, which read_secret accepts."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

from tideserve.credentials import ROLES, read_secret, token_path


def test_the_entry_point_writes_an_owner_only_token_per_role(tmp_path: Path) -> None:
    directory = tmp_path / "credentials"
    done = subprocess.run(
        [sys.executable, "-m", "tideserve.credentials", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    tokens = {role: read_secret(token_path(directory, role)) for role in ROLES}
    assert len(set(tokens.values())) == len(ROLES)
    for role in ROLES:
        assert stat.S_IMODE(token_path(directory, role).stat().st_mode) == 0o600
        assert f"{role}: {token_path(directory, role)}" in done.stdout


def test_the_entry_point_needs_a_directory() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tideserve.credentials"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "DIR" in done.stderr
