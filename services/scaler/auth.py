"""Who may call the scaler's admin RPCs (scale, pause, set policy, drain): an operator holding
the bearer token, or a client whose mutual-TLS certificate names an allowed identity.

Plain logic with no gRPC in it; `tideserve.serving.RequireAuth` applies it to the ScalerAdmin
service only, so health and reflection stay open to probes and tools.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

logger = logging.getLogger(__name__)

AUTHORIZATION = "authorization"
BEARER = "bearer "


class AdminAuth:
    """With neither a token nor identities configured everything is allowed: the default scaler
    listens on loopback only, where the operator's own machine is the boundary."""

    def __init__(self, token: str = "", identities: Iterable[str] = ()) -> None:
        self.token = token.encode()
        self.identities = frozenset(identities)

    @classmethod
    def from_settings(cls, token: str, token_file: str, identities: Iterable[str]) -> AdminAuth:
        """The token comes from `token`, or from the first line of `token_file` (so it need not
        appear in a process listing or a compose file); setting both is refused as ambiguous."""
        if token and token_file:
            raise ValueError("set admin_token or admin_token_file, not both")
        if token_file:
            token = Path(token_file).read_text().strip()
            if not token:
                raise ValueError(f"admin_token_file {token_file!r} is empty")
        return cls(token, identities)

    @property
    def open(self) -> bool:
        return not self.token and not self.identities

    def allows(self, metadata: Mapping[str, str], identities: frozenset[str]) -> bool:
        if self.open:
            return True
        if self.identities & identities:
            return True
        header = metadata.get(AUTHORIZATION, "")
        if not self.token or header[: len(BEARER)].lower() != BEARER:
            return False
        # Constant-time comparison: response timing reveals nothing about the token.
        return hmac.compare_digest(header[len(BEARER) :].strip().encode(), self.token)
