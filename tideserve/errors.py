"""Domain errors. Logic code raises these; `tideserve.serving` maps them to gRPC status codes in
one place, so no class outside the server wiring needs to know about gRPC."""

from __future__ import annotations


class TideserveError(Exception):
    """Base class; the name of the gRPC status code it maps to is `code`."""

    code = "INTERNAL"


class InvalidArgument(TideserveError):
    code = "INVALID_ARGUMENT"


class NotFound(TideserveError):
    code = "NOT_FOUND"


class ResourceExhausted(TideserveError):
    code = "RESOURCE_EXHAUSTED"


class DeadlineExceeded(TideserveError):
    code = "DEADLINE_EXCEEDED"


class Unavailable(TideserveError):
    code = "UNAVAILABLE"


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
