"""Planning a push: queue entries and local rows in, operations out. No I/O.

The plan says, for each claimed entry, what to do: send a write to Dynamics, defer
(a parent record is not in Dynamics yet but is on its way), park it (it can never be
sent as it is), or finish it without sending (nothing left to do). The same plan can be
logged, dry-run or shown; the executor only carries it out.

Every Dynamics id the plan puts into a URL (the record's own, a parent's in
``@odata.bind``) is a GUID: a ``crm_id`` read from a local table that is not one (any
program may write that column) parks the entry as ``crmsync.invalid_crm_id``, a visible
sync error, and nothing is sent.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass
from typing import Any

from crmsync.domain import GUID_RE, ObjectSpec, Operation
from crmsync.dynamics.writes import Write
from crmsync.mapping.convert import DoesNotFit, encoder
from crmsync.values import INVALID_CRM_ID as INVALID_CRM_ID
from crmsync.values import MISSING_REFERENCE as MISSING_REFERENCE
from crmsync.values import RECORD_GONE as RECORD_GONE
from crmsync.values import Defer as Defer
from crmsync.values import Entry, Parent
from crmsync.values import Park as Park
from crmsync.values import Skip as Skip


@dataclass(frozen=True)
class Send:
    entry: Entry
    write: Write
    crm_id: str
    values: dict[str, Any]  # the values sent, by local column, in their JSON form


Step = Send | Defer | Park | Skip


_PUSHED: dict[int, tuple[ObjectSpec, list[tuple[str, str, Callable[[Any], Any]]]]] = {}


def _pushed_fields(spec: ObjectSpec) -> list[tuple[str, str, Callable[[Any], Any]]]:
    """(column, attribute, encoder) of the fields ``spec`` pushes, worked out once per
    declaration (the cache keeps the spec, so its id is not reused)."""
    cached = _PUSHED.get(id(spec))
    if cached is not None and cached[0] is spec:
        return cached[1]
    fields = []
    for column, attribute in spec.fields.items():
        if spec.flow_for(column).pushes:
            field = spec.field_specs.get(column)
            fields.append((column, attribute, encoder(field) if field is not None else _same))
    _PUSHED[id(spec)] = (spec, fields)
    return fields


def _same(value: Any) -> Any:
    return value


def body_for(
    spec: ObjectSpec, row: Mapping[str, Any], parents: Mapping[tuple[str, int], Parent]
) -> tuple[dict[str, Any], str | None, dict[str, Any]]:
    """The Dataverse body for ``row``, or the reason it cannot be built yet.

    Returns ``(body, blocked_by, values)``: ``blocked_by`` names a parent that is not in
    Dynamics; ``values`` are the fields' JSON values by local column. Lookups are bound
    with ``@odata.bind`` (associate-disassociate-entities).
    """
    body: dict[str, Any] = {}
    values: dict[str, Any] = {}
    for column, attribute, encode in _pushed_fields(spec):
        # Raises DoesNotFit, naming the field, for a value Dynamics cannot take.
        value = encode(row.get(column))
        body[attribute] = value
        values[column] = value
    for lookup in spec.lookups:
        if not spec.flow_for(lookup.column).pushes:
            continue
        target_id = row.get(lookup.column)
        values[lookup.column] = target_id
        if target_id is None:
            continue
        parent = parents.get((lookup.target, int(target_id)))
        if parent is None or parent.crm_id is None:
            return body, f"{lookup.target} {target_id}", values
        body[f"{lookup.navigation}@odata.bind"] = f"/{parent.entity_set}({parent.crm_id})"
    return body, None, values


def is_dynamics_id(value: object) -> bool:
    return isinstance(value, str) and GUID_RE.fullmatch(value) is not None


def _invalid_id(entry: Entry, whose: str, crm_id: object) -> Park:
    shown = repr(crm_id) if len(repr(crm_id)) <= 80 else repr(crm_id)[:77] + "..."
    return Park(
        entry,
        INVALID_CRM_ID,
        f"{whose} crm_id {shown} is not a Dynamics id (a GUID such as"
        " 00000000-0000-0000-0000-000000000000): nothing was sent; set the row's crm_id"
        " to the record's Dynamics id, then retry",
    )


def plan_entry(
    entry: Entry,
    spec: ObjectSpec,
    row: Mapping[str, Any] | None,
    parents: Mapping[tuple[str, int], Parent],
    *,
    detect_duplicates: bool,
    new_id: str | None = None,
    etag: str | None = None,
    excluded: bool = False,
) -> Step:
    """Decide what to do with one claimed ``to_crm`` entry.

    ``etag`` is the record's version at its last sync: an update is sent only if
    Dynamics still has that version (If-Match), so a change made there since is never
    overwritten unseen; it is pulled and its conflicts resolved first. ``excluded``: the
    sync filter field excludes the record in Dynamics, so nothing of it is sent.
    """
    if excluded:
        return Skip(entry, excluded=True)
    label = f"{spec.name} {entry.record_id}:"
    if entry.operation == Operation.DELETE:
        if entry.crm_id is None:
            return Skip(entry)
        if not is_dynamics_id(entry.crm_id):
            return _invalid_id(entry, f"{label} the deleted row's", entry.crm_id)
        return Send(entry, Write("delete", spec.entity_set, entry.crm_id), entry.crm_id, {})
    if row is None:
        # Deleted after the entry was claimed; the delete trigger has queued what is due.
        return Skip(entry)
    for own in (row.get("crm_id"), entry.crm_id):
        if own is not None and not is_dynamics_id(own):
            return _invalid_id(entry, f"{label} the row's", own)
    for lookup in spec.lookups:
        target_id = row.get(lookup.column)
        parent = parents.get((lookup.target, int(target_id))) if target_id is not None else None
        if (
            spec.flow_for(lookup.column).pushes
            and parent is not None
            and parent.crm_id is not None
            and not is_dynamics_id(parent.crm_id)
        ):
            return _invalid_id(entry, f"{label} its {lookup.target} {target_id}'s", parent.crm_id)
    try:
        body, blocked_by, values = body_for(spec, row, parents)
    except DoesNotFit as exc:
        return Park(
            entry,
            exc.code,
            f"{label} {exc}: nothing was sent; correct the value",
            field=exc.field.column,
        )
    if blocked_by is not None:
        target, target_id = blocked_by.split(" ", 1)
        parent = parents.get((target, int(target_id)))
        if parent is not None and parent.on_its_way:
            return Defer(entry, f"waiting for {blocked_by} to reach Dynamics")
        return Park(
            entry,
            MISSING_REFERENCE,
            field=next((lk.column for lk in spec.lookups if lk.target == target), None),
            message=f"{spec.name} {entry.record_id} refers to {blocked_by}, which is not in"
            " Dynamics and is not queued to go there",
        )
    crm_id = row.get("crm_id") or entry.crm_id
    if entry.operation == Operation.INSERT or crm_id is None:
        # An upsert under an id crmsync chose and saved before sending: a retry after a
        # lost response updates the same record instead of creating a second one.
        chosen = crm_id or new_id or str(uuid.uuid4())
        write = Write("upsert", spec.entity_set, chosen, body, detect_duplicates=detect_duplicates)
        return Send(entry, write, chosen, values)
    # Update only: a record deleted in Dynamics is reported, not silently recreated.
    write = Write("update", spec.entity_set, crm_id, body, if_match=etag or "*")
    return Send(entry, write, crm_id, values)


def plan_batch(
    entries: Sequence[Entry],
    specs: Mapping[str, ObjectSpec],
    rows: Mapping[tuple[str, int], Mapping[str, Any]],
    parents: Mapping[tuple[str, int], Parent],
    etags: Mapping[tuple[str, int], str],
    excluded: Set[tuple[str, int]],
    *,
    detect_duplicates: bool,
) -> list[Step]:
    """``plan_entry`` for each entry, with what the store read for the batch: the local
    rows, the lookups' parents, each record's ETag at its last sync (the base of an
    update's If-Match) and which records the sync filter excludes."""

    def one(e: Entry) -> Step:
        key = (e.object, e.record_id) if e.record_id is not None else None
        return plan_entry(
            e,
            specs[e.object],
            rows.get(key) if key is not None else None,
            parents,
            detect_duplicates=detect_duplicates,
            etag=etags.get(key) if key is not None and e.operation == Operation.UPDATE else None,
            excluded=key in excluded,
        )

    return [one(e) for e in entries]


def describe(step: Step) -> str:
    """One line saying what the step would do, for a dry run or a log."""
    e = step.entry
    what = f"{e.object} {e.record_id if e.record_id is not None else e.record_key} ({e.operation})"
    if isinstance(step, Send):
        w = step.write
        target = (
            f"{w.entity_set}({w.record_id})"
            if e.crm_id or w.op != "upsert"
            else (f"{w.entity_set}(a new id)")
        )
        fields = ", ".join(f"{k}={v!r}" for k, v in (w.body or {}).items())
        match = f" If-Match: {w.if_match}" if w.if_match else ""
        return f"{what}: {w.op} {target}{match}" + (f" {{{fields}}}" if fields else "")
    if isinstance(step, Defer):
        return f"{what}: wait, {step.reason}"
    if isinstance(step, Park):
        return f"{what}: not sent, {step.code}: {step.message}"
    if step.excluded:
        return f"{what}: nothing to send, the sync filter excludes the record"
    return f"{what}: nothing to send"
