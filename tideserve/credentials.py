"""Secrets on disk: the per-role tokens of the internal plane and the files that hold keys.

A secret file must be a regular file readable by its owner alone, as ssh asks of its keys: a
token or private key that group or others can read is refused at start, with the command that
fixes it, instead of being used silently. `create_credentials` writes a fresh random token per
role, so a suite started by `tideserve up` (or compose's credentials step) is protected without
any setting.
"""

from __future__ import annotations

import argparse
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path

# Where `tideserve up` writes a run's tokens by default; operator tools look there first.
DEFAULT_DIRECTORY = Path(".tideserve/credentials")

# Who may call what on the internal plane: workers heartbeat, batchers dispatch and watch, the
# scaler (and an operator) drain workers and change routing, operators steer the scaler.
ROLES = ("worker", "batcher", "scaler", "operator")


class SecretRefused(ValueError):
    """A secret file that must not be used as it is; the message names the file and the fix.
    A service meeting one at start exits with that message (`tideserve.serving.run_service`)."""


# Where a caller's token travels: `authorization: Bearer <token>` request metadata.
AUTHORIZATION = "authorization"
BEARER = "bearer "


def presented_token(metadata: Mapping[str, str]) -> bytes:
    """The bearer token in a call's request metadata, b"" when it carries none, as bytes ready
    for `hmac.compare_digest` (the scheme's name is case-insensitive, as in HTTP)."""
    header = metadata.get(AUTHORIZATION, "")
    if header[: len(BEARER)].lower() != BEARER:
        return b""
    return header[len(BEARER) :].strip().encode()


def token_path(directory: str | Path, role: str) -> Path:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
    return Path(directory) / f"{role}.token"


def check_private(path: str | Path, what: str = "secret file") -> None:
    """Refuse a secret that is not a regular file or that group or others may read."""
    try:
        info = os.stat(path)
    except OSError as error:
        raise SecretRefused(f"{what} {str(path)!r} cannot be read: {error.strerror}") from error
    if not stat.S_ISREG(info.st_mode):
        raise SecretRefused(f"{what} {str(path)!r} is not a regular file")
    if info.st_mode & 0o077:
        raise SecretRefused(
            f"{what} {str(path)!r} is readable by group or others (mode "
            f"{stat.S_IMODE(info.st_mode):04o}); run `chmod 600 {path}`"
        )


def read_secret(path: str | Path, what: str = "token file") -> str:
    """The first line of a private secret file; empty files are refused."""
    check_private(path, what)
    lines = Path(path).read_text().strip().splitlines()
    if not lines or not lines[0].strip():
        raise SecretRefused(f"{what} {str(path)!r} is empty")
    return lines[0].strip()


def read_token_file(path: str, setting: str = "balancer_token_file") -> str:
    """The token a setting names, or "" when the setting is empty (no token to send)."""
    return read_secret(path, setting) if path else ""


OPERATOR_TOKEN_HELP = (
    "the balancer's operator token file (default: .tideserve/credentials/operator.token, "
    "which `tideserve up` writes, when present)"
)


def operator_token_file(given: str | None) -> str:
    """The operator token file a tool uses: `given` if set ("" for none), else the one
    `tideserve up` wrote in this directory, when there is one."""
    if given is not None:
        return given
    default = token_path(DEFAULT_DIRECTORY, "operator")
    return str(default) if default.exists() else ""


def write_secret(path: str | Path, value: str) -> Path:
    """Write `value` to `path`, owner-only from the first byte (no window with a wider mode)."""
    path = Path(path)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return path


def create_credentials(directory: str | Path) -> dict[str, Path]:
    """A fresh random token for every role in `directory` (made owner-only); returns each role's
    token file. Called once per run, so tokens from an earlier run stop working."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    return {
        role: write_secret(token_path(directory, role), secrets.token_urlsafe(32))
        for role in ROLES
    }


def main(argv: list[str] | None = None) -> None:
    """`python -m tideserve.credentials DIR`: a fresh token per role in DIR. Compose's one-shot
    credentials service runs it before the services that read the tokens start."""
    parser = argparse.ArgumentParser(
        prog="python -m tideserve.credentials",
        description=f"Write a fresh owner-only token file per role ({', '.join(ROLES)}) in DIR.",
    )
    parser.add_argument("directory", metavar="DIR")
    args = parser.parse_args(argv)
    for role, path in create_credentials(args.directory).items():
        print(f"{role}: {path}")


if __name__ == "__main__":
    main()
