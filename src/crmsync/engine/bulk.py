"""Bulk messages in a push: which sends go together, how a refused request splits, and
what the read-back of versions decides. Pure: data in, decision out.

Dataverse charges a ``$batch`` part as the operation on its own (~149 ms an update) but a
record inside ``UpdateMultiple`` ~19 ms (docs/emulator.md), so inserts (upserts under an
id chosen before sending) go as ``UpsertMultiple`` and updates as ``UpdateMultiple``, one
request per object and message. Deletes have no standard-table bulk message: ``$batch``.
On a standard table one bad record fails the whole request: a text too long for its
column names the limit, so ``TextLimits`` takes every record over it out at once;
otherwise ``halves`` splits it until the bad one stands alone with its own error. Bulk
messages answer no ETag and take no ``If-Match``: ``stale_before`` and ``etag_after``
stand in for both (see docs/dynamics.md, "Bulk messages").
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from crmsync.dynamics.writes import BulkMessage
from crmsync.engine.plan import Send
from crmsync.errors import Refusal

MESSAGE_FOR: dict[str, BulkMessage] = {"upsert": "UpsertMultiple", "update": "UpdateMultiple"}
# Fewer records than this go as $batch parts (a lone one as a single request). A bulk
# request costs ~100 ms plus up to two read-backs of ~100 ms each, a $batch part
# ~149 ms; but it is up to three requests against the $batch's one, and a request is
# worth ~200 ms of the budget (6,000 requests and 1,200 s per window): bulk pays from
# about 5 records (900 + 19n against 300 + 149n), and a trickle stays one request.
BULK_MIN = 5


@dataclass(frozen=True)
class Group:
    """Sends that go in one request: a bulk ``message`` on one object, or ``$batch``."""

    message: BulkMessage | None  # None: $batch with continue-on-error
    object: str
    sends: tuple[Send, ...]


def bulkable(send: Send) -> bool:
    """An upsert or update with no per-record option a bulk message cannot carry."""
    w = send.write
    return w.op in MESSAGE_FOR and not w.return_representation and not w.if_none_match


def group_sends(sends: Sequence[Send], *, bulk: bool, max_records: int) -> list[Group]:
    """The requests for ``sends``: one ``$batch`` for what cannot go in bulk (everything
    when ``bulk`` is False, and kinds with fewer than ``BULK_MIN`` sends), then per
    (object, message) chunks of ``max_records``."""
    by_kind: dict[tuple[str, BulkMessage], list[Send]] = {}
    rest: list[Send] = []
    for s in sends:
        if bulk and bulkable(s):
            by_kind.setdefault((s.entry.object, MESSAGE_FOR[s.write.op]), []).append(s)
        else:
            rest.append(s)
    for kind, items in list(by_kind.items()):
        if len(items) < BULK_MIN:
            rest.extend(items)
            del by_kind[kind]
    groups = [Group(None, "", tuple(rest))] if rest else []
    size = max(1, max_records)
    for (obj, message), items in by_kind.items():
        for start in range(0, len(items), size):
            groups.append(Group(message, obj, tuple(items[start : start + size])))
    return groups


def halves(group: Group) -> tuple[Group, Group]:
    """A refused bulk request split in two (a bisect step); needs two sends or more."""
    if len(group.sends) < 2:
        raise ValueError("a single send cannot be split")
    mid = len(group.sends) // 2
    return (
        Group(group.message, group.object, group.sends[:mid]),
        Group(group.message, group.object, group.sends[mid:]),
    )


def bulk_size(
    budget_ms: float,
    per_request_ms: float,
    per_record_ms: float,
    *,
    share: float,
    maximum: int,
) -> int:
    """Records per bulk request so that one request costs at most ``share`` of the
    window's execution budget (a request is charged whole; a large one overshoots the
    budget and makes every lane wait), at least 1, at most ``maximum``."""
    room = budget_ms * share - per_request_ms
    if per_record_ms <= 0:
        return max(1, maximum)
    return max(1, min(maximum, int(room // per_record_ms)))


def stale_before(sends: Sequence[Send], current: Mapping[str, Mapping[str, Any]]) -> set[int]:
    """Entry ids of updates whose record changed in Dynamics since their base ETag (the
    read-back before sending): what ``If-Match`` would have refused with 412. A record
    absent from ``current`` is left to the bulk message (which fails for it alone)."""
    stale: set[int] = set()
    for s in sends:
        base = s.write.if_match
        row = current.get(s.crm_id.lower())
        if s.write.op != "update" or base in (None, "*") or row is None:
            continue
        if row.get("@odata.etag") != base:
            stale.add(s.entry.id)
    return stale


def etag_after(
    send: Send, current: Mapping[str, Mapping[str, Any]], own_user: str | None
) -> str | None:
    """The ETag to keep as the record's synced version after a bulk write succeeded.

    The read-back's ETag only if crmsync's own user wrote last: a Dynamics change made
    between the write and the read-back must not become the base (the pull would take
    it for an echo, the next ``If-Match`` would overwrite it). Otherwise the ETag known
    before (the update's base, so its next update is refused 412 and pulled first), or
    None for an insert (the pull compares values, as after a lost answer).
    """
    before = send.write.if_match if send.write.if_match not in (None, "*") else None
    row = current.get(send.crm_id.lower())
    if row is None or own_user is None:
        return before
    by = row.get("_modifiedby_value")
    etag = row.get("@odata.etag")
    if isinstance(by, str) and by.lower() == own_user and isinstance(etag, str):
        return etag
    return before


# Dataverse's refusal of a text longer than its column (0x80044331), as it words it.
_TOO_LONG = re.compile(
    r"The length of the '(?P<attribute>[^']+)' attribute of the '(?P<entity>[^']+)' entity "
    r"exceeded the maximum allowed length of '(?P<limit>\d+)'"
)
# How long a limit Dynamics named is trusted to split requests before sending (an admin
# may lengthen the column; the next refusal teaches it again).
LIMIT_SECONDS = 600.0


@dataclass
class TextLimits:
    """Text lengths Dynamics refused lately, per (table, attribute): a refused bulk
    request names one, and every record of the request over it would be refused the
    same way, so those records get that refusal and the others go again (one request,
    not a bisect of dozens); while the limit is fresh, records over it get it before
    sending. A length is counted in characters, which never exceed Dataverse's UTF-16
    units, so a record counted over is over for Dynamics too."""

    known: dict[tuple[str, str], tuple[int, Refusal, float]] = field(default_factory=dict)

    def learn(self, group: Group, logical_name: str, exc: Refusal, now: float) -> bool:
        """Keep the limit ``exc`` names if it splits ``group``; True if it does."""
        found = _TOO_LONG.search(exc.message or "")
        if found is None or found["entity"].lower() != logical_name.lower():
            return False
        key = (logical_name.lower(), found["attribute"].lower())
        limit = int(found["limit"])
        if not any(_over(s, key[1], limit) for s in group.sends):
            return False
        self.known[key] = (limit, exc, now)
        return True

    def split(
        self, group: Group, logical_name: str, now: float
    ) -> tuple[list[tuple[Send, Refusal]], Group]:
        """The sends over a fresh limit, each with the refusal that named it, and the
        group of the others."""
        table = logical_name.lower()
        fresh = [
            (attribute, limit, exc)
            for (t, attribute), (limit, exc, at) in self.known.items()
            if t == table and now - at < LIMIT_SECONDS
        ]
        if not fresh:
            return [], group
        over: list[tuple[Send, Refusal]] = []
        rest: list[Send] = []
        for s in group.sends:
            hit = next((exc for a, limit, exc in fresh if _over(s, a, limit)), None)
            if hit is None:
                rest.append(s)
            else:
                over.append((s, hit))
        return over, Group(group.message, group.object, tuple(rest))


def _over(send: Send, attribute: str, limit: int) -> bool:
    body = send.write.body or {}
    value = next((v for k, v in body.items() if k.lower() == attribute), None)
    return isinstance(value, str) and len(value) > limit
