"""The domain's errors: what went wrong, in the service's own terms.

Raised by every layer (schema, store, fan-out, web views). None of them knows
HTTP: `sluice.web.errors` maps each class to a status code and the contract's
error body in one table; the command line prints them as one line.
"""

from __future__ import annotations

from typing import Any


class SluiceError(Exception):
    """Base of the domain's errors: a message for a person and per-field details."""

    def __init__(
        self,
        message: str,
        details: dict[str, Any] | None = None,
        *,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}
        #: Seconds after which trying again may succeed (None: do not retry as is).
        self.retry_after = retry_after

    def __str__(self) -> str:
        if not self.details:
            return self.message
        return self.message + " (" + "; ".join(f"{k}: {v}" for k, v in self.details.items()) + ")"


class Invalid(SluiceError):
    """The input breaks the contract (a field, a parameter, a body)."""


class Unauthorized(SluiceError):
    """No credentials, or wrong ones."""


class Forbidden(SluiceError):
    """Credentials are fine, the request is not allowed (e.g. a cross-site write)."""


class NotFound(SluiceError):
    """It does not exist, or it is not yours (never told apart)."""


class Conflict(SluiceError):
    """It clashes with what exists (an email taken, a limit of things reached)."""


class TooLarge(SluiceError):
    """The request body is larger than allowed."""


class TooSlow(SluiceError):
    """The request body did not arrive in time."""


class TooMany(SluiceError):
    """A limit on open things or on a rate is reached; retry after `retry_after`."""


class Unavailable(SluiceError):
    """The service cannot do it now (restarting, store down); retry after `retry_after`."""


#: Seconds a client should wait after the store failed, and what it is told.
STORE_RETRY_AFTER = 2
STORE_UNAVAILABLE = "The event store is unavailable; retry shortly"


class StoreUnavailable(Unavailable):
    """The event store (Redis) could not do what was asked: unreachable, timed out,
    read-only, full. `sluice.store` raises it where callers outside the store must
    tell a store failure from their own (the fan-out)."""

    def __init__(self, reason: str = "", message: str = STORE_UNAVAILABLE) -> None:
        super().__init__(message, retry_after=STORE_RETRY_AFTER)
        #: What the store said, for the log (never sent to clients).
        self.reason = reason

    def __str__(self) -> str:
        return self.reason or self.message


class StoreRefused(StoreUnavailable):
    """The store refused one command because of one key (a wrong type, a bad id)."""
