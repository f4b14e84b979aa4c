"""The time-to-drain estimator: the recent weighted rate per direction measured from the
first sync, the first batch left out, pauses and no rate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from crmsync.store import drain

NOW = datetime(2026, 11, 25, 13, 5, 30, tzinfo=UTC)
S = timedelta(seconds=1)
M = timedelta(minutes=1)


Phase = tuple[datetime, datetime, int, timedelta]


def batches(first: datetime, last: datetime, size: int, every: timedelta) -> list[drain.Minute]:
    """The ``sync_rate`` rows of batches of ``size`` records finished every ``every`` from
    ``first`` to ``last``, as ``store.queue`` writes them."""
    return phases((first, last, size, every))


def phases(*spans: Phase) -> list[drain.Minute]:
    """``batches`` of several spans one after the other, in the same rows."""
    rows: dict[datetime, drain.Minute] = {}
    for first, last, size, every in spans:
        at = first
        while at <= last:
            start = at.replace(second=0, microsecond=0)
            m = rows.get(start)
            rows[start] = (
                drain.Minute(start, size, at, at, size)
                if m is None
                else drain.Minute(start, m.synced + size, m.first_synced_at, at, m.first_batch)
            )
            at += every
    return list(rows.values())


def test_a_steady_rate_is_read_back() -> None:
    # 100 records a second for the last ten minutes, of which the window sees five.
    rows = batches(NOW - 10 * M, NOW, 100, S)
    assert drain.recent_rate(rows, NOW) == pytest.approx(100, rel=0.01)
    # The same in batches of 1000 every 10 s (between two batches, a little less).
    rows = batches(NOW - 10 * M, NOW - 5 * S, 1000, 10 * S)
    assert drain.recent_rate(rows, NOW) == pytest.approx(100, rel=0.05)


def test_idle_time_before_the_drain_started_is_not_counted() -> None:
    # The burst of the issue: 752 waiting, a drain at ~75 records/s started 3 s ago
    # after hours of nothing. Over the whole window it would be 225/300 s: 0.75/s and
    # "17 min"; from its first sync, ~75/s and about 8 s for the 527 left.
    rows = batches(NOW - 3 * S, NOW, 75, S)
    rate = drain.recent_rate(rows, NOW)
    assert rate == pytest.approx(75, rel=0.05)
    est = drain.estimate({"to_crm": 527}, {"to_crm": rate})
    assert est.state == drain.ESTIMATE and est.seconds is not None and 6 <= est.seconds <= 9


def test_the_first_batch_is_left_out() -> None:
    # Batches of 100 at 0, 1 and 2 s: 200 records in the 2 s after the first sync (its
    # own records were sent before it), and nothing in the half second since.
    first = NOW - 2.5 * S
    rate = drain.recent_rate(batches(first, first + 2 * S, 100, S), NOW)
    assert rate is not None and 70 < rate <= 100
    # One batch alone says nothing about the pace; nor do batches that finished together
    # a moment ago (the workers' concurrency, not their pace).
    assert drain.recent_rate(batches(NOW - 30 * S, NOW - 30 * S, 100, S), NOW) is None
    assert drain.recent_rate(batches(NOW - S, NOW, 100, S / 10), NOW) is None


def test_the_last_minutes_weigh_more() -> None:
    # 10/s for three minutes, then 100/s for the last two: the window's plain average is
    # 46/s; weighted towards the last minutes, above it and nearer 100.
    rows = phases((NOW - 5 * M, NOW - 2 * M, 10, S), (NOW - 2 * M + S, NOW, 100, S))
    rate = drain.recent_rate(rows, NOW)
    assert rate is not None and 70 < rate < 100
    # And the other way round: a drain slowing down reads below the plain average.
    rows = phases((NOW - 5 * M, NOW - 2 * M, 100, S), (NOW - 2 * M + S, NOW, 10, S))
    rate = drain.recent_rate(rows, NOW)
    assert rate is not None and 10 < rate < 46


def test_quiet_time_after_the_first_sync_counts_as_zero() -> None:
    # 100/s for a minute, then nothing: the rate fades, and is gone once the window
    # holds none of it.
    rows = batches(NOW - 3 * M, NOW - 2 * M, 100, S)
    soon, later = drain.recent_rate(rows, NOW), drain.recent_rate(rows, NOW + M)
    assert soon is not None and later is not None
    assert 0 < later < soon < 50
    assert drain.recent_rate(rows, NOW + 4 * M) is None
    assert drain.recent_rate([], NOW) is None
    # Minutes after ``now`` (an ``at`` in the past) are not seen.
    assert drain.recent_rate(batches(NOW + S, NOW + M, 100, S), NOW) is None


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
