"""Domain errors. Logic code raises these; `tideserve.serving` maps them to gRPC status codes in
one place, so no class outside the server wiring needs to know about gRPC.

Failures that share a status code but call for different actions carry a `reason` too, sent
beside the status as the `tideserve-error-reason` trailer (`tideserve.metadata.REASON_KEY`), so
callers (the batcher deciding whether to try another balancer, a client deciding whether to
retry) act on the reason instead of matching message text."""

from __future__ import annotations


class TideserveError(Exception):
    """Base class; the name of the gRPC status code it maps to is `code`, and `reason`, when not
    empty, names the failure among those sharing that code."""

    code = "INTERNAL"
    reason = ""


class InvalidArgument(TideserveError):
    code = "INVALID_ARGUMENT"


class NotFound(TideserveError):
    code = "NOT_FOUND"


class VersionNotServed(NotFound):
    """The worker serves the model but not the version the batch named: it was retired (or
    unloaded) after the batcher's last cluster snapshot. A version the batcher picked itself (a
    canary split) may then go to the latest instead; one the client named may not."""

    reason = "version-not-served"


class ResourceExhausted(TideserveError):
    code = "RESOURCE_EXHAUSTED"


class DeadlineExceeded(TideserveError):
    code = "DEADLINE_EXCEEDED"
    reason = "deadline"


class Unavailable(TideserveError):
    code = "UNAVAILABLE"


class BatchLost(Unavailable):
    """The worker holding a batch died or stopped answering, and no other worker could take the
    batch over. The balancer was fine: trying another balancer would only repeat the batch."""

    reason = "worker-lost"


class NoReadyWorker(Unavailable):
    """No ready worker serves the model (none registered, or all draining or ejected) within the
    balancer's wait for one. Another balancer sees the same workers."""

    reason = "no-ready-worker"


class BalancerUnreachable(Unavailable):
    """No balancer answered: each one tried refused the connection or dropped the call. The
    batch never reached a worker."""

    reason = "balancer-unreachable"


class FailedPrecondition(TideserveError):
    code = "FAILED_PRECONDITION"


class Unauthenticated(TideserveError):
    code = "UNAUTHENTICATED"


class AlreadyExists(TideserveError):
    code = "ALREADY_EXISTS"


class Unimplemented(TideserveError):
    code = "UNIMPLEMENTED"


class PermissionDenied(TideserveError):
    code = "PERMISSION_DENIED"


def error_for_code(code: str, message: str, reason: str = "") -> TideserveError:
    """The domain error of status `code` (a name such as "NOT_FOUND") and `reason`: the class
    with both, else the plain class of that code (a reason this version does not know, or none),
    else TideserveError (INTERNAL) for a code no class maps. The one way back from a status, for
    a failed call (`tideserve.serving.error_from_rpc`) and for an error that crossed a service as
    a code and message inside a message."""
    classes = [cls for cls in _classes() if cls.code == code]
    plain = classes[0] if classes else TideserveError
    return next((cls for cls in classes if reason and cls.reason == reason), plain)(message)


def _classes() -> list[type[TideserveError]]:
    """Every error class, each parent before its subclasses."""
    found = [TideserveError]
    for cls in found:
        found.extend(cls.__subclasses__())
    return found
