"""The automatic retry decision: which kinds, how soon, until when. Pure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from crmsync.domain import Direction, ErrorCategory, Operation
from crmsync.engine import auto_retry
from crmsync.engine.auto_retry import AutoRetryPolicy, next_retry, parks_of
from crmsync.mapping.build import default_objects
from crmsync.values import Entry

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
POLICY = AutoRetryPolicy(first_seconds=60, cap_seconds=3600, horizon_seconds=7 * 86400)


@pytest.mark.parametrize("category", list(ErrorCategory))
def test_only_passing_kinds_are_retried(category) -> None:
    at = next_retry(category, 1, NOW, NOW, POLICY)
    passing = category in {"throttled", "unavailable", "permission", "missing_reference"}
    assert (at == NOW + timedelta(minutes=1)) if passing else at is None


def test_delay_doubles_with_each_park_up_to_the_cap() -> None:
    delays = [
        (next_retry("throttled", n, NOW, NOW, POLICY) - NOW).total_seconds() for n in range(1, 10)
    ]
    assert delays == [60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]
    huge = next_retry("throttled", 10_000, NOW, NOW, POLICY)
    assert huge == NOW + timedelta(hours=1)


def test_horizon_ends_retries_and_caps_the_last_one() -> None:
    since = NOW - timedelta(days=7)
    assert next_retry("unavailable", 1, since, NOW, POLICY) is None
    almost = NOW - timedelta(days=7) + timedelta(seconds=30)
    assert next_retry("unavailable", 5, almost, NOW, POLICY) == almost + timedelta(days=7)
    off = AutoRetryPolicy(horizon_seconds=0)
    assert next_retry("unavailable", 1, NOW, NOW, off) is None


def test_parks_count_after_the_free_tries() -> None:
    assert parks_of(1, 0) == 1 and parks_of(3, 0) == 3
    assert parks_of(8, 7) == 1 and parks_of(9, 7) == 2
    assert parks_of(2, 7) == 1  # never below one


def entry(attempts: int = 0, queued: datetime = NOW) -> Entry:
    return Entry(
        1, "contact", Direction.FROM_CRM, "k", 3, None, Operation.INSERT, None, None, 1,
        attempts, queued,
    )  # fmt: skip


def test_parked_names_field_category_time() -> None:
    message = "account_id refers to account 1b2c, which is not in the local account table"
    failed = auto_retry.parked(
        entry(), "crmsync.missing_parent", message, default_objects(), NOW, POLICY
    )
    assert failed.field == "account_id" and failed.retry_at is None
    assert failed.auto_retry_at == NOW + timedelta(minutes=1)
    data = auto_retry.parked(
        entry(), "crmsync.invalid_value", "lead 1: email: bad", default_objects(), NOW, POLICY,
        field="email",
    )  # fmt: skip
    assert data.field == "email" and data.auto_retry_at is None
    # A transient fault parked after its free tries starts at the first delay.
    late = auto_retry.parked(
        entry(attempts=7), "http_503", "gave up", default_objects(), NOW, POLICY, free_tries=7
    )
    assert late.auto_retry_at == NOW + timedelta(minutes=1)
