"""Retries that need no person: when a parked error of a passing kind is tried again.

A failure whose cause passes by itself (``diagnosis.PASSING``: throttled, unavailable,
a missing privilege or a missing reference the other side may still fix) is parked
with a time to retry: ``first_seconds`` after its first park, doubling with each park
after, capped at ``cap_seconds``, for as long as the change has waited less than
``horizon_seconds``. Past the horizon, or for a data error, it waits for the record to
change or for a person, as before. Nothing is purged: the error stays open either way.

Pure: the engine calls ``next_retry`` as it records a park; the store keeps the time
(``sync_error.retry_at``) and the upkeep requeues what is due (``sync_errors.retry_due``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from crmsync import diagnosis
from crmsync.domain import ErrorCategory, ObjectSpec
from crmsync.values import Entry, Failed

if TYPE_CHECKING:
    from crmsync.config import Settings


@dataclass(frozen=True)
class AutoRetryPolicy:
    first_seconds: float = 60.0
    cap_seconds: float = 6 * 3600.0
    horizon_seconds: float = 7 * 86400.0


def passing(category: ErrorCategory | str) -> bool:
    """Whether failures of ``category`` are retried automatically."""
    return category in diagnosis.PASSING


def next_retry(
    category: ErrorCategory | str,
    parks: int,
    since: datetime,
    now: datetime,
    policy: AutoRetryPolicy,
) -> datetime | None:
    """When to retry a failure parked now for the ``parks``-th time (1: its first park)
    whose change has waited since ``since``; None: no automatic retry (a data error, or
    the horizon reached). Never later than the horizon itself."""
    if not passing(category) or policy.horizon_seconds <= 0:
        return None
    horizon = since + timedelta(seconds=policy.horizon_seconds)
    if now >= horizon:
        return None
    delay = min(policy.cap_seconds, policy.first_seconds * 2.0 ** max(0, min(parks, 64) - 1))
    return min(now + timedelta(seconds=delay), horizon)


def parks_of(failures: int, free_tries: int) -> int:
    """How many times an entry has been parked at its ``failures``-th failure, when its
    first ``free_tries`` failures were retried in the backlog (transient faults, see
    ``verdict``) rather than parked."""
    return max(1, failures - free_tries)


def parked(
    entry: Entry,
    code: str,
    message: str,
    specs: Mapping[str, ObjectSpec],
    now: datetime,
    policy: AutoRetryPolicy,
    *,
    field: str | None = None,
    free_tries: int = 0,
) -> Failed:
    """The ``Failed`` that parks ``entry``: with the local column concerned (``field``,
    else the one the message names) and, for a passing kind, when it is retried."""
    category = diagnosis.category_of(code, message)
    parks = parks_of(entry.attempts + 1, free_tries)
    return Failed(
        entry,
        code,
        message,
        field=field or diagnosis.field_of(entry.object, code, message, specs),
        auto_retry_at=next_retry(category, parks, entry.first_queued_at, now, policy),
    )


def policy_of(settings: Settings) -> AutoRetryPolicy:
    return AutoRetryPolicy(
        first_seconds=settings.auto_retry_first_seconds,
        cap_seconds=settings.auto_retry_max_seconds,
        horizon_seconds=settings.auto_retry_horizon_days * 86400.0,
    )
