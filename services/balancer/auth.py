"""Who may call which balancer RPC. Every process on the internal plane proves a role, with its
role's bearer token or with a mutual-TLS certificate that names the role, and each RPC admits
only the roles whose job needs it: a worker's heartbeat decides where clients' inputs go, a
batcher's Dispatch reads results back, and drain or routing changes steer the whole cluster.

Plain logic with no gRPC in it; `tideserve.serving.RoleGuard` applies it to the Balancer service,
so health and reflection stay open to probes and tools.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

from tideserve.credentials import ROLES, presented_token, read_secret, token_path
from tideserve.errors import PermissionDenied, Unauthenticated

logger = logging.getLogger(__name__)

# The roles each Balancer method admits. A method missing here admits no one (fail closed).
METHOD_ROLES: dict[str, frozenset[str]] = {
    "Heartbeat": frozenset({"worker"}),
    "Dispatch": frozenset({"batcher"}),
    "ReportFrontend": frozenset({"batcher"}),
    "WatchCluster": frozenset({"batcher", "scaler", "operator"}),
    "ListModels": frozenset({"batcher", "scaler", "operator"}),
    "DrainWorker": frozenset({"scaler", "operator"}),
    "SetRoutingPolicy": frozenset({"scaler", "operator"}),
    # The batcher relays its clients' Triton load/unload calls; operators may call it directly.
    "ControlModel": frozenset({"batcher", "operator"}),
    # Moving a canary's traffic is an operator's decision alone.
    "SetCanaryWeights": frozenset({"operator"}),
}


class BalancerAuth:
    """Roles from bearer tokens (`tokens`: role -> token) and from verified certificate names;
    `check` answers which role a call holds or raises Unauthenticated / PermissionDenied.

    `allow_all` (no tokens, no mutual TLS) admits every call: only the explicit development flag
    `--allow-unauthenticated` builds one."""

    def __init__(
        self,
        tokens: Mapping[str, str] | None = None,
        *,
        mutual_tls: bool = False,
        allow_all: bool = False,
    ) -> None:
        tokens = dict(tokens or {})
        unknown = set(tokens) - set(ROLES)
        if unknown:
            raise ValueError(f"unknown roles {sorted(unknown)}; roles are {', '.join(ROLES)}")
        if not (tokens or mutual_tls or allow_all):
            raise ValueError("BalancerAuth needs tokens, mutual TLS or allow_all=True")
        self.tokens = {role: token.encode() for role, token in tokens.items() if token}
        self.mutual_tls = mutual_tls
        self.allow_all = allow_all

    @classmethod
    def from_settings(
        cls, credentials_dir: str, mutual_tls: bool, allow_unauthenticated: bool
    ) -> BalancerAuth:
        """The balancer's authenticator, or ValueError saying how to configure one: a balancer
        that anyone on its network could feed forged workers to must be asked for explicitly."""
        if credentials_dir:
            directory = Path(credentials_dir)
            tokens = {
                role: read_secret(token_path(directory, role), f"{role} token file")
                for role in ROLES
            }
            return cls(tokens, mutual_tls=mutual_tls)
        if mutual_tls:
            return cls(mutual_tls=True)
        if allow_unauthenticated:
            logger.warning(
                "the balancer accepts every caller (--allow-unauthenticated): any process that "
                "reaches its port can register workers, read batches and drain workers"
            )
            return cls(allow_all=True)
        raise ValueError(
            "the balancer needs credentials: --credentials-dir DIR holding worker.token, "
            "batcher.token, scaler.token and operator.token (`tideserve up` creates them), or "
            "mutual TLS (--tls-ca with certificates naming each role); --allow-unauthenticated "
            "runs without, for development only"
        )

    def roles(self, metadata: Mapping[str, str], identities: Iterable[str]) -> frozenset[str]:
        """The roles a call proves: those its certificate names (under mutual TLS) and the one
        whose token it presents. Every token is compared, in constant time each, so the answer's
        timing tells nothing about which token came close."""
        held = set(ROLES).intersection(identities) if self.mutual_tls else set()
        presented = presented_token(metadata)
        if presented:
            for role, token in self.tokens.items():
                if hmac.compare_digest(presented, token):
                    held.add(role)
        return frozenset(held)

    def check(
        self, method: str, metadata: Mapping[str, str], identities: Iterable[str]
    ) -> frozenset[str]:
        """The roles the call holds, if one of them may call `method`; else Unauthenticated (no
        valid credential at all) or PermissionDenied (valid, but for a role without `method`)."""
        if self.allow_all:
            return frozenset(ROLES)
        allowed = METHOD_ROLES.get(method, frozenset())
        held = self.roles(metadata, identities)
        if not held:
            raise Unauthenticated(
                f"Balancer/{method} needs credentials: send 'authorization: Bearer <token>' "
                f"metadata with the {' or '.join(sorted(allowed)) or 'right'} role's token (from "
                "the balancer's --credentials-dir), or a client certificate naming the role"
            )
        if not held & allowed:
            raise PermissionDenied(
                f"the {'/'.join(sorted(held))} role may not call Balancer/{method}; it is for "
                f"{', '.join(sorted(allowed)) or 'no role'}"
            )
        return held
