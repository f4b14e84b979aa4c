"""What became of one write Dynamics answered: the push's outcome decision. No I/O.

``judge`` reads the answer to one ``Send`` and says what the queue does with its entry:

- ``Synced``: acknowledged (a delete of a record already gone from Dynamics too);
- ``Stale``: refused with 412 although an ETag was sent: the record changed in
  Dynamics since the last sync; it is pulled and the conflict settled before resending;
- ``Parked``: refused for this record (a data error, a privilege, a 412 against ``*``,
  i.e. the record is gone), or a transient fault that used up its attempts;
- ``Unusable``: the object cannot be written at all (Dynamics no longer matches the
  mapping): the entry waits, unchanged, while the object is paused;
- ``Retry``: a transient fault (throttling, 5xx, a timeout, a cut connection), tried
  again at ``at``, never sooner than the server's ``Retry-After``.

The answer's exception family decides, not the order of ``except`` clauses.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime

from crmsync.domain import Operation
from crmsync.dynamics.writes import ItemResult
from crmsync.engine import retry
from crmsync.engine.plan import Send
from crmsync.errors import ObjectUnusable, RecordRejected, StaleRecord


@dataclass(frozen=True)
class Synced:
    etag: str | None


@dataclass(frozen=True)
class Stale:
    pass


@dataclass(frozen=True)
class Parked:
    code: str
    message: str
    transient: bool = False  # a transient fault that used up its attempts in the backlog


@dataclass(frozen=True)
class Retry:
    code: str
    message: str
    at: datetime


@dataclass(frozen=True)
class Unusable:
    code: str
    message: str


Verdict = Synced | Stale | Parked | Unusable | Retry


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    base_seconds: float
    max_seconds: float


def judge(
    send: Send,
    result: ItemResult,
    now: datetime,
    policy: RetryPolicy,
    rnd: random.Random | None = None,
) -> Verdict:
    """The verdict on one answered write (see the module's docstring)."""
    err = result.error
    entry = send.entry
    if err is None:
        return Synced(result.etag)
    if isinstance(err, StaleRecord):
        if send.write.if_match not in (None, "*"):
            return Stale()  # changed in Dynamics since the ETag we last synced
        # Against ``*`` (or no ETag): the record is not there to update.
        return Parked(err.code or f"http_{err.status}", err.message)
    if isinstance(err, ObjectUnusable):
        return Unusable(err.code or f"http_{err.status}", err.message)
    if isinstance(err, RecordRejected):
        if entry.operation == Operation.DELETE and err.status == 404:
            return Synced(result.etag)  # nothing left to delete
        return Parked(err.code or f"http_{err.status}", err.message)
    attempts = entry.attempts + 1
    status = getattr(err, "status", None)
    code = f"http_{status}" if status else type(err).__name__
    if retry.exhausted(attempts, policy.max_attempts):
        return Parked(code, f"gave up after {attempts} attempts: {err}", transient=True)
    at = retry.next_attempt(
        now,
        attempts,
        policy.base_seconds,
        policy.max_seconds,
        getattr(err, "retry_after", None),
        rnd=rnd,
    )
    return Retry(code, str(err), at)
