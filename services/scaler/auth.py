"""Who may call the scaler's admin RPCs (scale, pause, set policy, drain): an operator holding
the bearer token, or a client whose mutual-TLS certificate names an allowed identity.

Plain logic with no gRPC in it; `tideserve.serving.RoleGuard` applies it to the ScalerAdmin
service only, so health and reflection stay open to probes and tools.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterable, Mapping

from tideserve.credentials import presented_token, read_secret
from tideserve.errors import Unauthenticated

logger = logging.getLogger(__name__)


class AdminAuth:
    """With neither a token nor identities configured everything is allowed: the default scaler
    listens on loopback only, where the operator's own machine is the boundary."""

    def __init__(self, token: str = "", identities: Iterable[str] = ()) -> None:
        self.token = token.encode()
        self.identities = frozenset(identities)

    @classmethod
    def from_settings(cls, token_file: str, identities: Iterable[str]) -> AdminAuth:
        """The token is the first line of `token_file`, never a value in the environment or on
        the command line, where every child process and process listing would see it. A file
        that group or others can read is refused, as ssh refuses such a key."""
        token = read_secret(token_file, "admin_token_file") if token_file else ""
        return cls(token, identities)

    @property
    def open(self) -> bool:
        return not self.token and not self.identities

    def allows(self, metadata: Mapping[str, str], identities: frozenset[str]) -> bool:
        if self.open:
            return True
        if self.identities & identities:
            return True
        presented = presented_token(metadata)
        if not self.token or not presented:
            return False
        # Constant-time comparison: response timing reveals nothing about the token.
        return hmac.compare_digest(presented, self.token)

    def check(self, method: str, metadata: Mapping[str, str], identities: Iterable[str]) -> None:
        """Every admin method needs the same credential: raise Unauthenticated without it."""
        if not self.allows(metadata, frozenset(identities)):
            raise Unauthenticated(
                "admin RPCs need 'authorization: Bearer <token>' metadata or an allowed "
                "client certificate"
            )
