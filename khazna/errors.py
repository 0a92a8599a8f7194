"""One exception per kind of failure; the API maps each to its HTTP status in one place."""

from __future__ import annotations

from typing import Any


class KhaznaError(Exception):
    """Base of every error the hub reports to a caller."""

    status = 500
    code = "internal"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class BadRequest(KhaznaError):
    status = 400
    code = "bad_request"


class InvalidName(BadRequest):
    code = "invalid_name"


class Unauthorized(KhaznaError):
    status = 401
    code = "unauthorized"


class Forbidden(KhaznaError):
    status = 403
    code = "forbidden"


class ResidencyRefused(Forbidden):
    """The dataset's bytes must stay in a jurisdiction the hub's storage is not in."""

    code = "residency"


class NotFound(KhaznaError):
    status = 404
    code = "not_found"


class RequestTimeout(KhaznaError):
    status = 408
    code = "request_timeout"


class Conflict(KhaznaError):
    status = 409
    code = "conflict"


class TooLarge(KhaznaError):
    status = 413
    code = "too_large"


class RangeNotSatisfiable(KhaznaError):
    status = 416
    code = "range_not_satisfiable"


class Unprocessable(KhaznaError):
    status = 422
    code = "unprocessable"


class OverQuota(KhaznaError):
    """A rate limit or a download volume is used up; ``retry_after`` says for how long."""

    status = 429
    code = "over_quota"
    # Set on the first refusal of a caller's window: it goes to the audit log, carrying
    # this many refusals of earlier windows that did not (None: not logged).
    log_unlogged: int | None = None


class StorageFailure(KhaznaError):
    """The hub could not store bytes (disk full, I/O error): not the client's fault."""

    status = 507
    code = "storage_failure"


class AuditFailure(KhaznaError):
    """The audit entry of a change could not be written, so the change was not made."""

    status = 500
    code = "audit_failure"
