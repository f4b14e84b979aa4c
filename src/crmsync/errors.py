"""One exception tree, grouped by what the caller should do about it.

- ``Retriable``: try again later (throttling, server faults, timeouts, cut connections).
- ``RecordRejected``: this record cannot sync as it is; park it as a sync error, keep going.
- ``Fatal``: nothing will work until a person fixes configuration or credentials.
"""

from __future__ import annotations


class CrmsyncError(Exception):
    """Root of every error crmsync raises on purpose."""


class ConfigError(CrmsyncError):
    """A setting is missing or invalid; the message names every bad setting."""


class Retriable(CrmsyncError):
    """A transient fault: the same request may succeed later."""

    def __init__(
        self, message: str, *, retry_after: float | None = None, status: int | None = None
    ):
        super().__init__(message)
        self.retry_after = retry_after
        self.status = status


class RecordRejected(CrmsyncError):
    """Dynamics (or the local store) refused this one record; others are unaffected."""

    def __init__(self, code: str, message: str, *, status: int | None = None):
        super().__init__(f"{code}: {message}" if code else message)
        self.code = code
        self.message = message
        self.status = status


class Fatal(CrmsyncError):
    """Configuration or authentication that cannot be fixed by retrying."""


class ValidationFailed(CrmsyncError):
    """Input from a user or API client is invalid; ``field`` names what was wrong."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
