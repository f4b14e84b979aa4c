"""The history events of a batch's outcomes, built for ``store.queue``'s ``record_in``
(which writes them in the outcome's own transaction): ``sent`` for each send, ``failed``
then ``retry_scheduled`` or ``parked`` for each failure and each send refused as stale,
``resolved`` for each error a sync resolved. Pure: data in, event rows out
(``store.history.event``)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from crmsync.domain import Direction, EventKind
from crmsync.store import history
from crmsync.values import STALE, Done, Entry, Failed, Outcome

OBJECT_KEY = history.OBJECT_KEY


def sent(outcome: Outcome, now: datetime) -> list[dict[str, Any]]:
    """A ``sent`` event per entry the batch sent, with the columns it carried."""
    return [
        history.event(
            e.object,
            entry_key(e),
            EventKind.SENT,
            now,
            direction=e.direction,
            operation=e.operation,
            fields=sorted(columns) or None,
            detail={"batch": outcome.batch, "size": len(outcome.sent)},
        )
        for e, columns in outcome.sent
    ]


def synced(d: Done, now: datetime) -> dict[str, Any]:
    """``synced`` for a finished entry (``skipped``: nothing was left to send)."""
    return history.event(
        d.entry.object,
        entry_key(d.entry, d.record_id),
        EventKind.SYNCED,
        now,
        direction=d.entry.direction,
        operation=d.entry.operation,
        detail=None if d.counted else {"skipped": True},
    )


def entry_key(e: Entry, record_id: int | None = None) -> str:
    """The history key of an entry's record (a pulled insert: its Dynamics id)."""
    rid = record_id if record_id is not None else e.record_id
    return history.key_of(rid, e.record_key if e.direction == Direction.FROM_CRM else None)


def failure(f: Failed, now: datetime) -> list[dict[str, Any]]:
    """``failed`` (with the field concerned), then ``retry_scheduled`` (when) or
    ``parked`` (with when it is retried automatically, for a passing cause)."""
    e, key = f.entry, entry_key(f.entry)
    common: dict[str, Any] = {"direction": e.direction, "operation": e.operation}
    failed = history.event(
        e.object,
        key,
        EventKind.FAILED,
        now,
        fields=None if f.field is None else [f.field],
        error_code=f.code,
        error_message=f.message,
        detail={"attempt": e.attempts + 1},
        **common,
    )
    if f.retry_at is None:
        auto = None if f.auto_retry_at is None else {"auto_retry_at": f.auto_retry_at.isoformat()}
        then = history.event(
            e.object, key, EventKind.PARKED, now, error_code=f.code, detail=auto, **common
        )
    else:
        when = {"when": f.retry_at.isoformat()}
        then = history.event(e.object, key, EventKind.RETRY_SCHEDULED, now, detail=when, **common)
    return [failed, then]


STALE_MESSAGE = "changed in Dynamics since the last sync"


def stale(refused: Iterable[tuple[Entry, datetime | None]], now: datetime) -> list[dict[str, Any]]:
    """A send Dynamics refused with 412 (no sync error: the record is pulled, the conflict
    rules settle both sides, and it goes again): ``failed`` (status 412), then
    ``retry_scheduled`` after the pull (when), or held until the paused pull resumes."""
    out = []
    for e, again in refused:
        key, common = entry_key(e), {"direction": e.direction, "operation": e.operation}
        out.append(
            history.event(
                e.object,
                key,
                EventKind.FAILED,
                now,
                error_code=STALE,
                error_message=STALE_MESSAGE,
                detail={"status": 412, "stale": True},
                **common,
            )
        )
        then: dict[str, Any] = {"after": "pull"}
        if again is None:
            then["held"] = "until the pull resumes"
        else:
            then["when"] = again.isoformat()
        out.append(
            history.event(e.object, key, EventKind.RETRY_SCHEDULED, now, detail=then, **common)
        )
    return out


def resolved(
    rows: Iterable[tuple[str, str, str, int | None]], now: datetime
) -> list[dict[str, Any]]:
    """``resolved`` for each (object, direction, record_key, record_id) of an error."""
    return [
        history.event(
            obj,
            history.key_of(rid, key if direction == Direction.FROM_CRM else None)
            if key != OBJECT_KEY
            else OBJECT_KEY,
            EventKind.RESOLVED,
            now,
            direction=direction,
        )
        for obj, direction, key, rid in rows
    ]
