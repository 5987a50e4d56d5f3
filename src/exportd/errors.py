"""Errors that carry an `error_code`, a human `error_msg` and the HTTP status they map to."""

from __future__ import annotations


class ExportdError(Exception):
    """Base error: every failure the API reports has a code and a message."""

    status_code = 500
    error_code = "INTERNAL_ERROR"

    def __init__(self, error_msg: str, error_code: str | None = None) -> None:
        super().__init__(error_msg)
        self.error_msg = error_msg
        if error_code is not None:
            self.error_code = error_code


class BadRequest(ExportdError):
    status_code = 400
    error_code = "INVALID_REQUEST"


class Unauthorized(ExportdError):
    status_code = 401
    error_code = "UNAUTHORIZED"


class Forbidden(ExportdError):
    status_code = 403
    error_code = "FORBIDDEN"


class NotFound(ExportdError):
    status_code = 404
    error_code = "NOT_FOUND"


class Conflict(ExportdError):
    status_code = 409
    error_code = "CONFLICT"


class PayloadTooLarge(ExportdError):
    status_code = 413
    error_code = "PAYLOAD_TOO_LARGE"


class Unavailable(ExportdError):
    """A service exportd depends on (the store, the storage, a source) cannot be reached
    now; the caller may try again later (503 with Retry-After in the API)."""

    status_code = 503
    error_code = "UNAVAILABLE"
    retry_after = 5


class StoreUnavailable(Unavailable):
    """The store (SQLite file or PostgreSQL) cannot be reached, even after riding the
    outage out for as long as the caller allows (not at all for API requests)."""

    error_code = "STORE_UNAVAILABLE"


class LeaseLost(Exception):
    """The worker no longer holds the lease: it must stop and commit nothing."""


class Canceled(Exception):
    """The task was canceled, timed out or ended while a worker was on it."""


class SourceError(Exception):
    """Reading the dataset failed; `error_code` names the kind of failure. `transient`:
    the source could not be reached (the same read may succeed later), as opposed to a
    failure of the read itself."""

    def __init__(
        self, error_msg: str, error_code: str = "SOURCE_ERROR", *, transient: bool = False
    ) -> None:
        super().__init__(error_msg)
        self.error_msg = error_msg
        self.error_code = error_code
        self.transient = transient


def first_line(exc: BaseException) -> str:
    """A driver's message, first line only (never the statement or its parameters that
    some drivers append), at most 300 characters; the exception's type when it is empty."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
