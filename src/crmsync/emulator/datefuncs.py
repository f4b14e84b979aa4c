"""The relative-date query functions beyond days and hours: ``Last7Days``, ``Next7Days``,
``ThisWeek``/``LastWeek``/``NextWeek``, ``NextMonth``, ``LastYear``/``NextYear``,
``LastX``/``NextX`` ``Weeks|Months|Years`` and ``OlderThanX`` ``Minutes|Hours|Days|
Weeks|Months|Years`` (Web API query function reference; FetchXML operators
``last-seven-days``, ``this-week``, ``olderthan-x-days``, ...).

Windows as ``(start, end)``, start included, end not, in UTC. Inferred, where the docs
give only names: weeks start on Sunday (an en-US organization's default); ``Last7Days``
and ``Next7Days`` are ``LastXDays(7)`` and ``NextXDays(7)``; ``LastX<unit>(n)`` runs from
midnight ``n`` units ago up to now, ``NextX<unit>(n)`` from now to the end of the day
``n`` units ahead; ``OlderThanX`` minutes and hours count back from now, the longer
units from midnight. Fiscal periods need the organization's fiscal settings, which the
emulator has none of: those stay unknown functions.
"""

from __future__ import annotations

import calendar
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

Window = tuple[datetime, datetime]
PAST = datetime(1, 1, 1, tzinfo=UTC)


def midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def now() -> datetime:
    return datetime.now(UTC)


def months_away(day: date, months: int) -> date:
    """``day`` moved by ``months`` (negative: back), clamped to the month's last day."""
    index = day.year * 12 + day.month - 1 + months
    year, month = divmod(index, 12)
    return date(year, month + 1, min(day.day, calendar.monthrange(year, month + 1)[1]))


def _week_start(day: date) -> date:
    return day - timedelta((day.weekday() + 1) % 7)  # Sunday


def _since(start: date) -> Window:
    return midnight(start), now() + timedelta(seconds=1)


def _until(end: date) -> Window:
    return now() - timedelta(seconds=1), midnight(end + timedelta(1))


def _older(moment: datetime) -> Window:
    return PAST, moment


Relative = Callable[[int], Window]


def _unit_back(unit: str, n: int) -> date:
    today = now().date()
    if unit == "weeks":
        return today - timedelta(7 * n)
    if unit == "months":
        return months_away(today, -n)
    return months_away(today, -12 * n)  # years


def _unit_ahead(unit: str, n: int) -> date:
    today = now().date()
    if unit == "weeks":
        return today + timedelta(7 * n)
    if unit == "months":
        return months_away(today, n)
    return months_away(today, 12 * n)


def _fixed() -> dict[str, Callable[[], Window]]:
    def week(offset: int) -> Window:
        start = _week_start(now().date()) + timedelta(7 * offset)
        return midnight(start), midnight(start + timedelta(7))

    def month(offset: int) -> Window:
        first = months_away(now().date().replace(day=1), offset)
        return midnight(first), midnight(months_away(first, 1))

    def year(offset: int) -> Window:
        y = now().year + offset
        return midnight(date(y, 1, 1)), midnight(date(y + 1, 1, 1))

    return {
        "last7days": lambda: _since(now().date() - timedelta(7)),
        "next7days": lambda: _until(now().date() + timedelta(7)),
        "thisweek": lambda: week(0),
        "lastweek": lambda: week(-1),
        "nextweek": lambda: week(1),
        "nextmonth": lambda: month(1),
        "lastyear": lambda: year(-1),
        "nextyear": lambda: year(1),
    }


FIXED = _fixed()


def _last(unit: str) -> Relative:
    return lambda n: _since(_unit_back(unit, n))


def _next(unit: str) -> Relative:
    return lambda n: _until(_unit_ahead(unit, n))


def _older_than(unit: str) -> Relative:
    return lambda n: _older(midnight(_unit_back(unit, n)))


_UNITS = ("weeks", "months", "years")
COUNTED: dict[str, Relative] = {
    **{f"lastx{u}": _last(u) for u in _UNITS},
    **{f"nextx{u}": _next(u) for u in _UNITS},
    "olderthanxminutes": lambda n: _older(now() - timedelta(minutes=n)),
    "olderthanxhours": lambda n: _older(now() - timedelta(hours=n)),
    "olderthanxdays": lambda n: _older(midnight(now().date() - timedelta(n))),
    **{f"olderthanx{u}": _older_than(u) for u in _UNITS},
}


def window(short: str, count: Callable[[], int]) -> Window:
    """The window of function ``short`` (one of ``NAMES``: lower case, no prefix);
    ``count`` reads its ``PropertyValue`` (only the counted ones call it)."""
    if short in FIXED:
        return FIXED[short]()
    return COUNTED[short](count())


NAMES: frozenset[str] = frozenset({*FIXED, *COUNTED})
