"""Typed settings from defaults < TOML file < environment < command-line flags.

Each service declares one frozen dataclass; `load_settings` fills it. A field `max_batch_size`
is read from the file key `max_batch_size`, the variable `<PREFIX>MAX_BATCH_SIZE` and the flag
`--max-batch-size`. Nothing is read at import time.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tomllib
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

S = TypeVar("S")


@dataclass(frozen=True)
class TlsFields:
    """TLS settings every service shares; a service's settings class inherits them, so each gets
    the same flags (`--tls-cert`...) and variables (`<PREFIX>TLS_CERT`...).
    `tideserve.serving.TlsSettings.of(settings)` turns them into credentials; see there for what
    each combination means. Paths to PEM files; empty = plaintext (the loopback default)."""

    # This process's certificate chain and private key: its server identity and client identity.
    tls_cert: str = ""
    tls_key: str = ""
    # CA bundle that peers must be signed by; set, it makes every server require client certs.
    tls_ca: str = ""


def _parse(kind: Any, raw: Any, name: str) -> Any:
    if not isinstance(raw, str):
        return tuple(raw) if typing.get_origin(kind) is tuple else raw
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"setting {name}: expected a boolean, got {raw!r}")
    if typing.get_origin(kind) is tuple:
        return tuple(item.strip() for item in raw.split(",") if item.strip())
    if kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            raise ValueError(f"setting {name}: expected {kind.__name__}, got {raw!r}") from None
    return raw


def load_settings(
    cls: type[S],
    argv: Sequence[str] | None,
    *,
    env_prefix: str,
    description: str,
    environ: Mapping[str, str] | None = None,
) -> S:
    """Build `cls` from its defaults, an optional `--config FILE.toml`, environment and flags."""
    environ = os.environ if environ is None else environ
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--config", type=Path, help="TOML file of settings (flag names, underscored)"
    )
    for field in fields:
        default = field.default if field.default is not dataclasses.MISSING else None
        # A boolean flag given alone (`--allow-unauthenticated`) means true.
        switch = {"nargs": "?", "const": "true"} if hints[field.name] is bool else {}
        parser.add_argument(
            f"--{field.name.replace('_', '-')}",
            dest=field.name,
            default=None,
            help=f"(env {env_prefix}{field.name.upper()}; default {default!r})",
            **switch,
        )
    args = parser.parse_args(argv)
    values: dict[str, Any] = {}
    if args.config is not None:
        with args.config.open("rb") as handle:
            from_file = tomllib.load(handle)
        unknown = set(from_file) - {f.name for f in fields}
        if unknown:
            raise ValueError(f"{args.config}: unknown settings {sorted(unknown)}")
        values.update(from_file)
    for field in fields:
        env_value = environ.get(f"{env_prefix}{field.name.upper()}")
        if env_value is not None:
            values[field.name] = env_value
        flag_value = getattr(args, field.name)
        if flag_value is not None:
            values[field.name] = flag_value
    parsed = {name: _parse(hints[name], raw, name) for name, raw in values.items()}
    return cls(**parsed)
