"""One exception tree, grouped by what the caller should do about it.

- ``Retriable``: try again later (throttling, server faults, timeouts, cut connections).
- ``RecordRejected``: this record cannot sync as it is; park it as a sync error, keep going.
- ``StaleRecord``: the record changed on the other side since the last sync; read it
  again, settle the conflict, then send again.
- ``ObjectUnusable``: every record of one object fails (Dynamics has no such table); that
  object's error for the operator, the other objects go on.
- ``Fatal``: nothing will work until a person fixes configuration or credentials.
- ``Busy``: what was asked for is being done already (a job names it); wait for it, or
  cancel it and ask again.

The families are disjoint (none is a subclass of another), so a handler reads the family
of what it caught, whatever the order of its ``except`` clauses.
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


class Refusal(CrmsyncError):
    """An answer that refused something, with Dynamics' code and message verbatim (the
    code is often empty: compose-http-requests-handle-errors). Not a family itself."""

    def __init__(self, code: str, message: str, *, status: int | None = None):
        super().__init__(f"{code}: {message}" if code else message)
        self.code = code
        self.message = message
        self.status = status


class RecordRejected(Refusal):
    """Dynamics (or the local store) refused this one record; others are unaffected."""


class StaleRecord(Refusal):
    """The record is not as the request assumed (HTTP 412: its version changed since the
    last sync, or it is gone when ``If-Match: *`` asked for it to exist)."""


class ObjectUnusable(Refusal):
    """One object cannot be used at all (e.g. its entity set does not exist): every
    record of it would fail the same way; the other objects are unaffected."""


class Fatal(CrmsyncError):
    """Configuration or authentication that cannot be fixed by retrying."""


class Busy(CrmsyncError):
    """What was asked for is being done already: ``job_id`` is the job doing it (an
    audit of the same records, waiting or running). Asking again would do it twice."""

    def __init__(self, message: str, *, job_id: int):
        super().__init__(message)
        self.job_id = job_id


class ValidationFailed(CrmsyncError):
    """Input from a user or API client is invalid; ``field`` names what was wrong."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
