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

NA = "N/A"
OBJECT_TITLES = {
    "lead": "Lead",
    "contact": "Contact",
    "account": "Account",
    "opportunity": "Opportunity",
}
DIRECTION_TITLES = {"to_crm": "To Dynamics", "from_crm": "From Dynamics", "*": "Both directions"}
OPERATION_TITLES = {"insert": "Insert", "update": "Update", "delete": "Delete"}
TREND_SYMBOLS = {"growing": "▲", "shrinking": "▼", "steady": "▬"}


def title(obj: str) -> str:
    return OBJECT_TITLES.get(obj, obj.replace("_", " ").title())


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
    obj = "All objects" if scope["object"] == "*" else title(scope["object"])
    return f"{obj}, {DIRECTION_TITLES.get(scope['direction'], scope['direction']).lower()}"


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
    label: str  # "13:00 to 14:00, Lead: 42 synced"


@dataclass(frozen=True)
class Tick:
    position: float
    text: str


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


def throughput_chart(
    body: dict[str, Any], zone: ZoneInfo, *, width: int = 1000, height: int = 220
) -> Chart:
    """Stacked bars of records synced per clock hour, one colour per object."""
    buckets = body["buckets"]
    objects = list(buckets[0]["objects"]) if buckets else []
    totals = [sum(b["objects"][o]["synced"] for o in objects) for b in buckets]
    peak = max(totals, default=0)
    top = nice_ceiling(peak)
    left, right, upper, lower = 48.0, width - 8.0, 12.0, height - 28.0
    slot = (right - left) / max(1, len(buckets))
    gap = min(4.0, slot * 0.2)
    bars: list[Bar] = []
    x_ticks: list[Tick] = []
    for i, bucket in enumerate(buckets):
        x = left + i * slot
        hour = f"{clock(bucket['start'], zone)} to {clock(bucket['end'], zone)}"
        base = lower
        for obj in objects:
            synced = bucket["objects"][obj]["synced"]
            if not synced:
                continue
            h = (lower - upper) * synced / top
            base -= h
            bars.append(
                Bar(
                    x + gap / 2,
                    base,
                    slot - gap,
                    h,
                    obj,
                    synced,
                    f"{hour}, {title(obj)}: {synced:,}",
                )
            )
        if i % 3 == 0:
            x_ticks.append(Tick(x + slot / 2, clock(bucket["start"], zone)))
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
    )
