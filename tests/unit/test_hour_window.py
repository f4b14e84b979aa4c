"""The last complete clock hour before a moment, in zones with odd offsets and DST."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crmsync.store.status import hour_window, hourly_windows


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


@pytest.mark.parametrize(
    ("zone", "at", "start", "end"),
    [
        ("UTC", "2026-11-25T13:20:00Z", "2026-11-25T12:00:00Z", "2026-11-25T13:00:00Z"),
        # Exactly on the hour: the hour that just ended.
        ("UTC", "2026-11-25T13:00:00Z", "2026-11-25T12:00:00Z", "2026-11-25T13:00:00Z"),
        ("UTC", "2026-11-25T12:59:59.999999Z", "2026-11-25T11:00:00Z", "2026-11-25T12:00:00Z"),
        # 13:20Z is 18:50 in Kolkata (+05:30): the hour 17:00-18:00 IST.
        ("Asia/Kolkata", "2026-11-25T13:20:00Z", "2026-11-25T11:30:00Z", "2026-11-25T12:30:00Z"),
        # 13:20Z is 19:05 in Kathmandu (+05:45): the hour 18:00-19:00 NPT.
        (
            "Asia/Kathmandu",
            "2026-11-25T13:20:00Z",
            "2026-11-25T12:15:00Z",
            "2026-11-25T13:15:00Z",
        ),
        # 13:10Z is 18:55 in Kathmandu: the hour 17:00-18:00 NPT.
        (
            "Asia/Kathmandu",
            "2026-11-25T13:10:00Z",
            "2026-11-25T11:15:00Z",
            "2026-11-25T12:15:00Z",
        ),
        # New York springs forward at 02:00 EST -> 03:00 EDT on 2026-03-08; at 03:30 EDT
        # the last hour is 01:00 EST to 03:00 EDT, one real hour.
        (
            "America/New_York",
            "2026-03-08T07:30:00Z",
            "2026-03-08T06:00:00Z",
            "2026-03-08T07:00:00Z",
        ),
        # Falls back at 02:00 EDT -> 01:00 EST on 2026-11-01; at the second 01:30 (EST) the
        # last hour is the first 01:00-02:00 (EDT).
        (
            "America/New_York",
            "2026-11-01T06:30:00Z",
            "2026-11-01T05:00:00Z",
            "2026-11-01T06:00:00Z",
        ),
    ],
)
def test_window(zone: str, at: str, start: str, end: str) -> None:
    assert hour_window(utc(at), ZoneInfo(zone)) == (utc(start), utc(end))


def test_window_is_utc() -> None:
    start, end = hour_window(utc("2026-11-25T13:20:00Z"), ZoneInfo("Asia/Kolkata"))
    assert start.utcoffset() == timedelta(0) and end.utcoffset() == timedelta(0)


def test_hourly_windows_are_consecutive_and_end_with_the_last_hour() -> None:
    zone = ZoneInfo("Asia/Kathmandu")
    at = utc("2026-11-25T13:20:00Z")
    windows = hourly_windows(at, zone, 3)
    assert windows[-1] == hour_window(at, zone)
    assert [w[0] for w in windows[1:]] == [w[1] for w in windows[:-1]]
    assert windows[0][0] == utc("2026-11-25T10:15:00Z")


ZONES = [
    "UTC",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "America/New_York",
    "Europe/London",
    "Australia/Adelaide",
    "Pacific/Chatham",
    "America/St_Johns",
]


@given(
    at=st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2040, 1, 1), timezones=st.just(UTC)
    ),
    zone=st.sampled_from(ZONES),
)
def test_window_is_the_clock_hour_just_before(at: datetime, zone: str) -> None:
    z = ZoneInfo(zone)
    start, end = hour_window(at, z)
    assert end <= at < end + timedelta(hours=1)
    assert end - start == timedelta(hours=1)
    assert end.astimezone(z).minute == 0 and end.astimezone(z).second == 0
    assert start.astimezone(z).minute == 0
