"""How the console shows the API's data: numbers, ages, clock times and the chart.

Pure functions of the JSON bodies that ``store.status`` and ``store.sync_errors`` return
(the pages' JSON twins), so what a page shows is what the API says, laid out for people.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from crmsync.domain import Direction, Operation

NA = "N/A"
DIRECTION_TITLES: dict[str, str] = {
    Direction.TO_CRM: "To Dynamics",
    Direction.FROM_CRM: "From Dynamics",
    "*": "Both directions",
}
OPERATION_TITLES: dict[str, str] = {
    Operation.INSERT: "Insert",
    Operation.UPDATE: "Update",
    Operation.DELETE: "Delete",
}
TREND_SYMBOLS = {"growing": "▲", "shrinking": "▼", "steady": "▬"}


def title(obj: str) -> str:
    """An object's name as a title: ``lead`` -> ``Lead``, ``event_registration`` ->
    ``Event registration``."""
    return obj.replace("_", " ").capitalize()


def count(value: int | None) -> str:
    """``1,234``; ``N/A`` where the view has no such number."""
    return NA if value is None else f"{value:,}"


def duration(seconds: float | None) -> str:
    """A short human duration: ``45 s``, ``12 min``, ``3 h 05 min``, ``2 d 4 h``."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    minutes = s // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def parse(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def age_seconds(since: str | None, as_of: str | None) -> float | None:
    """Seconds from ``since`` to ``as_of`` (ISO timestamps), or None without ``since``."""
    start, end = parse(since), parse(as_of)
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds())


def clock(value: str | None, zone: ZoneInfo) -> str:
    """``HH:MM`` on the zone's clock."""
    at = parse(value)
    return at.astimezone(zone).strftime("%H:%M") if at else "-"


def local(value: str | None, zone: ZoneInfo) -> str:
    """``2026-11-25 14:05:09`` on the zone's clock (the zone is named on the page)."""
    at = parse(value)
    return at.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S") if at else "-"


def window_label(window: dict[str, str], zone: ZoneInfo) -> str:
    """The last-hour window as people say it: ``13:00 to 14:00``."""
    return f"{clock(window['start'], zone)} to {clock(window['end'], zone)}"


def paused_label(scope: dict[str, Any]) -> str:
    """``Lead, to Dynamics``; ``All objects, both directions`` (Dynamics is a name)."""
    obj = "All objects" if scope["object"] == "*" else title(scope["object"])
    direction = DIRECTION_TITLES.get(scope["direction"], scope["direction"])
    return f"{obj}, {direction[:1].lower()}{direction[1:]}"


def is_paused(paused: list[dict[str, Any]], obj: str) -> bool:
    """Whether any pause covers ``obj`` in some direction."""
    return any(p["object"] in ("*", obj) for p in paused)


# -- the throughput chart ---------------------------------------------------------------


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    object: str
    synced: int
    label: str  # "2026-11-25 13:00 to 14:00, Lead: 42"


@dataclass(frozen=True)
class Tick:
    position: float
    text: str
    date: str | None = None  # under the time, where a day starts (and at the first tick)


@dataclass(frozen=True)
class Hour:
    """One clock hour of the chart: its slot, its bars, and its figures in words."""

    x: float
    width: float
    label: str  # "2026-11-25 13:00 to 14:00: Lead 30, Contact 10; 40 in all"
    when: str  # "2026-11-25 13:00 to 14:00" ("... 14:00, so far" for the current hour)
    counts: dict[str, int]
    total: int
    partial: bool
    bars: list[Bar]


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    plot_top: float
    plot_bottom: float
    plot_left: float
    plot_right: float
    bars: list[Bar]
    y_ticks: list[Tick]
    x_ticks: list[Tick]
    objects: list[str]
    total: int
    peak: int
    hours: list[Hour]


def nice_ceiling(value: int) -> int:
    """The smallest of 1, 2 or 5 times a power of ten at or above ``value`` (axis tops
    that read well)."""
    if value <= 0:
        return 1
    magnitude: int = 10 ** math.floor(math.log10(value))
    return next(step * magnitude for step in (1, 2, 5, 10) if step * magnitude >= value)


def axis_values(top: int) -> list[int]:
    """Round gridline values from 0 to ``top`` (a ``nice_ceiling``): 0, 2, 4 ... 10."""
    step = top // 5 if top % 5 == 0 else top // 2 if top % 2 == 0 else top
    return list(range(0, top + 1, step))


def hour_words(start: str, end: str, zone: ZoneInfo, partial: bool) -> str:
    """``2026-11-25 13:00 to 14:00`` on the zone's clock (``, so far`` when partial)."""
    at = parse(start)
    day = at.astimezone(zone).strftime("%Y-%m-%d") if at else ""
    words = f"{day} {clock(start, zone)} to {clock(end, zone)}"
    return words + (", so far" if partial else "")


def throughput_chart(
    body: dict[str, Any],
    zone: ZoneInfo,
    *,
    now: datetime | None = None,
    width: int = 1000,
    height: int = 236,
) -> Chart:
    """Stacked bars of records synced per clock hour, one colour per object. The hour
    holding ``now`` (if the body has it) is partial: drawn as such and said so. Ticks
    fall on local hours divisible by three; a tick where a day starts shows its date."""
    buckets = body["buckets"]
    objects = list(buckets[0]["objects"]) if buckets else []
    totals = [sum(b["objects"][o]["synced"] for o in objects) for b in buckets]
    peak = max(totals, default=0)
    top = nice_ceiling(peak)
    left, right, upper, lower = 48.0, width - 8.0, 12.0, height - 44.0
    slot = (right - left) / max(1, len(buckets))
    gap = min(4.0, slot * 0.2)
    bars: list[Bar] = []
    hours: list[Hour] = []
    x_ticks: list[Tick] = []
    last_day = None
    for i, bucket in enumerate(buckets):
        x = left + i * slot
        start, end = parse(bucket["start"]), parse(bucket["end"])
        partial = bool(now and start and end and start <= now < end)
        when = hour_words(bucket["start"], bucket["end"], zone, partial)
        base = lower
        hour_bars = []
        counts = {obj: int(bucket["objects"][obj]["synced"]) for obj in objects}
        for obj in objects:
            synced = counts[obj]
            if not synced:
                continue
            h = (lower - upper) * synced / top
            base -= h
            hour_bars.append(
                Bar(
                    x + gap / 2,
                    base,
                    slot - gap,
                    h,
                    obj,
                    synced,
                    f"{when}, {title(obj)}: {synced:,}",
                )
            )
        bars += hour_bars
        figures = ", ".join(f"{title(o)} {n:,}" for o, n in counts.items() if n) or "nothing synced"
        label = f"{when}: {figures}; {totals[i]:,} in all"
        hours.append(Hour(x, slot, label, when, counts, totals[i], partial, hour_bars))
        local_start = start.astimezone(zone) if start else None
        if local_start is not None and local_start.hour % 3 == 0:
            day = local_start.strftime("%Y-%m-%d")
            x_ticks.append(
                Tick(x + slot / 2, clock(bucket["start"], zone), day if day != last_day else None)
            )
            last_day = day
    y_ticks = [Tick(lower - (lower - upper) * v / top, f"{v:,}") for v in axis_values(top)]
    return Chart(
        width=width,
        height=height,
        plot_top=upper,
        plot_bottom=lower,
        plot_left=left,
        plot_right=right,
        bars=bars,
        y_ticks=y_ticks,
        x_ticks=x_ticks,
        objects=objects,
        total=sum(totals),
        peak=peak,
        hours=hours,
    )
