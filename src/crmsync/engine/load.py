"""The initial load's bulk path: records the store has never seen, inserted page by page.

During a full read (a first pull, or a reconciliation) most records are new to the store,
and for such a record the apply plan could only be "insert Dynamics' values". So a page's
new records go into the local table and ``sync_record`` at once (``inbound.insert_loaded``),
in the transaction that stages the rest of the page (and, on the last page, saves the
delta link), with capture suppressed so nothing goes back.

What the store knows in any way (a local row, a push in flight holding the id, a logged
delete, a tombstone), what the sync filter excludes, what does not fit (a local column,
or a typed field's conversion: ``convert.decoder``, as applying converts, the JSON form
kept as the synced value) and what waits for a parent that is not local go the ordinary
way, through the queue. Records held at the version read need nothing. If the database
refuses the bulk insert, the whole page goes the ordinary way. The checks run column by
column over the page: this is the part of the load that runs per record.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from crmsync.domain import FieldType, ObjectSpec
from crmsync.engine import changes as ch
from crmsync.mapping.convert import DoesNotFit, decoder
from crmsync.store import inbound
from crmsync.store.db import is_sqlite

if TYPE_CHECKING:  # the engine passes the store's handles on; it runs no SQL
    from sqlalchemy import Connection

_TEXT_OR_NONE = {str, type(None)}


@dataclass(frozen=True)
class Loaded:
    """What ``insert_new`` did with a page: the Dynamics ids it inserted, and the rows
    (as Dynamics sent them) left for the ordinary path, and the ids needing nothing."""

    inserted: list[str]
    rest: list[dict[str, Any]]
    # Known records the store holds at the version read (a reconciliation's bulk): no
    # work, but seen (what a full read does not return is gone).
    settled: list[str] = field(default_factory=list)


def held_at_version(
    rows: Sequence[Mapping[str, Any]],
    ids: Sequence[str],
    synced: Mapping[str, int],
    filter_field: str | None,
) -> set[int]:
    """Positions of a full read's ``rows`` that the store already holds at that version
    (their sync state has this ``versionnumber`` or a later one; ``synced`` as
    ``known_ids`` gives it) and that the filter does not exclude: for them
    ``changes.stage_operation`` would stage nothing, so a reconciliation sets them aside
    before any work per record (no ``Change``, no synced values decoded)."""
    out: set[int] = set()
    if not synced:
        return out
    for i, crm_id in enumerate(ids):
        at = synced.get(crm_id)
        if at is None:
            continue
        row = rows[i]
        if filter_field is not None and row.get(filter_field) is False:
            continue  # the ordinary path remembers the exclusion
        version = row.get(ch.VERSION)
        if type(version) is not int:
            version = ch.row_version(row)
        if version is not None and version <= at:
            out.add(i)
    return out


def insert_new(
    conn: Connection,
    specs: Mapping[str, ObjectSpec],
    spec: ObjectSpec,
    rows: Sequence[dict[str, Any]],
    filter_field: str | None,
    now: datetime,
) -> Loaded:
    """Insert the records of a full read's page that the store has never seen, with
    their sync state, in the caller's transaction (see the module docstring)."""
    if not rows:
        return Loaded([], [])
    key = spec.primary_key
    ids = [str(r[key]).lower() for r in rows]
    known, synced = inbound.known_ids(conn, spec, ids)
    same = held_at_version(rows, ids, synced, filter_field)
    settled = [ids[i] for i in sorted(same)]
    if same:
        rows = [r for i, r in enumerate(rows) if i not in same]
        ids = [i for j, i in enumerate(ids) if j not in same]
    # Text columns without a length take any text (a typed field's length is not used).
    fields = [
        (c, a, inbound.text_room(spec, c) or sys.maxsize) for c, a in ch.pulled_fields(spec).items()
    ]
    lookups = [
        (lk.column, lk.value_attribute, lk.target)
        for lk in spec.lookups
        if spec.flow_for(lk.column).pulls
    ]
    parents: dict[tuple[str, str], int] = {}
    if lookups:
        wanted: dict[str, set[str]] = {}
        for row in rows:
            for _, attr, target in lookups:
                if row.get(attr):
                    wanted.setdefault(target, set()).add(str(row[attr]).lower())
        parents = inbound.local_parents(conn, specs, wanted)
    # Column by column: a comprehension per column costs a fraction of a Python loop
    # per record, and this is the part of the initial load that runs per record.
    picked = [i for i, crm_id in enumerate(ids) if crm_id not in known]
    if filter_field is not None:
        # Only an explicit No excludes; the ordinary path decides what that means.
        picked = [i for i in picked if rows[i].get(filter_field) is not False]
    new = [rows[i] for i in picked]
    unfit: set[int] = set()  # positions in ``new`` left for the ordinary path
    typed = {
        c
        for c, f in spec.field_specs.items()
        if f.type not in (FieldType.STRING, FieldType.MEMO, FieldType.LOOKUP)
    }
    # The typed fields' values in their JSON form, by position: the synced values.
    forms: list[dict[str, Any]] | None = (
        [{} for _ in new] if any(c in typed for c, _, _ in fields) else None
    )
    values: list[list[Any]] = []
    for name, attr, length in fields:
        column = [r.get(attr) for r in new]
        if name in typed:
            # Converted as applying it would (``convert.decoded``); a value that does
            # not fit goes the ordinary way, which parks it naming the field.
            assert forms is not None
            local = _decode(decoder(spec.field_specs[name]), column, name, forms, unfit)
            values.append(inbound.bound_values(conn, spec, name, local))
            continue
        # Text that fits, as apply's ``_fits`` checks it; the ordinary path parks
        # anything else with the reason.
        if not _all_text_within(column, length):
            unfit.update(
                j
                for j, v in enumerate(column)
                if v is not None and (type(v) is not str or len(v) > length)
            )
        values.append(column)
    for _, attr, target in lookups:
        given = [r.get(attr) for r in new]
        local = [parents.get((target, str(v).lower())) if v else None for v in given]
        # A parent that is not local (yet): the queue waits for it.
        unfit.update(
            j for j, (v, p) in enumerate(zip(given, local, strict=True)) if v and p is None
        )
        values.append(local)
    sqlite = is_sqlite(conn)
    versions = [r.get(ch.VERSION) for r in new]
    etags = [r.get("@odata.etag") for r in new]
    new_ids = [ids[i] for i in picked]
    local_rows = list(zip(*values, new_ids, strict=True))
    state_columns: list[list[Any]] = [
        new_ids,
        [e if type(e) is str else None for e in etags],
        [v if type(v) is int else ch.row_version(r) for v, r in zip(versions, new, strict=True)],
        inbound.stored_times([r.get(ch.MODIFIED_ON) for r in new], sqlite),
    ]
    if forms is not None:
        state_columns.append([json.dumps(f, separators=(",", ":")) for f in forms])
    states = list(zip(*state_columns, strict=True))
    if unfit:
        local_rows = [x for j, x in enumerate(local_rows) if j not in unfit]
        states = [x for j, x in enumerate(states) if j not in unfit]
        picked = [i for j, i in enumerate(picked) if j not in unfit]
    if not picked:
        return Loaded([], list(rows), settled)
    columns = [c for c, _, _ in fields] + [c for c, _, _ in lookups]
    if not inbound.insert_loaded(
        conn, spec, columns, local_rows, states, now, typed=forms is not None
    ):
        return Loaded([], list(rows), settled)
    taken = set(picked)
    rest = [r for i, r in enumerate(rows) if i not in taken]
    return Loaded([ids[i] for i in picked], rest, settled)


def _decode(
    decode: Callable[[Any], tuple[Any, Any]],
    column: Sequence[Any],
    name: str,
    forms: list[dict[str, Any]],
    unfit: set[int],
) -> list[Any]:
    """The local values of a typed ``column``; each value's JSON form goes into its
    row's ``forms``, and a value that does not fit marks its position ``unfit``."""
    local: list[Any] = [None] * len(column)
    for j, v in enumerate(column):
        if v is None:
            continue
        try:
            local[j], forms[j][name] = decode(v)
        except DoesNotFit:
            unfit.add(j)
    return local


def _all_text_within(column: Sequence[Any], length: int) -> bool:
    """Whether every value is None or text of at most ``length`` characters, answered
    by builtins looping in C (the usual case; the caller then skips its own check)."""
    if not set(map(type, column)) <= _TEXT_OR_NONE:
        return False
    return length == sys.maxsize or max(map(len, filter(None, column)), default=0) <= length
