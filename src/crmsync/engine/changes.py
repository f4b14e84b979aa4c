"""Reading Dynamics' changes and deciding what to stage. Pure functions, no I/O.

A change-tracking row (use-change-tracking-synchronize-data-external-systems) becomes a
``Change``: the pulled columns' values, the lookups as Dynamics ids (resolved to local
ids only when applied), and ``versionnumber`` (raised by every write: higher is newer),
``modifiedon`` and ``_modifiedby_value``.

``stage_operation`` decides whether a change becomes a ``from_crm`` entry, and as which
operation. Nothing is staged for crmsync's own write coming back (an echo), for a change
already synced (not newer, or equal to the values both sides agreed on), for a record the
sync filter excludes (nor its deletion), or while a local deletion is on its way. A record
the filter includes again is always staged. An unknown record is inserted only if it is
neither crmsync's own write nor a record crmsync deleted (``buried``), so no echo brings
a deleted record back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from crmsync.domain import GUID_RE, ObjectSpec, Operation
from crmsync.values import Change as Change
from crmsync.values import Known as Known
from crmsync.values import parse_time as parse_time
from crmsync.values import version_of as version_of

MODIFIED_ON = "modifiedon"
MODIFIED_BY = "_modifiedby_value"
VERSION = "versionnumber"


def pull_order(specs: Mapping[str, ObjectSpec]) -> list[ObjectSpec]:
    """Objects that pull, parents (objects others look up) first, so a child's parent
    is usually staged before the child and the child need not wait."""
    pulling = [s for s in specs.values() if s.flow.pulls]
    return sorted(pulling, key=lambda s: len(s.lookups))


def pulled_fields(spec: ObjectSpec) -> dict[str, str]:
    """Local column -> Dataverse attribute, for the fields that flow from Dynamics."""
    return {c: a for c, a in spec.fields.items() if spec.flow_for(c).pulls}


def select_for(spec: ObjectSpec, filter_field: str | None) -> list[str]:
    """The attributes to read for ``spec``: its key, pulled fields, lookups, bookkeeping."""
    names = [spec.primary_key, *pulled_fields(spec).values()]
    names += [lk.value_attribute for lk in spec.lookups if spec.flow_for(lk.column).pulls]
    names += [MODIFIED_ON, MODIFIED_BY, VERSION]
    if filter_field:
        names.append(filter_field)
    return list(dict.fromkeys(names))


def row_version(row: Mapping[str, Any]) -> int | None:
    """A change-tracking row's ``versionnumber``, or the one its ETag carries."""
    etag = row.get("@odata.etag")
    version = row.get(VERSION)
    try:
        return int(version) if version is not None else version_of(etag)
    except (TypeError, ValueError):
        return version_of(etag)


def read_row(spec: ObjectSpec, row: Mapping[str, Any], filter_field: str | None) -> Change:
    """A change-tracking row as a ``Change``."""
    return read_rows(spec, [row], filter_field)[0]


def read_rows(
    spec: ObjectSpec, rows: Sequence[Mapping[str, Any]], filter_field: str | None
) -> list[Change]:
    """Change-tracking rows as ``Change``s (the mapping worked out once per page)."""
    fields = list(pulled_fields(spec).items())
    lookups = [
        (lk.column, lk.value_attribute) for lk in spec.lookups if spec.flow_for(lk.column).pulls
    ]
    key = spec.primary_key
    out = []
    for row in rows:
        etag = row.get("@odata.etag")
        by = row.get(MODIFIED_BY)
        out.append(
            Change(
                crm_id=str(row[key]).lower(),
                values={c: row.get(a) for c, a in fields},
                lookups={c: str(row[a]).lower() if row.get(a) else None for c, a in lookups},
                version=row_version(row),
                modified_at=row.get(MODIFIED_ON),
                modified_by=str(by).lower() if by else None,
                etag=etag if isinstance(etag, str) else None,
                # Only an explicit No excludes: a missing or null value keeps the record.
                excluded=filter_field is not None and row.get(filter_field) is False,
            )
        )
    return out


def deleted(crm_id: str) -> Change:
    return Change(crm_id=crm_id.lower(), values={}, lookups={}, deleted=True)


def is_guid(value: object) -> bool:
    return isinstance(value, str) and GUID_RE.fullmatch(value) is not None


def same_as_synced(
    change: Change, known: Known, parents: Mapping[tuple[str, str], int], spec: ObjectSpec
) -> bool:
    """True when the change carries exactly the values both sides last agreed on."""
    synced = known.synced_values
    if synced is None:
        return False
    for column, value in change.values.items():
        if column not in synced or synced[column] != value:
            return False
    targets = {lk.column: lk.target for lk in spec.lookups}
    for column, crm_id in change.lookups.items():
        local = None if crm_id is None else parents.get((targets[column], crm_id))
        if crm_id is not None and local is None:
            return False
        if column not in synced or synced[column] != local:
            return False
    return True


def stage_operation(
    spec: ObjectSpec,
    change: Change,
    known: Known | None,
    parents: Mapping[tuple[str, str], int],
    own_user: str | None,
    *,
    buried: bool = False,
) -> Operation | None:
    """The operation to stage for ``change``, or None when there is nothing to apply.

    ``buried``: crmsync deleted this record (``sync_tombstone``)."""
    if change.deleted:
        if known is None or known.local_delete_pending or known.marked_deleted:
            return None
        if known.excluded:
            return None  # an excluded record no longer follows Dynamics, deletes included
        return Operation.DELETE
    if change.excluded:
        # An excluded record stops syncing; it is neither staged nor deleted locally
        # (the caller remembers the exclusion for records it has synced).
        return None
    if known is None:
        # Not known locally under this id, not even as a push in flight (whose chosen
        # id the caller matched): a new record, unless crmsync wrote it (its local row
        # was deleted since) or deleted it.
        if buried or (own_user is not None and change.modified_by == own_user):
            return None
        return Operation.INSERT
    if known.local_delete_pending:
        return None
    if known.excluded:
        # Included again: staged even if its values equal the last synced ones, since
        # the local row may have moved while it was excluded (and must then be sent).
        return Operation.UPDATE
    if own_user is not None and change.modified_by == own_user:
        return None  # crmsync's own write, coming back: no echo
    if (
        known.synced_version is not None
        and change.version is not None
        and change.version <= known.synced_version
    ):
        return None
    if same_as_synced(change, known, parents, spec):
        return None
    return Operation.UPDATE


def changed_fields(
    spec: ObjectSpec,
    change: Change,
    known: Known | None,
    parents: Mapping[tuple[str, str], int],
) -> dict[str, list[str]]:
    """What a pulled change changed since the last sync, for its ``pulled`` event: the
    local ``fields`` and their Dynamics ``attributes`` (a new record: every field with a
    value; a deletion: none)."""
    if change.deleted:
        return {"fields": [], "attributes": []}
    synced = None if known is None else known.synced_values
    fields = [
        c
        for c, v in change.values.items()
        if (v is not None if synced is None else synced.get(c) != v)
    ]
    targets = {lk.column: lk for lk in spec.lookups}
    attributes = [spec.fields[c] for c in fields]
    for column, crm_id in change.lookups.items():
        local = None if crm_id is None else parents.get((targets[column].target, crm_id))
        if (crm_id is not None) if synced is None else synced.get(column) != local:
            fields.append(column)
            attributes.append(targets[column].value_attribute)
    return {"fields": fields, "attributes": attributes}
