"""The console's pure pieces: formatting, the chart, login throttling, redirects, form times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from pydantic import SecretStr

from crmsync.errors import ValidationFailed
from crmsync.web.console import views
from crmsync.web.console.errors_page import form_timestamp
from crmsync.web.console.login import HOME, safe_next
from crmsync.web.session import LoginThrottle, Passwords


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "-"),
        (-3, "0 s"),
        (59, "59 s"),
        (60, "1 min"),
        (3599, "59 min"),
        (3600, "1 h 00 min"),
        (7500, "2 h 05 min"),
        (86400 * 2 + 3600 * 4 + 59, "2 d 4 h"),
    ],
)
def test_duration(seconds: float | None, text: str) -> None:
    assert views.duration(seconds) == text


def test_count_and_titles() -> None:
    assert views.count(None) == "N/A"
    assert views.count(1234567) == "1,234,567"
    assert views.title("opportunity") == "Opportunity"
    assert views.paused_label({"object": "*", "direction": "*"}) == "All objects, both directions"
    assert views.paused_label({"object": "lead", "direction": "to_crm"}) == "Lead, to Dynamics"
    assert views.is_paused([{"object": "*", "direction": "from_crm"}], "contact")
    assert not views.is_paused([{"object": "lead", "direction": "*"}], "contact")


@pytest.mark.parametrize(
    ("zone", "start", "end", "label"),
    [
        ("UTC", "2026-11-25T13:00:00+00:00", "2026-11-25T14:00:00+00:00", "13:00 to 14:00"),
        (
            "Asia/Kolkata",
            "2026-11-25T07:30:00+00:00",
            "2026-11-25T08:30:00+00:00",
            "13:00 to 14:00",
        ),
        (
            "Asia/Kathmandu",
            "2026-11-25T07:15:00+00:00",
            "2026-11-25T08:15:00+00:00",
            "13:00 to 14:00",
        ),
        (
            "America/New_York",
            "2026-11-25T18:00:00+00:00",
            "2026-11-25T19:00:00+00:00",
            "13:00 to 14:00",
        ),
    ],
)
def test_window_label_is_on_the_zone_clock(zone: str, start: str, end: str, label: str) -> None:
    assert views.window_label({"start": start, "end": end}, ZoneInfo(zone)) == label


def test_age_seconds() -> None:
    assert views.age_seconds(None, "2026-11-25T13:00:00+00:00") is None
    assert views.age_seconds("2026-11-25T12:00:00+00:00", "2026-11-25T13:00:30+00:00") == 3630


@pytest.mark.parametrize(
    ("value", "top", "axis"),
    [
        (0, 1, [0, 1]),
        (1, 1, [0, 1]),
        (2, 2, [0, 1, 2]),
        (3, 5, [0, 1, 2, 3, 4, 5]),
        (7, 10, [0, 2, 4, 6, 8, 10]),
        (11, 20, [0, 4, 8, 12, 16, 20]),
        (4999, 5000, [0, 1000, 2000, 3000, 4000, 5000]),
    ],
)
def test_axis(value: int, top: int, axis: list[int]) -> None:
    assert views.nice_ceiling(value) == top
    assert views.axis_values(top) == axis


def hour(start: str, end: str, **synced: int) -> dict[str, object]:
    objects = {o: {"synced": synced.get(o, 0)} for o in ("lead", "contact")}
    return {"start": start, "end": end, "objects": objects}


def test_chart_stacks_bars_in_proportion() -> None:
    body = {
        "buckets": [
            hour("2026-11-25T12:00:00+00:00", "2026-11-25T13:00:00+00:00", lead=30, contact=10),
            hour("2026-11-25T13:00:00+00:00", "2026-11-25T14:00:00+00:00"),
            hour("2026-11-25T14:00:00+00:00", "2026-11-25T15:00:00+00:00", contact=20),
        ]
    }
    chart = views.throughput_chart(body, ZoneInfo("Europe/Paris"), width=330, height=228)
    assert chart.total == 60 and chart.peak == 40 and chart.objects == ["lead", "contact"]
    plot = chart.plot_bottom - chart.plot_top  # 50 is the axis top
    lead, contact, contact2 = chart.bars
    assert lead.height == pytest.approx(plot * 30 / 50)
    assert contact.y + contact.height == pytest.approx(lead.y)  # stacked on the lead bar
    assert lead.y + lead.height == pytest.approx(chart.plot_bottom)
    assert contact2.x > contact.x and contact2.height == pytest.approx(plot * 20 / 50)
    assert lead.label == "2026-11-25 13:00 to 14:00, Lead: 30"  # Paris clock
    # Ticks on local hours divisible by three, the first with its date.
    assert [(t.text, t.date) for t in chart.x_ticks] == [("15:00", "2026-11-25")]
    assert chart.y_ticks[-1].text == "50" and chart.y_ticks[-1].position == chart.plot_top
    # Each hour's figures in words (what a keyboard or screen reader user gets).
    assert [h.label for h in chart.hours] == [
        "2026-11-25 13:00 to 14:00: Lead 30, Contact 10; 40 in all",
        "2026-11-25 14:00 to 15:00: nothing synced; 0 in all",
        "2026-11-25 15:00 to 16:00: Contact 20; 20 in all",
    ]
    assert not any(h.partial for h in chart.hours)


def test_chart_dates_at_midnight_and_the_current_hour_partial() -> None:
    starts = [datetime(2026, 11, 25, 20, tzinfo=UTC) + timedelta(hours=k) for k in range(8)]
    body = {
        "buckets": [
            hour(s.isoformat(), (s + timedelta(hours=1)).isoformat(), lead=k + 1)
            for k, s in enumerate(starts)
        ]
    }
    now = datetime(2026, 11, 26, 3, 20, tzinfo=UTC)  # in the last bucket
    chart = views.throughput_chart(body, ZoneInfo("UTC"), now=now)
    assert [(t.text, t.date) for t in chart.x_ticks] == [
        ("21:00", "2026-11-25"),
        ("00:00", "2026-11-26"),
        ("03:00", None),
    ]
    assert [h.partial for h in chart.hours] == [False] * 7 + [True]
    assert chart.hours[-1].label == "2026-11-26 03:00 to 04:00, so far: Lead 8; 8 in all"


def test_chart_of_nothing() -> None:
    chart = views.throughput_chart({"buckets": []}, ZoneInfo("UTC"))
    assert chart.bars == [] and chart.total == 0


def test_login_throttle_grows_a_delay_and_never_locks() -> None:
    now = [1000.0]
    throttle = LoginThrottle(free=3, base=1, max_delay=8, window=600, clock=lambda: now[0])
    for _ in range(3):
        assert throttle.retry_after("a", "admin") == 0
        throttle.failed("a", "admin")
    assert throttle.retry_after("a", "admin") == 1
    waits = []
    for _ in range(5):
        now[0] += throttle.retry_after("a", "admin")
        assert throttle.retry_after("a", "admin") == 0  # the right password is heard now
        throttle.failed("a", "admin")
        waits.append(throttle.retry_after("a", "admin"))
    assert waits == [2, 4, 8, 8, 8]  # doubling, capped: a delay, not a lock
    # Someone else's guesses never delay another client's login.
    assert throttle.retry_after("b", "admin") == 0
    now[0] += 600
    assert throttle.retry_after("a", "admin") == 0  # forgotten after the window
    throttle.failed("a", "admin")
    throttle.succeeded("a", "admin")
    assert throttle.retry_after("a", "admin") == 0


def test_login_throttle_counts_a_client_across_accounts() -> None:
    throttle = LoginThrottle(free=5, client_free=4, clock=lambda: 0.0)
    for user in ("root", "admin1", "sa", "x"):
        throttle.failed("a", user)
    assert throttle.retry_after("a", "admin") == 1  # a fresh account name does not help
    assert throttle.retry_after("b", "admin") == 0


def test_login_throttle_memory_is_bounded() -> None:
    throttle = LoginThrottle(free=1, client_free=1, max_keys=4, clock=lambda: 0.0)
    for client in "abcd":
        throttle.failed(client, "admin")
    assert throttle.retry_after("a", "admin") == 0  # forgotten, the oldest
    assert throttle.retry_after("d", "admin") > 0
    assert len(throttle._failures) <= 4


def test_passwords() -> None:
    passwords = Passwords(SecretStr("pw"))
    assert passwords.check("admin", "pw")
    assert not passwords.check("admin", "PW")
    assert not passwords.check("root", "pw")
    assert Passwords(SecretStr("pw")).signing_key == passwords.signing_key  # shared by processes
    assert Passwords(SecretStr("pw2")).signing_key != passwords.signing_key
    nobody = Passwords(None)
    assert not nobody.enabled and not nobody.check("admin", "")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, HOME),
        ("", HOME),
        ("/admin/microsoft-dynamics/sync-errors?q=x", "/admin/microsoft-dynamics/sync-errors?q=x"),
        ("https://evil.example", HOME),
        ("//evil.example", HOME),
        ("/\\evil.example", HOME),
        ("/x\r\nSet-Cookie: a=b", HOME),
    ],
)
def test_safe_next(value: str | None, expected: str) -> None:
    assert safe_next(value) == expected


def test_form_timestamp() -> None:
    kolkata = ZoneInfo("Asia/Kolkata")
    assert form_timestamp("since", "", kolkata) is None
    assert form_timestamp("since", "2026-11-25T13:00", kolkata) == datetime(
        2026, 11, 25, 7, 30, tzinfo=UTC
    )
    assert form_timestamp("since", "2026-11-25T13:00:00Z", kolkata) == datetime(
        2026, 11, 25, 13, 0, tzinfo=UTC
    )
    with pytest.raises(ValidationFailed, match="since"):
        form_timestamp("since", "tomorrow", kolkata)
