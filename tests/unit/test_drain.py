"""The time-to-drain estimator: recent weighted rate per direction, pauses, no rate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from crmsync.store import drain

NOW = datetime(2026, 11, 25, 13, 5, tzinfo=UTC)  # 5 minutes into the 13:00 bucket
M = timedelta(minutes=1)


def test_a_steady_rate_is_read_back() -> None:
    # One record a second for the last hour, the current bucket included.
    buckets = [
        (datetime(2026, 11, 25, h, m, tzinfo=UTC), 900) for h in (12,) for m in (0, 15, 30, 45)
    ]
    buckets.append((datetime(2026, 11, 25, 13, 0, tzinfo=UTC), 300))
    assert drain.recent_rate(buckets, NOW) == pytest.approx(1.0)


def test_the_last_minutes_weigh_more_than_the_hour() -> None:
    # A trickle (0.1/s) before 13:00, then a drain at 10/s for the last 5 minutes: the
    # last hour's average would say 0.9/s and a backlog of 752 "14 min".
    buckets = [(datetime(2026, 11, 25, 12, m, tzinfo=UTC), 90) for m in (0, 15, 30, 45)]
    buckets.append((datetime(2026, 11, 25, 13, 0, tzinfo=UTC), 3000))
    rate = drain.recent_rate(buckets, NOW)
    assert rate is not None and rate > 5
    hour_rate = sum(n for _, n in buckets) / 3600
    assert hour_rate < 1
    est = drain.estimate({"to_crm": 752}, {"to_crm": rate})
    assert est.state == drain.ESTIMATE and est.seconds is not None and est.seconds < 160


def test_quiet_time_in_the_window_counts_as_zero() -> None:
    # 900 records in 12:30-12:45, nothing since: a lower rate than while it lasted
    # (1/s), and lower again ten minutes later.
    buckets = [(datetime(2026, 11, 25, 12, 30, tzinfo=UTC), 900)]
    now = datetime(2026, 11, 25, 12, 50, tzinfo=UTC)
    first = drain.recent_rate(buckets, now)
    later = drain.recent_rate(buckets, now + 10 * M)
    assert first is not None and later is not None
    assert 0 < later < first < 1


def test_no_rate_outside_the_window_or_in_an_empty_bucket() -> None:
    old = [(datetime(2026, 11, 25, 12, 15, tzinfo=UTC), 5000)]  # ended 12:30, 35 min ago
    assert drain.recent_rate(old, NOW) is None
    assert drain.recent_rate([], NOW) is None
    # The current bucket just started (no time elapsed): nothing to divide by.
    assert drain.recent_rate([(NOW, 10)], NOW) is None


def test_each_direction_drains_on_its_own_and_the_slower_one_decides() -> None:
    est = drain.estimate({"to_crm": 100, "from_crm": 600}, {"to_crm": 10.0, "from_crm": 2.0})
    assert est == drain.Drain(drain.ESTIMATE, 300)
    # A direction with nothing waiting needs no rate.
    est = drain.estimate({"to_crm": 100, "from_crm": 0}, {"to_crm": 10.0, "from_crm": None})
    assert est == drain.Drain(drain.ESTIMATE, 10)


def test_paused_empty_and_no_rate() -> None:
    assert drain.estimate({}, {}) == drain.Drain(drain.EMPTY, 0)
    assert drain.estimate({"to_crm": 0}, {"to_crm": None}) == drain.Drain(drain.EMPTY, 0)
    paused = drain.estimate({"to_crm": 5}, {"to_crm": 10.0}, ["to_crm"])
    assert paused == drain.Drain(drain.PAUSED, None)
    # Paused in a direction with nothing waiting: the other one still drains.
    other = drain.estimate({"to_crm": 5}, {"to_crm": 1.0}, ["from_crm"])
    assert other == drain.Drain(drain.ESTIMATE, 5)
    none = drain.estimate({"to_crm": 5, "from_crm": 5}, {"to_crm": 1.0, "from_crm": None})
    assert none == drain.Drain(drain.NO_RATE, None)
