"""Sync Status: the backlog, its details, the last clock hour, throughput and pauses.

The backlog is every committed local or Dynamics change not yet synced: the queue's
``pending`` entries (parked errors excluded) plus what the capture log holds unfolded,
counted as folded (``store.backlog``), so several changes to one record count once per
direction. Synced records come from ``sync_throughput`` (15-minute buckets), the time to
drain from ``sync_rate`` (minutes, ``store.drain``), and the trend from the backlog
samples ``store.maintenance`` writes. Every function here only
reads, except ``pause``, ``resume`` and ``wake_awaiting_pull``.

``at`` moves the reference time: the last-hour window, the throughput history and the
ages are computed as of ``at``. The backlog itself is always the present one: the queue
keeps no history of entries that have since synced.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy import Connection

from crmsync.domain import Direction, EntryState, ErrorStatus, Operation
from crmsync.errors import ValidationFailed
from crmsync.store import backlog as backlog_module
from crmsync.store import drain
from crmsync.store.backlog import Group
from crmsync.store.params import iso
from crmsync.store.pauses import is_paused, paused_scopes
from crmsync.store.schema import (
    sync_backlog_sample,
    sync_error,
    sync_pause,
    sync_queue,
    sync_throughput,
)
from crmsync.store.types import utcnow
from crmsync.values import AWAITING_PULL as AWAITING_PULL

HOUR = timedelta(hours=1)
MAX_HOURS = 720
# The trend compares the backlog with its sample this long ago (see ``backlog``).
TREND_HOURS = 3
# A sample older than TREND_HOURS by more than this is too old to compare with.
TREND_SLACK = timedelta(hours=1)
# Within this share (or this many records) of the earlier backlog the trend is "steady".
TREND_TOLERANCE = 0.1
TREND_MIN_CHANGE = 10
OPERATIONS: tuple[str, ...] = tuple(o.value for o in Operation)
DIRECTIONS: tuple[str, ...] = tuple(d.value for d in Direction)
PLURAL: dict[str, str] = {
    Operation.INSERT: "inserts",
    Operation.UPDATE: "updates",
    Operation.DELETE: "deletes",
}


# -- the clock hour ---------------------------------------------------------------------


def hour_window(at: datetime, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """The last complete clock hour before ``at`` in ``zone``, as UTC ``(start, end)``.

    The hour's end is ``at`` less the minutes past the hour on the local clock at that
    instant, which is right for offsets of 30 and 45 minutes and on either side of a
    DST change (the local clock's minutes are those of the offset in force at ``at``).
    At exactly hh:00 local, the hour that just ended is the window. Clock hours are one
    real hour long in every zone whose DST shift is a whole hour (all but Lord Howe).
    """
    local = at.astimezone(zone)
    end = at - timedelta(minutes=local.minute, seconds=local.second, microseconds=local.microsecond)
    utc = ZoneInfo("UTC")
    return (end - HOUR).astimezone(utc), end.astimezone(utc)


def hourly_windows(at: datetime, zone: ZoneInfo, hours: int) -> list[tuple[datetime, datetime]]:
    """The last ``hours`` complete clock hours before ``at``, oldest first."""
    _, end = hour_window(at, zone)
    return [(end - HOUR * (k + 1), end - HOUR * k) for k in reversed(range(hours))]


# -- pauses -----------------------------------------------------------------------------


def paused(conn: Connection) -> list[dict[str, Any]]:
    rows = conn.execute(sa.select(sync_pause).order_by(sync_pause.c.object, sync_pause.c.direction))
    return [
        {
            "object": r.object,
            "direction": r.direction,
            "paused_at": iso(r.paused_at),
            "reason": r.reason,
        }
        for r in rows
    ]


def pause(
    conn: Connection,
    obj: str,
    direction: str,
    now: datetime | None = None,
    *,
    reason: str | None = None,
) -> None:
    """Pause ``obj`` (``*``: every object) in ``direction`` (``*``: both). ``reason`` is
    crmsync's own when it pauses an object by itself; an operator's pause has none."""
    exists = conn.execute(
        sa.select(sync_pause.c.reason).where(
            sync_pause.c.object == obj, sync_pause.c.direction == direction
        )
    ).first()
    if exists is None:
        conn.execute(
            sa.insert(sync_pause).values(
                object=obj, direction=direction, paused_at=now or utcnow(), reason=reason
            )
        )
    elif reason is not None and exists.reason != reason:
        conn.execute(
            sa.update(sync_pause)
            .where(sync_pause.c.object == obj, sync_pause.c.direction == direction)
            .values(reason=reason)
        )


MAPPING_MISMATCH = "crmsync.mapping_mismatch"


def pause_unusable(
    conn: Connection, obj: str, direction: Direction, code: str, message: str, now: datetime
) -> None:
    """Dynamics no longer matches the mapping of ``obj`` (a table or column gone): pause
    the object alone, both ways, with the reason, and open one sync error for it. Its
    waiting changes stay in the backlog; resuming after the fix continues from there."""
    found = f"{code}: {message}" if code and code != "0x0" else message
    reason = (
        f"Dynamics no longer matches the mapping ({found[:500]}); fix the mapping or "
        f"Dynamics (crmsync mapping check lists the mismatches), then resume {obj}"
    )
    # The queue's writers are imported here, by the writers: a status read never loads them.
    from crmsync.store import queue

    pause(conn, obj, "*", now, reason=reason)
    queue.fail_object(conn, obj, direction, MAPPING_MISMATCH, reason, now)


def resume(conn: Connection, obj: str, direction: str, now: datetime | None = None) -> int:
    """Lift the pauses that ``obj``/``direction`` cover (``*`` covers every value), and
    wake the pushes that waited for their object's pull (see ``AWAITING_PULL``)."""
    from crmsync.store import queue  # a writer's import, as in ``pause_unusable``

    where = []
    if obj != "*":
        where.append(sync_pause.c.object == obj)
    if direction != "*":
        where.append(sync_pause.c.direction == direction)
    lifted = conn.execute(sa.delete(sync_pause).where(*where)).rowcount
    if lifted:
        wake_awaiting_pull(conn, now or utcnow())
        # The operator says the mismatch is fixed: if it is not, the next request of
        # the object pauses it again and opens a new error.
        err = sync_error.c
        conn.execute(
            sa.update(sync_error)
            .where(
                err.status == ErrorStatus.OPEN,
                err.error_code == MAPPING_MISMATCH,
                err.record_key == queue.OBJECT_KEY,
                *([err.object == obj] if obj != "*" else []),
            )
            .values(status=ErrorStatus.RESOLVED, resolved_at=now or utcnow(), retry_at=None)
        )
    return lifted


def wake_awaiting_pull(conn: Connection, now: datetime) -> int:
    """Make due (and unmark) the pushes held for a paused pull whose object pulls again:
    they go the ordinary way from now on (refused again, the record is pulled first)."""
    q = sync_queue.c
    scopes = paused_scopes(conn)
    held = (
        q.state == EntryState.PENDING,
        q.direction == Direction.TO_CRM,
        q.last_error_code == AWAITING_PULL,
    )
    objects = [o for (o,) in conn.execute(sa.select(q.object).where(*held).distinct())]
    free = [o for o in objects if not is_paused(scopes, o, Direction.FROM_CRM)]
    if not free:
        return 0
    return conn.execute(
        sa.update(sync_queue)
        .where(*held, q.object.in_(free))
        .values(next_attempt_at=now, last_error_code=None, last_error_message=None)
    ).rowcount


# -- the backlog ------------------------------------------------------------------------


def backlog_groups(
    conn: Connection, direction: str | None = None, obj: str | None = None
) -> list[Group]:
    """Pending changes per (object, direction, operation) with the oldest of each, the
    capture log's unfolded tail included (``store.backlog``)."""
    return backlog_module.groups(conn, direction, obj)


def synced_since(
    conn: Connection, start: datetime, end: datetime, direction: str | None = None
) -> dict[str, int]:
    """Records synced per object in the buckets starting in ``[start, end)``."""
    t = sync_throughput.c
    query = (
        sa.select(t.object, sa.func.sum(t.synced))
        .where(t.bucket_start >= start, t.bucket_start < end)
        .group_by(t.object)
    )
    if direction is not None:
        query = query.where(t.direction == direction)
    return {obj: int(n or 0) for obj, n in conn.execute(query)}


def backlog_sample(
    conn: Connection, before: datetime, direction: str | None = None
) -> tuple[datetime | None, dict[str, int]]:
    """The latest backlog sample at or before ``before`` (and at most ``TREND_SLACK``
    older), summed per object: ``(sample time, totals)``, or ``(None, {})``."""
    s = sync_backlog_sample.c
    when = conn.execute(
        sa.select(sa.func.max(s.sampled_at)).where(
            s.sampled_at <= before, s.sampled_at >= before - TREND_SLACK
        )
    ).scalar_one_or_none()
    if when is None:
        return None, {}
    query = (
        sa.select(s.object, sa.func.sum(s.backlog)).where(s.sampled_at == when).group_by(s.object)
    )
    if direction is not None:
        query = query.where(s.direction == direction)
    return when, {obj: int(n or 0) for obj, n in conn.execute(query)}


def oldest_waiting(conn: Connection, objects: Iterable[str]) -> dict[str, datetime]:
    """When each object's oldest pending change was captured (objects with none left out)."""
    names = set(objects)
    oldest: dict[str, datetime] = {}
    for g in backlog_module.groups(conn):
        first = g.oldest_queued_at
        if (
            g.object in names
            and first is not None
            and (g.object not in oldest or first < oldest[g.object])
        ):
            oldest[g.object] = first
    return oldest


def trend(now_total: int, earlier_total: int | None) -> str | None:
    """``growing``, ``shrinking`` or ``steady``, comparing the backlog with an earlier one
    (None when there is no earlier one to compare with)."""
    if earlier_total is None:
        return None
    change = now_total - earlier_total
    if abs(change) <= max(TREND_MIN_CHANGE, TREND_TOLERANCE * earlier_total):
        return "steady"
    return "growing" if change > 0 else "shrinking"


def backlog(
    conn: Connection,
    objects: Iterable[str],
    *,
    direction: str | None = None,
    at: datetime | None = None,
) -> dict[str, Any]:
    """The backlog view: one row per configured object, zeros included.

    Beyond the contract's fields each row has ``trend``, ``backlog_earlier``,
    ``synced_last_hour`` and ``eta_seconds``, and the body has ``trend_since``:

    - ``eta_seconds`` and ``drain``: how long the entries waiting now take at the rate
      of the last minutes, each direction on its own (``store.drain``); ``drain`` is
      ``empty`` (``eta_seconds`` 0), ``estimate``, ``paused`` or ``no_rate`` (null
      ``eta_seconds``: a pause has no end to estimate, and nothing synced lately
      gives no rate). New arrivals are not in it: a ``growing`` trend says they
      outpace the drain.
    - ``trend``: the backlog now against the backlog sample ``TREND_HOURS`` before
      ``at`` (``trend_since`` is that sample's bucket, ``backlog_earlier`` its count):
      ``growing``, ``shrinking`` or ``steady`` (within 10% or 10 records). Null when no
      sample is that old (a new store, or ``maintain`` not running). The queue alone
      cannot give the earlier backlog: entries that synced since are gone, and the
      throughput counters do not say when the records they count were queued.
    """
    as_of = at or utcnow()
    names = list(objects)
    rows: dict[str, dict[str, Any]] = {
        name: {
            "object": name,
            "inserts": 0,
            "updates": 0,
            "deletes": 0,
            "total": 0,
            "oldest_queued_at": None,
        }
        for name in names
    }
    oldest: dict[str, datetime] = {}
    per_direction: dict[str, dict[str, int]] = {name: {} for name in names}
    for g in backlog_groups(conn, direction):
        row = rows.get(g.object)
        if row is None:  # an object no longer configured: not shown
            continue
        row[PLURAL[g.operation]] += g.count
        row["total"] += g.count
        waiting = per_direction[g.object]
        waiting[g.direction] = waiting.get(g.direction, 0) + g.count
        if g.oldest_queued_at is not None and (
            g.object not in oldest or g.oldest_queued_at < oldest[g.object]
        ):
            oldest[g.object] = g.oldest_queued_at
    sampled_at, earlier = backlog_sample(conn, as_of - TREND_HOURS * HOUR, direction)
    synced_hour = synced_since(conn, as_of - HOUR, as_of, direction)
    recent = drain.recent_minutes(conn, as_of)
    scopes = paused_scopes(conn)
    for name, row in rows.items():
        row["oldest_queued_at"] = iso(oldest.get(name))
        row["backlog_earlier"] = earlier.get(name)
        row["trend"] = trend(row["total"], row["backlog_earlier"])
        row["synced_last_hour"] = synced_hour.get(name, 0)
        rates = {d: drain.recent_rate(recent.get((name, d), []), as_of) for d in DIRECTIONS}
        held = [d for d in DIRECTIONS if is_paused(scopes, name, Direction(d))]
        estimate = drain.estimate(per_direction[name], rates, held)
        row["drain"] = estimate.state
        row["eta_seconds"] = estimate.seconds
    return {
        "view": "backlog",
        "as_of": iso(as_of),
        "direction": direction,
        "trend_since": iso(sampled_at),
        "objects": list(rows.values()),
        "paused": paused(conn),
    }


def details(conn: Connection, obj: str, *, at: datetime | None = None) -> dict[str, Any]:
    """One object's backlog per operation with its oldest waiting record, and per direction."""
    as_of = at or utcnow()
    by_direction = {d: {PLURAL[op]: 0 for op in OPERATIONS} for d in DIRECTIONS}
    body: dict[str, Any] = {"object": obj, "as_of": iso(as_of)}
    for op in OPERATIONS:
        body[PLURAL[op]] = {"pending": 0, "oldest": None}
    for g in backlog_module.groups(conn, obj=obj):
        if g.direction not in by_direction or g.operation not in PLURAL:
            continue
        by_direction[g.direction][PLURAL[g.operation]] = g.count
        body[PLURAL[g.operation]]["pending"] += g.count
    oldest: dict[str, Any] = {}
    for first in backlog_module.oldest_records(conn, obj):
        # The oldest of both directions; on a tie, to_crm first.
        rank = (first.first_queued_at, DIRECTIONS.index(first.direction))
        if first.operation not in oldest or rank < oldest[first.operation][0]:
            oldest[first.operation] = (rank, first)
    for op, (_, first) in oldest.items():
        body[PLURAL[op]]["oldest"] = {
            "record_id": first.record_id,
            "crm_id": first.crm_id,
            "label": first.label,
            "direction": first.direction,
            "queued_at": iso(first.first_queued_at),
            "age_seconds": max(0, int((as_of - first.first_queued_at).total_seconds())),
        }
    body["by_direction"] = by_direction
    body["paused"] = paused(conn)
    return body


# -- throughput -------------------------------------------------------------------------


def last_hour(
    conn: Connection, objects: Iterable[str], zone: ZoneInfo, *, at: datetime | None = None
) -> dict[str, Any]:
    """Records synced per object in the last complete clock hour, both directions."""
    start, end = hour_window(at or utcnow(), zone)
    synced = synced_since(conn, start, end)
    return {
        "view": "last_hour",
        "as_of": iso(at or utcnow()),
        "timezone": zone.key,
        "window": {"start": iso(start), "end": iso(end)},
        "objects": [
            {
                "object": name,
                "inserts": None,
                "updates": None,
                "deletes": None,
                "synced": synced.get(name, 0),
            }
            for name in objects
        ],
        "paused": paused(conn),
    }


def last_hour_details(
    conn: Connection, obj: str, zone: ZoneInfo, *, at: datetime | None = None
) -> dict[str, Any]:
    """One object's records synced in the last complete clock hour, per direction and
    operation (the details of a ``last_hour`` row: ``synced`` is that row's count)."""
    start, end = hour_window(at or utcnow(), zone)
    t = sync_throughput.c
    by_direction = {d: {PLURAL[op]: 0 for op in OPERATIONS} for d in DIRECTIONS}
    query = (
        sa.select(t.direction, t.operation, sa.func.sum(t.synced))
        .where(t.object == obj, t.bucket_start >= start, t.bucket_start < end)
        .group_by(t.direction, t.operation)
    )
    for direction, operation, n in conn.execute(query):
        if direction in by_direction and operation in PLURAL:
            by_direction[direction][PLURAL[operation]] += int(n or 0)
    body: dict[str, Any] = {
        "object": obj,
        "view": "last_hour",
        "as_of": iso(at or utcnow()),
        "timezone": zone.key,
        "window": {"start": iso(start), "end": iso(end)},
    }
    for op in OPERATIONS:
        body[PLURAL[op]] = sum(counts[PLURAL[op]] for counts in by_direction.values())
    body["synced"] = sum(body[PLURAL[op]] for op in OPERATIONS)
    body["by_direction"] = by_direction
    body["paused"] = paused(conn)
    return body


def throughput(
    conn: Connection,
    objects: Iterable[str],
    zone: ZoneInfo,
    *,
    hours: int,
    at: datetime | None = None,
) -> dict[str, Any]:
    """Synced records per clock hour (oldest first) for the last ``hours`` complete hours."""
    if not 1 <= hours <= MAX_HOURS:
        raise ValidationFailed("hours", f"must be between 1 and {MAX_HOURS}")
    names = list(objects)
    windows = hourly_windows(at or utcnow(), zone, hours)
    first, last = windows[0][0], windows[-1][1]
    t = sync_throughput.c
    query = (
        sa.select(t.bucket_start, t.object, t.operation, sa.func.sum(t.synced))
        .where(
            t.bucket_start >= first,
            t.bucket_start < last,
            t.object.in_(names),
        )
        .group_by(t.bucket_start, t.object, t.operation)
    )
    per_hour: list[dict[str, dict[str, int]]] = [
        {n: {"inserts": 0, "updates": 0, "deletes": 0, "synced": 0} for n in names} for _ in windows
    ]
    for bucket_start, obj, operation, n in conn.execute(query):
        counts = per_hour[int((bucket_start - first) // HOUR)][obj]
        if operation in PLURAL:
            counts[PLURAL[operation]] += int(n)
        counts["synced"] += int(n)
    buckets = [
        {"start": iso(start), "end": iso(end), "objects": objs}
        for (start, end), objs in zip(windows, per_hour, strict=True)
    ]
    return {"hours": hours, "timezone": zone.key, "buckets": buckets}
